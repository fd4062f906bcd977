"""CancelRequested: stop the job's (or the named) runs that have not ended."""
from __future__ import annotations

from typing import List

from xt_submit.domain.messages import CANCELLED, TERMINAL_STATUSES, CancelRequested
from xt_submit.ports import Ports

from xt_submit.handlers.jobs import end_run, roll_job


def cancel_runs(event: CancelRequested, ports: Ports) -> List[str]:
    """Returns the runs this cancel ended. A run that already ended keeps its status; a running
    one is marked cancelled now and its node's RunFinished (cancelled, with exit code) follows."""
    ws = event.workspace
    if event.runs:
        candidates = [ports.stats.get_run(ws, name) for name in event.runs]
    else:
        candidates = ports.stats.list_runs(ws, job=event.job)
    live = [run["name"] for run in candidates if run["status"] not in TERMINAL_STATUSES]
    if live:
        ports.compute.cancel(ws, live)
    changes = {"status": CANCELLED, "ended": event.requested_at, "reason": "cancelled by request"}
    cancelled = [name for name in live if end_run(ports, ws, name, changes)]
    roll_job(ports, ws, event.job)
    return cancelled
