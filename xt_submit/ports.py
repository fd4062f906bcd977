"""The seams between the pipeline and the services it runs on.

Each port is an abstract base class listing every method its callers use, so an adapter that
misses one fails when it is constructed, not when a handler first reaches for it. Handlers and
the runtime receive adapters already built (by `bootstrap`) and never name one; the embedded
default (files, SQLite, local processes) and the Azure adapters are held to the same contract
tests (`tests/contracts/`).
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from xt_submit.domain.errors import NotFound
from xt_submit.domain.run_query import RunQuery

__all__ = ["NotFound", "Storage", "StatsStore", "Compute", "TaskTable", "Publisher", "MessageQueue", "Node",
           "NodeUnreachable", "NodeFactory", "LockLost", "ReceivedMessage", "Ports", "Parts", "AgentParts",
           "Progress"]

Progress = Callable[..., None]  # azure-core's progress_hook: (bytes done, bytes in all)


class Storage(ABC):
    """Experiment storage, keyed by '/'-separated paths (blob names). The source of truth."""

    # Storages that report transfer progress (Blob Storage does) call `progress` when it is set.
    reports_progress: bool = False
    progress: Optional[Progress] = None

    @abstractmethod
    def read(self, key: str) -> bytes: ...

    def read_chunks(self, key: str) -> Iterator[bytes]:
        """The key's bytes in pieces, so a large log is never whole in memory. NotFound is raised
        here, before the first piece; this default reads it whole, a storage that can stream overrides it."""
        return iter((self.read(key),))

    @abstractmethod
    def write(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        """Returns False (and writes nothing) when overwrite is False and the key exists."""

    @abstractmethod
    def create_log(self, key: str, data: bytes) -> bool:
        """Create an appendable log holding `data`, unless it exists (then False, nothing written)."""

    @abstractmethod
    def append(self, key: str, data: bytes) -> None:
        """Append to a log made by create_log or by an earlier append (which creates it if missing)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> List[str]: ...

    @abstractmethod
    def upload_file(self, key: str, path: str) -> None: ...

    @abstractmethod
    def download_file(self, key: str, path: str) -> None: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def read_url(self, key: str, expiry_seconds: float = 3600) -> Optional[str]:
        """A read-only link a remote node can fetch the key with, or None where the storage has no links."""

    def local_path(self, key: str) -> Optional[str]:
        """Where the key's file is on this machine, for storage that is a folder here (else None)."""
        return None

    def signature(self, key: str) -> Optional[str]:
        """What changes whenever the key is written, read without reading its content (a directory
        file's size, inode and mtime; a blob's ETag); None when the key is absent or the storage
        cannot say."""
        return None

    def list_signatures(self, prefix: str) -> Optional[Dict[str, str]]:
        """Each key under prefix with what identifies its content without reading it (its size, ETag
        and MD5), from one listing; None where the listing carries none (then ask per key)."""
        return None


class StatsStore(ABC):
    """Job and run properties, hparams and metrics, indexed for reports.

    Rebuildable from storage: it is an index, not the source of truth. Records are dicts with the
    fields of `domain.records` (a missing value is None, a missing mapping is {}).

    A job's `counts` (runs per status) and `started` (its first run's start) are the store's: every
    write that records a run or moves its status (insert_runs, update_run, update_runs) moves them
    too, once per move that happened (a repeated or refused move counts nothing), so a run's event
    costs the same in a job of any size. insert_job's record starts them empty; recount_job counts
    them again from the runs (where a store writes a run and its job apart, it repairs a crash between).
    """

    @abstractmethod
    def assign_job_name(self, workspace: str, submission_id: str) -> str: ...

    @abstractmethod
    def restore_job_name(self, workspace: str, submission_id: str, number: int) -> None:
        """Record a name assigned earlier (a reindex), keeping the workspace's counter past it."""

    @abstractmethod
    def clear_workspace(self, workspace: str) -> None:
        """Forget everything indexed for the workspace (before a reindex)."""

    @abstractmethod
    def find_job_by_submission(self, workspace: str, submission_id: str) -> Optional[str]: ...

    @abstractmethod
    def insert_job(self, job: Dict[str, Any]) -> None:
        """Insert if absent (a redelivered dispatch leaves the first record alone)."""

    @abstractmethod
    def insert_runs(self, runs: Sequence[Dict[str, Any]]) -> None:
        """Bulk insert, each run if absent."""

    @abstractmethod
    def get_job(self, workspace: str, job: str, *, hp_space: bool = True) -> Dict[str, Any]:
        """The job's record; hp_space=False: without its hp_space (a sweep's values, the one field of a
        job that grows with its size), for the reads of every run's events, which never use it."""

    @abstractmethod
    def get_run(self, workspace: str, run: str) -> Dict[str, Any]: ...

    @abstractmethod
    def update_job(self, workspace: str, job: str, changes: Dict[str, Any],
                   *, only_if_status_in: Optional[Iterable[str]] = None) -> bool: ...

    @abstractmethod
    def update_run(self, workspace: str, run: str, changes: Dict[str, Any],
                   *, only_if_status_in: Optional[Iterable[str]] = None) -> bool:
        """Apply changes; with only_if_status_in, only when the run's current status is one of
        them (a compare-and-set, so concurrent handlers cannot move a run backwards). Callers get
        the statuses from `domain.records.may_become`."""

    def update_runs(self, workspace: str, runs: Sequence[str], changes: Dict[str, Any],
                    *, only_if_status_in: Optional[Iterable[str]] = None) -> List[str]:
        """update_run for many runs at once (the cancel of a whole job): the names it changed, in the
        order given; a name the store does not hold is skipped. Stores override it with bulk writes."""
        statuses = None if only_if_status_in is None else list(only_if_status_in)
        changed = []
        for run in runs:
            try:
                if self.update_run(workspace, run, changes, only_if_status_in=statuses):
                    changed.append(run)
            except NotFound:
                continue
        return changed

    @abstractmethod
    def replace_metrics(self, workspace: str, run: str, rows: Iterable[Any]) -> None:
        """Replace the run's metric records (run_log.MetricRow: step, name, value, time) in bulk writes,
        consuming `rows` once and in bounded batches (it may be a generator over a log being read)."""

    @abstractmethod
    def get_metrics(self, workspace: str, run: str) -> List[Dict[str, Any]]: ...

    @abstractmethod
    def job_rollup(self, workspace: str, job: str) -> Dict[str, Any]:
        """{"counts": {status: number of runs}, "started": first run start, "ended": last run end}."""

    def recount_job(self, workspace: str, job: str) -> Dict[str, Any]:
        """job_rollup, with its counts and start written to the job's record. Stores override it so that
        no run moving meanwhile is lost from the counts (this default reads, then writes)."""
        rollup = self.job_rollup(workspace, job)
        self.update_job(workspace, job, {"counts": rollup["counts"], "started": rollup["started"]})
        return rollup

    @abstractmethod
    def list_runs(self, workspace: str, *, job: Optional[str] = None,
                  status: Optional[str] = None) -> List[Dict[str, Any]]: ...

    @abstractmethod
    def list_jobs(self, workspace: str) -> List[Dict[str, Any]]: ...

    @abstractmethod
    def query_runs(self, query: RunQuery) -> List[Dict[str, Any]]:
        """The runs a report selects: filters, sort and window done by the store."""

    @abstractmethod
    def has_key(self, workspace: str, group: str, name: str) -> bool:
        """Whether any run of the workspace has group.name (group: metrics, hparams or tags)."""

    @abstractmethod
    def workspaces(self) -> List[str]: ...

    @abstractmethod
    def experiments(self, workspace: str) -> List[str]: ...

    @abstractmethod
    def silent_runs(self, before: float) -> List[Dict[str, Any]]:
        """Running runs (any workspace) whose last heartbeat, or start, is older than `before`."""


class Compute(ABC):
    """Where runs execute."""

    @abstractmethod
    def submit(self, tasks: Sequence[Any]) -> None:
        """Queue RunTasks for execution, each at most once (keyed by workspace and run name)."""

    @abstractmethod
    def cancel(self, workspace: str, runs: Sequence[str]) -> List[str]:
        """Stop the runs; returns those that had not started (they will never report)."""

    @abstractmethod
    def check_tasks(self) -> List[Any]:
        """Events only the compute can see (a Batch node preempted): the timer publishes them."""


class TaskTable(Compute):
    """The Compute port of this machine: a durable table of tasks that the executors (local,
    pool) claim, launch and supervise. Tasks of `pool` targets name their pool; `node` is the box
    a run went to."""

    @abstractmethod
    def register_target(self, name: str, definition: dict) -> None:
        """definition: {"service": "local"} or {"service": "pool", "boxes": {name: box settings}}."""

    @abstractmethod
    def target(self, name: str) -> Optional[dict]: ...

    @abstractmethod
    def launchable(self, limit: int, ended: Optional[Mapping[Tuple[str, str], int]] = None) -> List[Any]:
        """Queued tasks of local targets that their jobs' `concurrent` lets start now. ended: per
        (workspace, job), launched runs whose processes have ended but are not reported yet: their
        slots are free (the next run need not wait for the last one's report)."""

    @abstractmethod
    def pools_with_queued(self) -> List[str]: ...

    @abstractmethod
    def queued_in_pool(self, pool: str, limit: int) -> List[Any]: ...

    @abstractmethod
    def runs_per_node(self) -> Dict[str, int]: ...

    @abstractmethod
    def claim(self, task: Any, node: Optional[str] = None) -> bool:
        """Take a queued task for launching; False if another executor took it first."""

    @abstractmethod
    def set_launched(self, workspace: str, run: str) -> None: ...

    @abstractmethod
    def launched(self, pooled: bool = False) -> List[dict]: ...

    @abstractmethod
    def requeue(self, workspace: str, run: str) -> None: ...

    @abstractmethod
    def mark(self, workspace: str, run: str, **fields: Any) -> None: ...

    @abstractmethod
    def active_count(self) -> int: ...

    @abstractmethod
    def counts_by_state(self, pool: Optional[str]) -> Dict[str, int]: ...

    @abstractmethod
    def record_box(self, box: str, reachable: bool, error: str = "") -> None: ...

    @abstractmethod
    def box_health(self) -> Dict[str, dict]: ...


class Publisher(ABC):
    """Sends messages onto the pipeline's queues."""

    jobs_queue: str
    events_queue: str

    @abstractmethod
    def send_job(self, message: Any) -> None: ...

    @abstractmethod
    def send_events(self, messages: Sequence[Any]) -> None: ...


# The records below are NamedTuples, not dataclasses: as immutable, and made without compiling
# generated methods, which every command paid for at start-up (it builds its Parts).
class ReceivedMessage(NamedTuple):
    """A message as a queue hands it out: locked for this receiver until it is settled."""

    id: int
    queue: str
    body: bytes
    delivery_count: int  # this delivery included: 1 the first time
    lock_token: str


class LockLost(RuntimeError):
    """The message's lock expired (or it was settled) before this settlement."""


class MessageQueue(ABC):
    """Queues with peek-lock (the local host's and the agent's view of the pipeline's queues)."""

    @abstractmethod
    def send(self, queue: str, bodies: Sequence[bytes]) -> None: ...

    @abstractmethod
    def receive(self, queue: str, max_messages: int = 1) -> List[ReceivedMessage]: ...

    @abstractmethod
    def complete(self, message: ReceivedMessage) -> None: ...

    @abstractmethod
    def abandon(self, message: ReceivedMessage, error: str = "", delay_seconds: float = 0.0) -> None:
        """Give the message back, receivable again after delay_seconds (domain/delivery's backoff)
        where the queue can hold it back; Service Bus's abandon redelivers at once."""

    @abstractmethod
    def dead_letter(self, message: ReceivedMessage, reason: str) -> None: ...

    @abstractmethod
    def renew_lock(self, message: ReceivedMessage) -> None: ...

    @abstractmethod
    def peek(self, queue: str, limit: int = 100) -> List[dict]:
        """Messages waiting, without locking them; `<queue>/$DeadLetterQueue` peeks the dead letters."""

    def count(self, queue: str) -> int:
        """Messages waiting (used by the local host to decide it is idle)."""
        return len(self.peek(queue))

    def release_locks(self) -> int:
        """Give back every lock held (only a queue with one consumer, the local host's, can); how many."""
        return 0

    @contextlib.contextmanager
    def followed(self) -> Iterator[Callable[[float], None]]:
        """For a process following a job: pause(seconds), cut short where the queue can tell that a
        message was completed meanwhile (the embedded one: its host handled one); a sleep here."""
        import time

        yield time.sleep

    def close(self) -> None:
        """Let go of connections."""


class NodeUnreachable(RuntimeError):
    """The node cannot be reached right now (a box whose SSH connection is down): nothing about
    the run is known to have failed, so its supervisor tries again later."""


class Look(NamedTuple):
    """What Node.look answers, in the order asked."""

    reads: List[bytes]
    walks: List[List[Tuple[str, tuple]]]
    exists: List[bool]


class Node(ABC):
    """Where a run's files and process live, as the run wrapper sees them: this machine or a box.

    The wrapper's logic (start, supervise, ship, finish, adopt after a crash) is the same on every
    node; only these operations differ. Paths are strings in the node's own (POSIX) file system.
    """

    name: str
    home: str  # the node's XT folder: setup markers live here
    fetches_code: bool  # True: prepare may be given a read-only link to the code zip instead of the zip

    @abstractmethod
    def connect(self) -> None:
        """Make sure the node answers (raises domain.boxes.BoxError naming the box and why)."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def probe(self) -> str:
        """A short description of the node's Python, after connecting (for `xt list boxes --check`)."""

    @abstractmethod
    def work_dir(self, local_dir: str, workspace: str, run: str) -> str:
        """The run's folder on the node; local_dir is the supervisor's own folder for it."""

    @abstractmethod
    def prepare(self, local_zip: Optional[str], code_url: Optional[str], code_dir: str, output_dir: str,
                empty_files: List[str], source: str) -> None: ...

    @abstractmethod
    def place_data(self, local_zip: str, folder: str, source: str) -> None:
        """A data folder (a share's files, zipped here) unpacked into `folder` on the node, which does
        not exist yet: none of the code's size or count limits, but no name or link that escapes the
        folder; nothing is cached or kept of the zip. On failure no part of `folder` is left."""

    @abstractmethod
    def append(self, path: str, data: bytes) -> None: ...

    @abstractmethod
    def read_from(self, path: str, offset: int = 0, limit: Optional[int] = None) -> bytes:
        """At most `limit` bytes (all to the end when None) from `offset`; b"" when missing."""

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def walk(self, root: str) -> Iterator[Tuple[str, tuple]]:
        """(relative path, change signature) of every file below root."""

    def look(self, reads: Sequence[Tuple[str, int, Optional[int]]] = (), walks: Sequence[str] = (),
             exists: Sequence[str] = ()) -> Look:
        """Several read_from (path, offset, limit), walk and exists at once, each answered as its own
        call would be: a node whose every call is a round trip (a box) answers them in one."""
        return Look([self.read_from(*read) for read in reads], [list(self.walk(root)) for root in walks],
                    [self.exists(path) for path in exists])

    @abstractmethod
    def local_copy(self, path: str) -> "contextlib.AbstractContextManager[str]": ...

    @abstractmethod
    def put(self, local_path: str, path: str) -> None: ...

    @abstractmethod
    def python_argv(self, argv: List[str]) -> List[str]: ...

    @abstractmethod
    def launch(self, argv: List[str], cwd: str, env: Dict[str, str], console: str, exit_file: str) -> Tuple[int, str]:
        """Start argv under the reaper, in its own session (a stale exit_file is removed first)."""

    @abstractmethod
    def alive(self, pid: int, start: Optional[str]) -> bool: ...

    def ended(self, pid: int, start: Optional[str], exit_file: str) -> bool:
        """Whether the run's reaper (launched with exit_file) is gone; a node where looking at the
        process costs more than looking for the file the reaper writes last may look there first."""
        return not self.alive(pid, start)

    def when_ended(self, pid: int, start: Optional[str], wake: Callable[[], None]) -> None:
        """Call wake (on any thread) once the run's reaper ends, where the node is told of that
        unasked; a node that must be asked does nothing, and its caller keeps looking (ended)."""

    @abstractmethod
    def kill_group(self, pid: int, sig: int) -> None: ...

    @abstractmethod
    def release(self, work_dir: str) -> None:
        """The run is over and reported."""


# (box name, its settings from the target's definition, the runs folder on the box) -> the box's Node
NodeFactory = Callable[[str, dict, str], Node]


class Ports(NamedTuple):
    """What a handler may touch."""

    storage: Storage
    stats: StatsStore
    compute: Compute
    publisher: Publisher


class Parts(NamedTuple):
    """The handlers' ports, the queue the local host (or the agent) drains, this machine's task
    table, and its nodes: this machine and a factory for a pool's boxes."""

    home: Path
    ports: Ports
    queue: MessageQueue
    compute: TaskTable  # this machine's tasks (ports.compute is this table, or the tasks queue)
    local_node: Node  # this machine, with its runs' folders under home/nodes/local
    make_node: NodeFactory  # a pool's box
    served_here: bool = True  # the queue is the embedded one: a local host must be serving it


class AgentParts(NamedTuple):
    """The compute agent's: the parts above, and the tasks queue its receiving thread drains (with
    its own queue client, task-table connection and publisher: the main loop uses the others)."""

    parts: Parts
    tasks_queue: str
    tasks: MessageQueue
    taker_compute: TaskTable
    taker_publisher: Publisher
