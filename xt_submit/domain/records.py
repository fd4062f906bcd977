"""Job and run records: their fields, how a new one is made, and the rule that a run's status
only moves forward.

A record is a plain dict (what every stats store returns and `--json` prints); this module is the
one place that says which fields it has and how the dispatch, a reindex and run_stats.json build
one, so the three cannot drift apart.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

import msgspec

from xt_submit.domain.messages import (CANCELLED, COMPLETED, ERROR, PREEMPTED, QUEUED, RUNNING, STOPPED,
                                       TERMINAL_STATUSES, JobManifest)

# The fields of a job and a run record, as every stats store returns them (a missing value is None,
# a missing mapping is {}).
JOB_FIELDS = ("workspace", "name", "number", "submission_id", "experiment", "username", "target", "status",
              "script", "command", "run_count", "counts", "created", "started", "ended", "tags", "hp_space",
              "primary_metric", "maximize_metric", "search", "early_stopping", "retries")
RUN_FIELDS = ("workspace", "name", "job", "job_number", "run_index", "experiment", "username", "target",
              "status", "exit_code", "node_id", "reason", "created", "queued", "started", "ended", "duration",
              "command", "hparams", "metrics", "tags", "heartbeat", "progress", "stopping", "retry_of", "attempt")
# search: an adaptive job's progress (handlers/search.py); early_stopping: its policy (the manifest's);
# progress: a live run's reports of the primary metric (handlers/run_events.run_progress);
# stopping: why the policy stopped the run, until its node's report ends it as stopped.
# retries: a job's retries of a failed run; retry_of, attempt: a retry's failed first run, and its number (2..).
MAPPING_FIELDS = frozenset({"counts", "tags", "hp_space", "hparams", "metrics", "search", "early_stopping",
                            "progress"})
# run_stats.json: a run's final record in storage, from which the index can be rebuilt.
RUN_STATS_FIELDS = ("name", "job", "experiment", "status", "exit_code", "reason", "node_id", "created", "started",
                    "ended", "duration", "command", "hparams", "metrics", "tags")

LIVE_STATUSES = (QUEUED, RUNNING, PREEMPTED)
# The statuses a run may be in to take each status: a run never moves backwards, so a late or
# repeated event changes nothing. (The node's RunFinished is authoritative and is applied as it is.)
_MAY_BECOME_FROM: Dict[str, Tuple[str, ...]] = {
    RUNNING: (QUEUED, PREEMPTED),
    PREEMPTED: LIVE_STATUSES,
    COMPLETED: LIVE_STATUSES, ERROR: LIVE_STATUSES, CANCELLED: LIVE_STATUSES, STOPPED: LIVE_STATUSES,
}


def may_become(status: str) -> Tuple[str, ...]:
    """The statuses from which a run may move to `status` (the stores' compare-and-set argument)."""
    return _MAY_BECOME_FROM[status]


def is_live(status: str) -> bool:
    return status not in TERMINAL_STATUSES


def new_job(manifest: JobManifest, *, name: str, number: int, submission_id: str, run_count: int,
            created: float, search: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The record of a job just dispatched (or re-read from storage by a reindex)."""
    return {
        "workspace": manifest.workspace, "name": name, "number": number, "submission_id": submission_id,
        "experiment": manifest.experiment, "username": manifest.username, "target": manifest.target,
        "status": QUEUED, "script": manifest.script, "command": manifest.command, "run_count": run_count,
        "counts": {QUEUED: run_count}, "created": created, "tags": manifest.tags, "hp_space": manifest.hp_space,
        "primary_metric": manifest.primary_metric, "maximize_metric": manifest.maximize_metric,
        "search": search or {},
        "early_stopping": msgspec.structs.asdict(manifest.early_stopping) if manifest.early_stopping else {},
        "retries": manifest.retries,
    }


def new_runs(manifest: JobManifest, *, job: str, number: int, plan: Iterable[Tuple[str, str, dict]],
             created: float, first_index: int = 1) -> List[Dict[str, Any]]:
    """The queued records of a job's runs; plan: (run name, command, hparams) in run order, the
    first being run number first_index (an adaptive search adds runs one at a time)."""
    return [
        {"workspace": manifest.workspace, "name": name, "job": job, "job_number": number, "run_index": index,
         "experiment": manifest.experiment, "username": manifest.username, "target": manifest.target,
         "status": QUEUED, "created": created, "queued": created, "command": command, "hparams": hparams,
         "metrics": {}, "tags": manifest.tags}
        for index, (name, command, hparams) in enumerate(plan, start=first_index)
    ]


def run_stats(run: Dict[str, Any], outputs: List[str]) -> Dict[str, Any]:
    """The run_stats.json document of a run record."""
    return {**{field: run.get(field) for field in RUN_STATS_FIELDS}, "outputs": outputs}
