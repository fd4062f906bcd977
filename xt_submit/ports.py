"""The seams between the pipeline and the services it runs on.

Handlers receive a `Ports` bundle and never construct adapters; the embedded default (files,
SQLite, local processes) and the Azure adapters implement the same protocols and are held to
the same contract tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Sequence


# The fields of a job and a run record, as every stats store returns them (a missing value is None,
# a missing mapping is {}).
JOB_FIELDS = ("workspace", "name", "number", "submission_id", "experiment", "username", "target", "status",
              "script", "command", "run_count", "counts", "created", "started", "ended", "tags", "hp_space",
              "primary_metric", "maximize_metric")
RUN_FIELDS = ("workspace", "name", "job", "job_number", "run_index", "experiment", "username", "target",
              "status", "exit_code", "node_id", "reason", "created", "queued", "started", "ended", "duration",
              "command", "hparams", "metrics", "tags", "heartbeat")
MAPPING_FIELDS = frozenset({"counts", "tags", "hp_space", "hparams", "metrics"})


class NotFound(KeyError):
    """A storage key, job or run that does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; a message reads better plain
        return str(self.args[0]) if self.args else "not found"


class Storage(Protocol):
    """Experiment storage, keyed by '/'-separated paths (blob names)."""

    def read(self, key: str) -> bytes: ...
    def write(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        """Returns False (and writes nothing) when overwrite is False and the key exists."""
    def create_log(self, key: str, data: bytes) -> bool:
        """Create an appendable log holding `data`, unless it exists (then False, nothing written)."""
    def append(self, key: str, data: bytes) -> None:
        """Append to a log made by create_log or by an earlier append (which creates it if missing)."""
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> List[str]: ...
    def upload_file(self, key: str, path: str) -> None: ...
    def download_file(self, key: str, path: str) -> None: ...
    def delete(self, key: str) -> None: ...


class StatsStore(Protocol):
    """Job and run properties, hparams and metrics, indexed for reports.

    Rebuildable from storage: it is an index, not the source of truth.
    """

    def assign_job_name(self, workspace: str, submission_id: str) -> str: ...
    def restore_job_name(self, workspace: str, submission_id: str, number: int) -> None:
        """Record a name assigned earlier (a reindex), keeping the workspace's counter past it."""
    def clear_workspace(self, workspace: str) -> None:
        """Forget everything indexed for the workspace (before a reindex)."""
    def insert_job(self, job: Dict[str, Any]) -> None:
        """Insert if absent (a redelivered dispatch leaves the first record alone)."""
    def insert_runs(self, runs: Sequence[Dict[str, Any]]) -> None:
        """Bulk insert, each run if absent."""
    def get_job(self, workspace: str, job: str) -> Dict[str, Any]: ...
    def get_run(self, workspace: str, run: str) -> Dict[str, Any]: ...
    def update_job(self, workspace: str, job: str, changes: Dict[str, Any],
                   *, only_if_status_in: Optional[Iterable[str]] = None) -> bool: ...
    def update_run(self, workspace: str, run: str, changes: Dict[str, Any],
                   *, only_if_status_in: Optional[Iterable[str]] = None) -> bool:
        """Apply changes; with only_if_status_in, only when the run's current status is one of
        them (a compare-and-set, so concurrent handlers cannot move a run backwards)."""
    def replace_metrics(self, workspace: str, run: str, rows: Sequence[Any]) -> None:
        """Replace the run's metric records (run_log.MetricRow: step, name, value, time) in one bulk write."""
    def get_metrics(self, workspace: str, run: str) -> List[Dict[str, Any]]: ...
    def job_rollup(self, workspace: str, job: str) -> Dict[str, Any]:
        """{"counts": {status: number of runs}, "started": first run start, "ended": last run end}."""
    def list_runs(self, workspace: str, *, job: Optional[str] = None,
                  status: Optional[str] = None) -> List[Dict[str, Any]]: ...
    def list_jobs(self, workspace: str) -> List[Dict[str, Any]]: ...
    def workspaces(self) -> List[str]: ...
    def experiments(self, workspace: str) -> List[str]: ...
    def silent_runs(self, before: float) -> List[Dict[str, Any]]:
        """Running runs (any workspace) whose last heartbeat, or start, is older than `before`."""
    def find_job_by_submission(self, workspace: str, submission_id: str) -> Optional[str]: ...


class Compute(Protocol):
    """Where runs execute."""

    def submit(self, tasks: Sequence[Any]) -> None:
        """Queue RunTasks for execution, each at most once (keyed by workspace and run name)."""
    def cancel(self, workspace: str, runs: Sequence[str]) -> List[str]:
        """Stop the runs; returns those that had not started (they will never report)."""


class Publisher(Protocol):
    """Sends messages onto the pipeline's queues."""

    def send_job(self, message: Any) -> None: ...
    def send_events(self, messages: Sequence[Any]) -> None: ...


@dataclass(frozen=True)
class ReceivedMessage:
    id: int
    queue: str
    body: bytes
    delivery_count: int  # this delivery included: 1 the first time
    lock_token: str


class LockLost(RuntimeError):
    """The message's lock expired (or it was settled) before this settlement."""


class MessageQueue(Protocol):
    """Queues with peek-lock (the local host's view of the jobs and events queues)."""

    def send(self, queue: str, bodies: Sequence[bytes]) -> None: ...
    def receive(self, queue: str, max_messages: int = 1) -> List[ReceivedMessage]: ...
    def complete(self, message: ReceivedMessage) -> None: ...
    def abandon(self, message: ReceivedMessage, error: str = "") -> None: ...
    def dead_letter(self, message: ReceivedMessage, reason: str) -> None: ...
    def renew_lock(self, message: ReceivedMessage) -> None: ...
    def peek(self, queue: str, limit: int = 100) -> List[dict]: ...


@dataclass(frozen=True)
class Ports:
    storage: Storage
    stats: StatsStore
    compute: Compute
    publisher: Publisher
    clock: Callable[[], float]
