"""Job bookkeeping shared by the run handlers: counters and closing the job after its last run."""
from __future__ import annotations

from typing import Any, Dict

import msgspec

from xt_submit.domain import layout, records
from xt_submit.domain.messages import CANCELLED, COMPLETED, ERROR, QUEUED, RUNNING, TERMINAL_STATUSES
from xt_submit.handlers.search import advance_search
from xt_submit.ports import Ports


def roll_job(ports: Ports, workspace: str, job: str) -> Dict[str, Any]:
    """Recount the job's runs from the index (not increment: duplicates and reordering cannot skew it),
    after an adaptive search planned the runs it may start now. The job ends with its last run
    (an adaptive one: once its search plans no more)."""
    advance_search(ports, workspace, job)
    rollup = ports.stats.job_rollup(workspace, job)
    counts = rollup["counts"]
    record = ports.stats.get_job(workspace, job)
    changes: Dict[str, Any] = {"counts": counts, "started": rollup["started"], "ended": None}
    finished = sum(n for status, n in counts.items() if status in TERMINAL_STATUSES)
    run_count = max(record["run_count"], sum(counts.values()))  # runs added at once on two instances: all count
    if run_count > record["run_count"]:
        changes["run_count"] = run_count
    search_open = bool((record.get("search") or {}).get("type")) and not record["search"].get("ended")
    if finished >= run_count and not search_open:
        # a failed run that was retried is superseded by its retry: the job fails only on a last attempt
        retried = sum(1 for run in ports.stats.list_runs(workspace, job=job) if run.get("retry_of")) \
            if record.get("retries") else 0
        errors = counts.get(ERROR, 0) - retried
        changes["status"] = ERROR if errors > 0 else CANCELLED if counts.get(CANCELLED) else COMPLETED
        changes["ended"] = rollup["ended"]
    else:
        changes["status"] = QUEUED if counts.get(QUEUED, 0) == run_count else RUNNING
    ports.stats.update_job(workspace, job, changes)
    return changes


def write_run_stats(ports: Ports, run: Dict[str, Any], outputs: list) -> None:
    """run_stats.json: the run's final record in storage, from which the index can be rebuilt."""
    ports.storage.write(layout.run_stats_key(run["workspace"], run["name"]),
                        msgspec.json.encode(records.run_stats(run, outputs)))


def end_run(ports: Ports, workspace: str, run: str, changes: Dict[str, Any]) -> bool:
    """End a queued, running or preempted run without its node's report (a cancel, a silent node).

    Storage first, then the index: a crash in between is repaired by the redelivery, which finds
    the run still live and writes both again. Returns False if the run had already ended."""
    record = ports.stats.get_run(workspace, run)
    if not records.is_live(record["status"]):
        return False
    write_run_stats(ports, {**record, **changes}, [])
    if ports.stats.update_run(workspace, run, changes, only_if_status_in=records.may_become(changes["status"])):
        return True
    write_run_stats(ports, ports.stats.get_run(workspace, run), [])  # its node's report won the race
    return False
