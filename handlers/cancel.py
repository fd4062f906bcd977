"""CancelRequested: stop the job's (or the named) runs that have not ended."""
from __future__ import annotations

from typing import List

from xt_submit.domain import layout, records, run_log
from xt_submit.domain.messages import CANCELLED, TERMINAL_STATUSES, CancelRequested
from xt_submit.ports import Ports

from xt_submit.handlers.jobs import roll_job
from xt_submit.handlers.search import end_search

RUNS_CANCELLED = "runs_cancelled"  # the job log's record of the runs a cancel ended (reindex reads it)
CANCEL_REASON = "cancelled by request"


def cancel_runs(event: CancelRequested, ports: Ports) -> List[str]:
    """Returns the runs this cancel ended. A run that already ended keeps its status; a running
    one is marked cancelled now and its node's RunFinished (cancelled, with exit code) follows.

    A whole job is a few bulk writes, whatever its size: one record of the runs in the job log
    (storage first: a crash before the index is repaired by the redelivery, and reindex reads the
    record), one batched update of the index, one batched cancel on compute."""
    ws = event.workspace
    if event.runs:
        candidates = [ports.stats.get_run(ws, name) for name in event.runs]
    else:
        candidates = ports.stats.list_runs(ws, job=event.job)
    live = [run["name"] for run in candidates if run["status"] not in TERMINAL_STATUSES]
    if not event.runs:  # the whole job: an adaptive search plans nothing more (a cancel of some runs frees slots)
        end_search(ports, ws, event.job, CANCEL_REASON, event.requested_at)
    cancelled: List[str] = []
    if live:
        ports.compute.cancel(ws, live)
        ports.storage.append(layout.job_log_key(ws, event.job), run_log.record(
            event.requested_at, RUNS_CANCELLED, {"runs": live, "reason": CANCEL_REASON}))
        cancelled = ports.stats.update_runs(ws, live, {"status": CANCELLED, "ended": event.requested_at,
                                                       "reason": CANCEL_REASON, "heartbeat": None},
                                            only_if_status_in=records.may_become(CANCELLED))
    roll_job(ports, ws, event.job)
    return cancelled
