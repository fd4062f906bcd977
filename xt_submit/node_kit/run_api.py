"""The logging API used inside training scripts.

    from xt_submit import Run
    run = Run()
    run.log_hparams({"lr": 0.01})
    run.log_metrics({"epoch": 1, "loss": 0.3}, step_name="epoch")
    run.log_metrics({"loss": 0.2}, step=2)  # the step as MLflow and TensorBoard take it

Each call is a buffered local append (no network): the run wrapper ships the file to storage.
Outside XT it writes `xt_run_log.jsonl` next to the script. The buffer is flushed every second,
on close(), at exit (even after an exception) and on SIGTERM; a forked child starts with an empty
buffer (what the parent buffered is the parent's to write).

Values every stats store keeps are whole numbers in the 64-bit range and finite floats. NaN and
infinities are logged as null (JSON has no spelling for them). A whole number outside the range is
an hparam (or a numpy.uint64 anywhere) logged as the float nearest it, with a warning; a plain int
metric is logged as it is (the hot path checks nothing) and every reader of the log
(domain/run_log.summarize) keeps it as that float too, so each store holds the same value.
"""
from __future__ import annotations

import atexit
import math
import operator
import os
import signal
import sys
import time
import weakref

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: a training script need not pay for importing typing
    from typing import Any, Callable, Dict, Optional, Tuple


_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1
_warned: set = set()  # what was said on stderr already (a loop logging a numpy.uint64 says it once)


def _narrow(value: Any, what: str) -> Any:
    """A whole number outside int64 (in lists and dicts too) as the nearest float, saying so on stderr
    once for `what`; None for one beyond any float (as an infinity is logged)."""
    if isinstance(value, dict):
        return {key: _narrow(item, what) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_narrow(item, what) for item in value]
    if type(value) is not int or _INT64_MIN <= value <= _INT64_MAX:
        return value
    try:
        narrowed: Optional[float] = float(value)
    except OverflowError:
        narrowed = None
    if what not in _warned:
        _warned.add(what)
        print(f"xt: {what}: a whole number outside the 64-bit range every stats store keeps, logged as {narrowed}",
              file=sys.stderr)
    return narrowed


def _number(value: Any) -> Any:
    """A number-like object the encoder does not know (numpy and torch scalars, 0-d arrays) as the
    Python scalar it stands for: `.item()`, else `__index__` (integers), else `__float__`; found by
    duck typing, so neither numpy nor torch is imported."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            scalar = item()
        except (TypeError, ValueError):  # an array of many values has no single item
            scalar = None
        if isinstance(scalar, (bool, int, float, str)):
            return _narrow(scalar, f"a {type(value).__name__}")  # numpy.uint64 goes up to 2**64 - 1
    kind = type(value)
    if hasattr(kind, "__index__"):
        return _narrow(operator.index(value), f"a {kind.__name__}")
    if hasattr(kind, "__float__"):
        return float(value)
    raise TypeError(f"cannot log a {kind.__name__}: expected a number, text, a bool, or a list or dict of them")


def _finite(value: Any) -> Any:
    """As msgspec writes them: NaN and infinities become null (JSON has no spelling for them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _stdlib_encode(value: Any) -> bytes:
    import json

    return json.dumps(_finite(value), separators=(",", ":"), default=lambda v: _finite(_number(v))).encode()


def _stdlib_decode(data: bytes) -> Any:  # the same contract as msgspec's
    import json

    return json.loads(data)


_codec: Optional[Tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = None


def _json_codec() -> Tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    """(encode, decode): msgspec's where installed, else the stdlib writing the same records (a pool
    box may run scripts with a bare Python). Imported on first use, not with the module: a script,
    and each spawned DataLoader worker re-importing it, pays nothing for `from xt_submit import Run`."""
    global _codec
    if _codec is None:
        try:
            import msgspec

            _codec = (msgspec.json.Encoder(enc_hook=_number).encode, msgspec.json.decode)
        except ImportError:
            _codec = (_stdlib_encode, _stdlib_decode)
    return _codec


def _encode_json(value: Any) -> bytes:
    return _json_codec()[0](value)


def _decode_json(data: bytes) -> Any:
    return _json_codec()[1](data)


LOG_FILE_NAME = "xt_run_log.jsonl"
CHECKPOINT_FILE_NAME = "xt_checkpoint.json"
_now = time.time
_monotonic = time.monotonic
_live_runs: "weakref.WeakSet[Run]" = weakref.WeakSet()


def _forget_parent_buffers() -> None:
    """In a forked child: the lines its parent buffered are the parent's to write (it still will)."""
    for run in list(_live_runs):
        run._buffer.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_parent_buffers)


def _script_dir() -> str:
    script = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c") else ""
    return os.path.dirname(os.path.abspath(script)) if script else os.getcwd()


class Run:
    def __init__(self, log_path: Optional[str] = None, *, step_name: Optional[str] = None,
                 flush_seconds: float = 1.0, max_buffered: int = 4096) -> None:
        self.name = os.environ.get("XT_RUN_NAME")  # None outside XT
        self.job = os.environ.get("XT_JOB_ID")
        self.workspace = os.environ.get("XT_WORKSPACE")
        self.experiment = os.environ.get("XT_EXPERIMENT")
        self.output_dir = os.environ.get("XT_OUTPUT_DIR") or os.path.join(_script_dir(), "output")
        self.log_path = log_path or os.environ.get("XT_RUN_LOG") or os.path.join(_script_dir(), LOG_FILE_NAME)
        self.checkpoint_path = os.environ.get("XT_CHECKPOINT") or os.path.join(_script_dir(), CHECKPOINT_FILE_NAME)
        self.step_name = step_name or os.environ.get("XT_STEP_NAME") or "step"
        self._flush_seconds = flush_seconds
        self._max_buffered = max_buffered
        self._buffer: list = []
        self._next_flush = time.monotonic() + flush_seconds
        self._index = 0
        self._encode: Callable[[Any], bytes] = self._first_encode  # the encoder itself after one call
        self._fd: Optional[int] = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _live_runs.add(self)
        atexit.register(self.close)
        self._chain_sigterm()

    # --- logging -----------------------------------------------------------------------------
    def log_hparams(self, hparams: Dict[str, Any]) -> None:
        self._append("hparams", {name: _narrow(value, f"hparam {name!r}") for name, value in dict(hparams).items()})

    def log_hparam(self, name: str, value: Any) -> None:
        self.log_hparams({name: value})

    def log_metrics(self, metrics: Dict[str, Any], step_name: Optional[str] = None, stage: Optional[str] = None,
                    *, step: Optional[int] = None) -> None:
        """Log one step's metrics. The step is the dict's step key (step_name, else the run's), or
        `step`; without either a running __index__ stands in. `stage` prefixes each name ("train" ->
        "train-loss")."""
        if step is not None:
            metrics = self._with_step(metrics, step_name or self.step_name, step)
        if stage:
            step_key = step_name or self.step_name
            metrics = {(name if name == step_key else f"{stage}-{name}"): value for name, value in metrics.items()}
        self._index += 1
        data = {**metrics, "__index__": self._index}
        if step_name:
            data["__step_name__"] = step_name
        if self._fd is None:
            raise ValueError("Run is closed")
        # the hot path of a training loop: one encode and one list append, no syscall
        self._buffer.append(self._encode({"time": _now(), "event": "metrics", "data": data}))
        if len(self._buffer) >= self._max_buffered or _monotonic() >= self._next_flush:
            self.flush()

    @staticmethod
    def _with_step(metrics: Dict[str, Any], step_key: str, step: Any) -> Dict[str, Any]:
        try:
            if isinstance(step, bool):
                raise TypeError
            whole = operator.index(step)  # an int, or numpy's integers
        except TypeError:
            raise ValueError(f"log_metrics: step: expected a whole number, got {step!r}") from None
        if step_key in metrics and metrics[step_key] != whole:
            raise ValueError(f"log_metrics: step={whole} and the metrics' own {step_key!r}={metrics[step_key]!r}"
                             " disagree; give the step once")
        return {step_key: whole, **metrics}

    def _first_encode(self, value: Any) -> bytes:
        self._encode = _json_codec()[0]
        return self._encode(value)

    # --- checkpoints -------------------------------------------------------------------------
    def set_checkpoint(self, state: Dict[str, Any]) -> None:
        """Save resumable state (JSON-able): written atomically, shipped with the run's files."""
        tmp = self.checkpoint_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(_encode_json(state))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.checkpoint_path)
        self._append("checkpoint", {"bytes": os.path.getsize(self.checkpoint_path)})
        self.flush()

    def get_checkpoint(self) -> Optional[Dict[str, Any]]:
        try:
            with open(self.checkpoint_path, "rb") as f:
                return _decode_json(f.read())
        except FileNotFoundError:
            return None

    # --- buffering ---------------------------------------------------------------------------
    def _append(self, event: str, data: Dict[str, Any]) -> None:
        if self._fd is None:
            raise ValueError("Run is closed")
        self._buffer.append(self._encode({"time": time.time(), "event": event, "data": data}))
        if len(self._buffer) >= self._max_buffered or time.monotonic() >= self._next_flush:
            self.flush()

    def flush(self) -> None:
        if self._buffer and self._fd is not None:
            data = b"\n".join(self._buffer) + b"\n"
            self._buffer.clear()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        self._next_flush = time.monotonic() + self._flush_seconds

    def close(self) -> None:
        if self._fd is None:
            return
        self.flush()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _chain_sigterm(self) -> None:
        """On SIGTERM (a cancel), flush before dying, unless the script installed its own handler."""
        try:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return

            def on_sigterm(signum, frame):
                self.close()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:
            pass  # not the main thread: leave signals alone
