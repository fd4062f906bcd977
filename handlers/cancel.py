"""CancelRequested: stop the job's (or the named) runs that have not ended."""
from __future__ import annotations

from typing import List

import msgspec

from xt_submit.domain import layout, records
from xt_submit.domain.messages import CANCELLED, RUNNING, TERMINAL_STATUSES, CancelRequested
from xt_submit.ports import Ports

from xt_submit.handlers.jobs import roll_job
from xt_submit.handlers.run_events import ingest_run_log
from xt_submit.handlers.search import end_search

CANCEL_REASON = "cancelled by request"


def cancel_runs(event: CancelRequested, ports: Ports) -> List[str]:
    """Returns the runs this cancel ended. A run that already ended keeps its status; a running
    one is marked cancelled now and its node's RunFinished (cancelled, with exit code) follows.

    A whole job costs one listing of its runs, one file naming the live ones in storage (first: a
    crash before the index is repaired by the redelivery, which writes the same file; reindex reads
    it), one batched update of the index and one batched cancel on compute; and, per running run,
    a read of its run log and a rewrite of its metric history (below), so that part grows with the
    runs running, not with the job."""
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
        ports.storage.write(layout.cancel_key(ws, event.job, event.requested_at), msgspec.json.encode(
            {"at": event.requested_at, "reason": CANCEL_REASON, "runs": live}), overwrite=False)
        # a started run's metric history, before it ends here: its node may never report (Batch's
        # terminate kills a task outright); one that does replaces it with the whole log
        for run in candidates:
            if run["status"] == RUNNING:
                ingest_run_log(ports, ws, run["name"])
        cancelled = ports.stats.update_runs(ws, live, {"status": CANCELLED, "ended": event.requested_at,
                                                       "reason": CANCEL_REASON, "heartbeat": None},
                                            only_if_status_in=records.may_become(CANCELLED))
    roll_job(ports, ws, event.job)
    return cancelled
