"""Job bookkeeping shared by the run handlers: counters and closing the job after its last run."""
from __future__ import annotations

from typing import Any, Dict, Optional

import msgspec

from xt_submit.domain import layout, records
from xt_submit.domain.messages import CANCELLED, COMPLETED, ERROR, QUEUED, RUNNING, TERMINAL_STATUSES
from xt_submit.handlers.search import advance_search
from xt_submit.ports import Ports


def roll_job(ports: Ports, workspace: str, job: str, *, moved: bool = False) -> Dict[str, Any]:
    """The job's status after its runs moved, once an adaptive search planned the runs it may start now.
    The job ends with its last run (an adaptive one: once its search plans no more).

    moved: the caller's run has just changed status, and the store counted the move with it
    (StatsStore: a job's counts are kept with its runs), so the job's record is read, not recounted:
    in a job without an adaptive search, an event costs the same whatever the job's size (a search,
    open or ended, lists the job's runs on every call, to plan and to keep its best). Otherwise (a
    repeated or reordered event, a cancel, a reindex), and whenever the counts say the job has ended,
    its runs are recounted. So a job never ends on counts alone, and a crash between a run's move and
    its job's count (two writes on MongoDB) is repaired by the redelivery, which moves nothing and so
    recounts."""
    # without its hp_space (which grows with a sweep): a run's every event reads the job
    record = ports.stats.get_job(workspace, job, hp_space=False)
    if (record.get("search") or {}).get("type"):
        advance_search(ports, workspace, job, ports.stats.get_job(workspace, job))  # a search plans from it
        record = ports.stats.get_job(workspace, job, hp_space=False)  # the search may have added runs, or ended
    if moved:
        counts = record["counts"]
        # the recorded run count alone: a count the store made twice (a write retried after its reply was
        # lost) must not raise the bar, only bring the recount early
        changes = _open_job_changes(record, counts, record["run_count"])
        if changes is not None:
            if any(record.get(field) != value for field, value in changes.items()):
                ports.stats.update_job(workspace, job, changes)
            return {**changes, "counts": counts, "started": record["started"]}
    rollup = ports.stats.recount_job(workspace, job)
    counts = rollup["counts"]
    run_count = max(record["run_count"], sum(counts.values()))  # runs added at once on two instances: all count
    changes = _open_job_changes(record, counts, run_count)
    if changes is None:
        # a failed run that was retried is superseded by its retry: the job fails only on a last attempt
        retried = sum(1 for run in ports.stats.list_runs(workspace, job=job) if run.get("retry_of")) \
            if record.get("retries") else 0
        errors = counts.get(ERROR, 0) - retried
        changes = {"status": ERROR if errors > 0 else CANCELLED if counts.get(CANCELLED) else COMPLETED,
                   "ended": rollup["ended"]}
    if run_count > record["run_count"]:
        changes["run_count"] = run_count
    ports.stats.update_job(workspace, job, changes)
    return {**changes, "counts": counts, "started": rollup["started"]}


def _open_job_changes(record: Dict[str, Any], counts: Dict[str, int], run_count: int) -> Optional[Dict[str, Any]]:
    """The status of a job with runs still to end (or a search still planning), else None: it has ended."""
    finished = sum(n for status, n in counts.items() if status in TERMINAL_STATUSES)
    search_open = bool((record.get("search") or {}).get("type")) and not record["search"].get("ended")
    if finished >= run_count and not search_open:
        return None
    return {"status": QUEUED if counts.get(QUEUED, 0) == run_count else RUNNING, "ended": None}


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
