"""Message contracts: the job manifest and the events that move through the queues.

Every message carries a `version` and is decoded strictly (unknown fields and wrong types are
rejected), so a malformed or foreign message is dead-lettered with a reason instead of half-applied.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Annotated, Any, Dict, List, Optional, Sequence, Union

import msgspec
from xt_submit.domain.errors import OneLineError
from xt_submit.domain.limits import INT64_MAX, INT64_MIN, MAX_CONCURRENT, MAX_RETRIES, MAX_SECONDS  # noqa: F401

CONTRACT_VERSION = 1
# The queues' names where nothing else names them (the embedded default's).
JOBS_QUEUE, EVENTS_QUEUE, TASKS_QUEUE = "jobs", "events", "tasks"

# Run statuses, in the only order a run may move through them (terminal ones share a rank).
QUEUED, RUNNING, COMPLETED, ERROR, CANCELLED = "queued", "running", "completed", "error", "cancelled"
# Ended by the job's early-stopping policy (its outputs and metrics are kept, as for a completed run).
STOPPED = "stopped"
# A low-priority node was taken away mid-run and compute requeued the run: it runs again (not terminal).
PREEMPTED = "preempted"
TERMINAL_STATUSES = frozenset({COMPLETED, ERROR, CANCELLED, STOPPED})
STATUS_RANK = {QUEUED: 0, RUNNING: 1, PREEMPTED: 1, COMPLETED: 2, ERROR: 2, CANCELLED: 2, STOPPED: 2}

# The numbers every stats store keeps (SQLite INTEGER, BSON int64, JSON) are whole numbers in int64
# (limits.INT64_MIN..INT64_MAX) and finite floats. Outside them a value is stored as `storable` says.

class _Strict(msgspec.Struct, forbid_unknown_fields=True):
    pass


def _doc(text: str) -> msgspec.Meta:
    """A field's description in the published JSON Schema (decoding ignores it)."""
    return msgspec.Meta(description=text)


class SetupSpec(_Strict, kw_only=True):
    activate: Optional[str] = None
    pip_packages: List[str] = []
    conda_packages: List[str] = []
    environment: Dict[str, str] = {}


class EarlyStopping(_Strict, kw_only=True):
    """XT's early-stopping section: a policy checked against the primary metric as runs log it.
    Steps count the primary metric's reports (the n-th time a run logs it), as in XT and Azure ML."""

    policy: Annotated[str, _doc("bandit, median or truncation")]
    delay_evaluation: Annotated[int, _doc("reports of the primary metric before the first check (>= 0)")] = 10
    evaluation_interval: Annotated[int, _doc("check every this many reports (>= 1)")] = 1
    slack_factor: Annotated[float, _doc("bandit: stop when worse than the best run at the same step by more "
                                        "than this ratio (> 0)")] = 0.05
    slack_amount: Annotated[float, _doc("bandit: ... or by more than this amount (> 0; 0: use slack_factor)")] = 0.0
    truncation_percentage: Annotated[int, _doc("truncation: stop the runs in this lowest percent at each "
                                               "check (1 to 99)")] = 5


class ShareSpec(_Strict, kw_only=True):
    """A folder of the workspace's data or model share, and how each run sees it (XT's data: / model:)."""

    path: Annotated[str, _doc("the folder of the share (workspaces/<ws>/shares/<data|model>/<path>/ in storage), "
                              "'/'-separated names without '.' or '..'")]
    action: Annotated[str, _doc("download: a copy in the node's cache, fetched once per content; mount: the "
                                "storage itself, where the target can mount it")]
    writable: Annotated[bool, _doc("the run may write there (mount only, where the mount is writable)")] = False


class JobManifest(_Strict, kw_only=True):
    """What `xt run` (or an uploaded zip's xt_manifest.json) asks for. No secrets, ever."""

    version: Annotated[int, _doc(f"the contract's version: {CONTRACT_VERSION}")] = CONTRACT_VERSION
    workspace: Annotated[str, _doc("the storage area of the job and its runs: a letter, then letters, digits, "
                                   "_ or - (at most 63)")]
    experiment: Annotated[str, _doc("the experiment the job belongs to (the same rule as workspace)")]
    username: str = ""
    script: Annotated[str, _doc("the script, as xt run was given it (for reports)")]
    command: Annotated[str, _doc("the base command, run in the zip's top folder; each run appends "
                                 "\" --name=value\" per hparam")]
    code_key: Annotated[str, _doc("set by XT (an uploaded zip is its own code): leave it out or empty")] = ""
    code_sha256: Annotated[str, _doc("set by XT: leave it out or empty")] = ""
    hp_space: Annotated[Dict[str, Any], _doc(
        "name -> a list of values (one run per combination in a grid search), a fixed value, or a "
        "\"$func(args)\" distribution such as \"$linspace(0.1,0.9,5)\" or \"$uniform(0,1)\"")] = {}
    hp_points: Annotated[Optional[List[Dict[str, Any]]], _doc(
        "instead of hp_space: exactly these runs, one hparams object (name -> value) each, in order "
        "(xt rerun of several runs)")] = None
    search_type: Annotated[str, _doc("grid, random, bayesian (Optuna's TPE: each run from the results so far) "
                                     "or dgd (distributed grid descent: neighbours of the best point)")] = "grid"
    runs: Annotated[Optional[int], _doc("exactly this many runs (>= 1, at most the planned-runs limit)")] = None
    max_runs: Annotated[Optional[int], _doc("at most this many runs (>= 1, at most the planned-runs limit)")] = None
    seed: Annotated[int, _doc("seed of the sampled hparams: the same manifest plans the same runs "
                              "(a 64-bit whole number)")] = 0
    target: Annotated[str, _doc("the compute target (a name in the team's compute-targets)")] = "local"
    concurrent: Annotated[int, _doc(f"runs at once on the target (1 to {MAX_CONCURRENT})")] = 2
    max_time: Annotated[Optional[float], _doc(f"seconds a run may take before it is stopped (> 0, at most "
                                              f"{MAX_SECONDS})")] = None
    setup: Optional[SetupSpec] = None
    after_dirs: Annotated[List[str], _doc("globs of what each run keeps as its output")] = msgspec.field(
        default_factory=lambda: ["output/**"])
    after_omit: List[str] = []
    tags: Dict[str, str] = {}
    primary_metric: str = "loss"
    maximize_metric: bool = False
    step_name: str = "step"
    early_stopping: Annotated[Optional[EarlyStopping], _doc("stop runs whose primary metric falls behind the "
                                                            "job's other runs (none: let every run finish)")] = None
    resume_from: Annotated[str, _doc("a run of the workspace (run3.2): each run starts from its last checkpoint "
                                     "(Run.get_checkpoint() returns it); empty: from scratch")] = ""
    retries: Annotated[int, _doc(f"a run that ends in error runs again, as a new run of the job with the same "
                                 f"command and hparams, up to this many times (0 to {MAX_RETRIES}; not with "
                                 "bayesian or dgd search); separate from a Batch target's preemption-retries")] = 0
    data: Annotated[Optional[ShareSpec], _doc("the data share folder each run sees as XT_DATA_DIR "
                                              "(none: no XT_DATA_DIR)")] = None
    model: Annotated[Optional[ShareSpec], _doc("the model share folder each run sees as XT_MODEL_DIR "
                                               "(none: no XT_MODEL_DIR)")] = None


class JobSubmitted(_Strict, tag="job_submitted", kw_only=True):
    version: int = CONTRACT_VERSION
    submission_id: str  # idempotency key: a redelivery maps to the same job name
    manifest: JobManifest
    submitted_at: float
    upload_key: str = ""  # the dropped zip it came from (uploads/<name>.zip): dispatch writes its result beside it


class RunStarted(_Strict, tag="run_started", kw_only=True):
    version: int = CONTRACT_VERSION
    workspace: str
    job: str
    run: str
    node_id: str
    started_at: float


class RunFinished(_Strict, tag="run_finished", kw_only=True):
    version: int = CONTRACT_VERSION
    workspace: str
    job: str
    run: str
    node_id: str
    status: str  # completed | error | cancelled, as the node saw it
    exit_code: Optional[int]
    started_at: float
    ended_at: float
    reason: str = ""
    metrics: Dict[str, Any] = {}  # last value of each metric, as the node saw them
    # set instead of `metrics` when they are more than FINISH_METRICS_BYTES: the storage key holding them
    metrics_key: str = ""


class RunHeartbeat(_Strict, tag="run_heartbeat", kw_only=True):
    """A node's 'still running' (every heartbeat interval while a run is alive)."""

    version: int = CONTRACT_VERSION
    workspace: str
    job: str
    run: str
    node_id: str
    at: float


class RunProgress(_Strict, tag="run_progress", kw_only=True):
    """While a run is alive (at most every progress interval, when it logged something new): its
    latest metrics, and its new reports of the job's primary metric for the early-stopping policy.

    `log_bytes` (how much of the run log its node has shipped) orders them: an older report that
    arrives late does not replace a newer one's metrics."""

    version: int = CONTRACT_VERSION
    workspace: str
    job: str
    run: str
    node_id: str
    at: float
    log_bytes: int
    metrics: Dict[str, Any] = {}  # the latest value of each metric logged since the run started (or resumed)
    # reports of the primary metric, numbered from first_report (the run's n-th time of logging it):
    # [value, running mean, best so far] each, None where a value is not a finite number
    first_report: int = 1
    primary: List[List[Optional[float]]] = []


class RunPreempted(_Strict, tag="run_preempted", kw_only=True):
    """Compute saw the run's node preempted and its task requeued (the Batch adapter's periodic check).

    `preemptions` counts them so far; beyond `retries` (the target's preemption-retries) the run
    ends as an error and compute has stopped requeueing it."""

    version: int = CONTRACT_VERSION
    workspace: str
    job: str
    run: str
    node_id: str = ""
    preemptions: int
    retries: int
    requeued_at: float


class CancelRequested(_Strict, tag="cancel_requested", kw_only=True):
    version: int = CONTRACT_VERSION
    workspace: str
    job: str
    runs: List[str] = []  # empty: every run of the job
    requested_at: float


class UploadReceived(_Strict, tag="upload_received", kw_only=True):
    """A zip dropped into the uploads area (the blob trigger's event, or the local drop)."""

    version: int = CONTRACT_VERSION
    upload_key: str
    received_at: float


UPLOAD_ACCEPTED, UPLOAD_SUBMITTED, UPLOAD_REFUSED = "accepted", "submitted", "refused"


class UploadResult(_Strict, kw_only=True):
    """uploads/<name>.result.json: what became of uploads/<name>.zip, for the system that dropped it.

    "accepted" (the zip is sound, its job is on the way), then "submitted" (the job and its runs
    are recorded and queued: `job` names it), or "refused" (`reason` says why; nothing runs)."""

    version: int = CONTRACT_VERSION
    upload: str
    status: str
    job: Optional[str] = None
    runs: List[str] = []
    workspace: Optional[str] = None
    submission_id: Optional[str] = None
    reason: Optional[str] = None


Event = Union[JobSubmitted, RunStarted, RunFinished, RunHeartbeat, RunProgress, RunPreempted, CancelRequested,
              UploadReceived]

_encoder = msgspec.json.Encoder()


@functools.cache
def _decoder(kind: Any) -> msgspec.json.Decoder:
    """kind's decoder, built at its first use: building one walks every type in it, a cost each
    command that imports the contracts (`xt list runs` too) would otherwise pay at start-up."""
    return msgspec.json.Decoder(kind)


MAX_MESSAGE_BYTES = 256 * 1024  # Service Bus standard tier's limit, which the embedded queue keeps too
# A manifest leaves room in its message for the JobSubmitted around it (ids, code key, defaults), so an
# accepted manifest always travels; the rest of the messages stay under the limit by construction.
MAX_MANIFEST_BYTES = MAX_MESSAGE_BYTES - 8 * 1024
# The last metrics a RunFinished carries inline; more are stored beside the run and referenced (metrics_key).
FINISH_METRICS_BYTES = 64 * 1024
# What a RunProgress carries at most: its metrics (more: only the primary metric's), and primary reports
# (more: the latest), so it stays far under the queue's limit whatever a run logs.
PROGRESS_METRICS_BYTES = 32 * 1024
PROGRESS_MAX_REPORTS = 2_000
FINISH_REASON_CHARS = 4000
FINAL_METRICS_FILE = "final_metrics.json"


class ContractError(OneLineError):
    """A message or manifest that does not match its contract."""


class MessageTooLarge(ContractError):
    """A message bigger than its queue takes, refused by the sender (the queue would fail it later)."""


def _check_size(body: bytes, source: str, limit: int = MAX_MESSAGE_BYTES) -> None:
    if len(body) > limit:
        raise ContractError(f"{source}: {len(body)} bytes, more than the limit of {limit} bytes")


def check_message_sizes(queue: str, bodies: Sequence[bytes]) -> None:
    """What every sender checks before a queue sees its bodies: each one under MAX_MESSAGE_BYTES."""
    for body in bodies:
        if len(body) > MAX_MESSAGE_BYTES:
            kind = re.match(rb'\{"type":"(\w{1,40})"', body)
            what = f"{kind.group(1).decode()} message" if kind else "message"
            raise MessageTooLarge(f"{queue}: {what} of {len(body)} bytes, more than the queue's limit of "
                                  f"{MAX_MESSAGE_BYTES} bytes")


def storable(value: Any) -> Any:
    """A logged value as every store keeps it: a whole number outside int64 as the float nearest it,
    NaN and infinities (and a number beyond any float) as None, as JSON writers spell them (null);
    lists and dicts item by item. Anything else is returned as it is."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int:
        if INT64_MIN <= value <= INT64_MAX:
            return value
        try:
            return float(value)
        except OverflowError:
            return None
    if kind is dict:
        return {name: storable(item) for name, item in value.items()}
    if kind is list:
        return [storable(item) for item in value]
    return value


def out_of_range(value: Any) -> Optional[int]:
    """The first whole number outside int64 in a value (lists and dicts searched), or None."""
    if type(value) is int:
        return None if INT64_MIN <= value <= INT64_MAX else value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((wide for wide in map(out_of_range, items) if wide is not None), None)


def check_manifest_size(manifest: JobManifest, source: str) -> None:
    """A manifest too big to travel (its hp_space, tags and command go in one message), as one line."""
    size = len(encode(manifest))
    if size > MAX_MANIFEST_BYTES:
        raise ContractError(f"{source}: the job manifest is {size} bytes, more than the limit of {MAX_MANIFEST_BYTES} "
                            "bytes (its hp_space, tags and command travel in one message): put large values in a "
                            "file in the code")


def encode(message: Any) -> bytes:
    return _encoder.encode(message)


def _decode(decoder: msgspec.json.Decoder, body: bytes, source: str, limit: int = MAX_MESSAGE_BYTES):
    """Size, shape, then version: every way a body can be wrong, as one ContractError naming `source`."""
    _check_size(body, source, limit)
    try:
        decoded = decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ContractError(f"{source}: {_readable(exc)}") from None
    _check_version(decoded, source)
    return decoded


def decode_event(body: bytes) -> Event:
    return _decode(_decoder(Event), body, "message")


def decode_manifest(body: bytes, source: str = "xt_manifest.json") -> JobManifest:
    return _decode(_decoder(JobManifest), body, source, MAX_MANIFEST_BYTES)


def _check_version(obj: Any, source: str) -> None:
    if obj.version != CONTRACT_VERSION:
        raise ContractError(f"{source}: version: expected {CONTRACT_VERSION}, got {obj.version}")


def _readable(exc: Exception) -> str:
    """msgspec says 'Expected `int`, got `str` - at `$.manifest.runs`'; say 'manifest.runs: expected int, got str'."""
    text = str(exc).splitlines()[0]
    message, sep, where = text.partition(" - at `")
    missing = re.match(r"Object missing required field `(.+)`$", message)
    if missing:
        path = where.rstrip("`").removeprefix("$").lstrip(".") if sep else ""
        return f"{path + '.' if path else ''}{missing.group(1)}: required field missing"
    message = message.replace("`", "")
    message = message[:1].lower() + message[1:]
    path = where.rstrip("`").removeprefix("$").lstrip(".") if sep else ""
    return f"{path}: {message}" if path else message


class RunTask(_Strict, kw_only=True):
    """Everything a compute node needs to execute one run (handed to the run wrapper)."""

    version: int = CONTRACT_VERSION
    workspace: str
    experiment: str
    job: str
    run: str
    command: str
    code_key: str
    hparams: Dict[str, Any] = {}
    setup: Optional[SetupSpec] = None
    after_dirs: List[str] = msgspec.field(default_factory=lambda: ["output/**"])
    after_omit: List[str] = []
    max_time: Optional[float] = None
    concurrent: int = 2
    step_name: str = "step"
    target: str = "local"
    created_at: float = 0.0
    # the metric whose reports RunProgress carries (set when the job has an early-stopping policy)
    primary_metric: str = ""
    maximize_metric: bool = False
    resume_from: str = ""  # the run whose last checkpoint this run starts from, until it saves its own
    data: Optional[ShareSpec] = None  # the job's data share: XT_DATA_DIR
    model: Optional[ShareSpec] = None  # the job's model share: XT_MODEL_DIR
    # Set by compute that knows its nodes ($VARS are expanded on the node): where downloaded shares are
    # cached for every run of the node (default: the node's XT folder), and where the storage container
    # is mounted ('' : not mounted; a mount then needs storage that is a folder on the node).
    share_cache_dir: str = ""
    storage_mount: str = ""


class TasksQueued(_Strict, tag="tasks_queued", kw_only=True):
    """Runs for the machines that execute them (`xt serve` agents), on the tasks queue."""

    version: int = CONTRACT_VERSION
    tasks: List[RunTask]


class TasksCancelled(_Strict, tag="tasks_cancelled", kw_only=True):
    version: int = CONTRACT_VERSION
    workspace: str
    runs: List[str]


TaskMessage = Union[TasksQueued, TasksCancelled]


def decode_task_message(body: bytes) -> TaskMessage:
    return _decode(_decoder(TaskMessage), body, "task message")


def decode_task(body: bytes) -> RunTask:
    try:
        return _decoder(RunTask).decode(body)
    except msgspec.DecodeError as exc:
        raise ContractError(f"run task: {_readable(exc)}") from None
