"""`xt export tensorboard` and `xt view tensorboard`: the runs `xt list runs` selects, as TensorBoard
event files that `tensorboard --logdir DEST` shows.

Each run is one folder under DEST, named by the run and the hparams that vary among the exported
runs (`run3.1_lr=0.01_opt=adam`), holding one event file: every numeric metric the run logged as a
scalar at its step and wall time, and the HParams plugin's session start (the run's hparams) and
end in the run's own file, so the plugin lists the run itself rather than a nested folder (and,
with no experiment summary, TensorBoard derives the experiment from all the runs). Text, flags and
nulls are not scalars: they are skipped and counted. A run's folder is written beside its final
name and renamed into place, replacing the folder an earlier export wrote for it, so exporting
twice never doubles a curve.

tensorboardX writes the files (no TensorFlow or torch needed); it is an optional extra, imported
only here and only when exporting.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from xt_submit import config as xt_config
from xt_submit.domain import layout
from xt_submit.domain.errors import OneLineError
from xt_submit.domain.run_query import QueryError
from xt_submit.ports import StatsStore
from xt_submit.services import run_reports

NEEDS_WRITER = "xt {verb} tensorboard needs tensorboardX: pip install 'xt-pipeline[tensorboard]'"
NEEDS_VIEWER = ("xt view tensorboard needs the tensorboard program (neither on PATH nor beside {python}): "
                "pip install 'xt-pipeline[tensorboard]'")
MAX_FOLDER_NAME = 120  # characters: well inside every file system's 255, and still readable in TensorBoard's list
MAX_PART = 32  # characters of one hparam's name or value in a folder name, so one long value leaves room for the rest
EVENT_FILE_PREFIX = "events.out.tfevents."  # what tensorboardX names its files; a folder of only these is ours
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")  # what a folder name keeps of an hparam's name or value
DEFAULT_PORT = 6006  # TensorBoard's own default
# an ended run's status as the HParams plugin's; it has no "cancelled" or "stopped" (by early stopping),
# which neither succeeded nor failed. A run not named here has not ended (preempted ones run again).
SESSION_STATUS = {"completed": "STATUS_SUCCESS", "error": "STATUS_FAILURE", "cancelled": "STATUS_UNKNOWN",
                  "stopped": "STATUS_UNKNOWN"}


class TensorBoardError(OneLineError):
    pass


def _writer_class(verb: str = "export"):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise TensorBoardError(NEEDS_WRITER.format(verb=verb)) from None
    return SummaryWriter


def _session_summaries(row: Dict[str, Any]):
    """The HParams plugin's session start (the run's hparams, its start time) and, for a run that has
    ended, its session end (its status and end time; None while the run is alive)."""
    from tensorboardX.proto.api_pb2 import Status
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
    from tensorboardX.summary import hparams

    _, start, end = hparams({key: _plugin_value(value) for key, value in (row.get("hparams") or {}).items()}, {})
    # tensorboardX leaves the times out and calls every session a success: set what the run says
    start_data = HParamsPluginData.FromString(start.value[0].metadata.plugin_data.content)
    if _number(row.get("started")):
        start_data.session_start_info.start_time_secs = float(row["started"])
    start.value[0].metadata.plugin_data.content = start_data.SerializeToString()
    status = SESSION_STATUS.get(row.get("status") or "")
    if status is None:
        return start, None
    end_data = HParamsPluginData.FromString(end.value[0].metadata.plugin_data.content)
    end_data.session_end_info.status = Status.Value(status)
    if _number(row.get("ended")):
        end_data.session_end_info.end_time_secs = float(row["ended"])
    end.value[0].metadata.plugin_data.content = end_data.SerializeToString()
    return start, end


# --- folder names -----------------------------------------------------------------------------
def swept_hparams(runs: Sequence[Dict[str, Any]]) -> List[str]:
    """The hparams whose value differs between the runs (a run without one counts as its own value),
    in the order they first appear."""
    names: Dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.get("hparams") or {}))
    return [name for name in names
            if len({_exact((run.get("hparams") or {}).get(name)) for run in runs}) > 1]


def folder_name(run: Dict[str, Any], swept: Sequence[str]) -> str:
    """`run3.1_lr=0.01_opt=adam`: the run's name (which keeps folders unique) and its swept hparams,
    made safe for a file name and cut, at a whole `_name=value`, to MAX_FOLDER_NAME characters."""
    name = run["name"]
    hparams = run.get("hparams") or {}
    for key in swept:
        part = "_" + _safe(key) + "=" + _safe(_text(hparams.get(key)))
        if len(name) + len(part) > MAX_FOLDER_NAME:
            break
        name += part
    return name


def _exact(value: Any) -> str:
    """What tells two values apart (all digits: 0.1234567 and 0.1234568 differ, though named alike)."""
    return json.dumps(value, sort_keys=True, default=str)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"  # 0.01, not 0.010000000000000002
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text)[:MAX_PART] or "-"


# --- what goes into a run's file --------------------------------------------------------------
def _number(value: Any) -> bool:
    """A finite int or float (not a bool): what a scalar can be."""
    return (type(value) is float or type(value) is int) and math.isfinite(value)


def scalar_points(records: Sequence[Dict[str, Any]], fallback_time: Optional[float]
                  ) -> Tuple[List[Tuple[str, float, int, Optional[float]]], int]:
    """A run's metric records ({step, name, value, time}, in logged order) as (tag, value, step,
    wall time) points, and how many records were not numbers. A record without a whole-number step
    takes the place of its log_metrics call in the log (1, 2, ...), as `xt report` plots it; one
    without a time takes fallback_time."""
    points = []
    skipped = 0
    call = 0
    previous: Optional[Tuple[Any, Any]] = None
    for record in records:
        if (record["step"], record["time"]) != previous:  # the records of one call share step and time
            call += 1
            previous = (record["step"], record["time"])
        if not _number(record["value"]):
            skipped += 1
            continue
        step = record["step"] if type(record["step"]) is int else call
        when = record["time"] if _number(record["time"]) else fallback_time
        points.append((record["name"], float(record["value"]), step, when))
    return points, skipped


def _plugin_value(value: Any) -> Any:
    """An hparam as the HParams plugin holds one: a string, a bool or a number (None: left out)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    return json.dumps(value, sort_keys=True, default=str)  # a list or a dict: shown as its JSON


def _run_time(run: Dict[str, Any]) -> Optional[float]:
    for field in ("started", "created"):
        if _number(run.get(field)):
            return float(run[field])
    return None


# --- the export -------------------------------------------------------------------------------
def check_dest(dest: str) -> Path:
    path = Path(dest)
    if path.exists() and not path.is_dir():
        raise TensorBoardError(f"--dest: {dest!r} is a file, expected a folder")
    return path


def _check_named_runs(stats: StatsStore, workspace: str, names: Sequence[str], jobs: Sequence[str]) -> None:
    """A run or a job named one by one must exist (a range or `run7.*` selects what there is)."""
    for item in (piece.strip() for text in [*names, *jobs] for piece in text.split(",")):
        if layout.RUN_PATTERN.match(item):
            stats.get_run(workspace, item)  # NotFound: "run run9.9 not found in workspace ws1"
        elif layout.JOB_PATTERN.match(item):
            stats.get_job(workspace, item)


def _earlier_folders(dest: Path, run: str) -> List[Path]:
    """The folders an earlier export wrote for this run (under whatever swept hparams it had then)."""
    if not dest.is_dir():
        return []
    return [entry for entry in dest.iterdir()
            if entry.is_dir() and (entry.name == run or entry.name.startswith(run + "_"))]


def _ours(folder: Path) -> bool:
    return all(entry.is_file() and entry.name.startswith(EVENT_FILE_PREFIX) for entry in folder.iterdir())


def select(cfg: xt_config.Config, stats: StatsStore, *, names: Sequence[str] = (), jobs: Sequence[str] = (),
           experiment: Optional[str] = None, status: Optional[str] = None, filters: Sequence[str] = (),
           first: Optional[int] = None, last: Optional[int] = None,
           everything: bool = False, verb: str = "export") -> Tuple[List[Dict[str, Any]], List[str]]:
    """The runs `xt list runs` selects with these options, and its notes; an error when none is.
    verb: the command the error names (`xt export tensorboard`, `xt view tensorboard`)."""
    if not (names or jobs or experiment):
        raise TensorBoardError(f"xt {verb} tensorboard: name runs (run7.1 run7.2, run7.*), --job JOB or --experiment EXP")
    workspace = cfg.general.workspace
    query = run_reports.query_from(workspace, cfg.run_reports, names=names, jobs=jobs, filters=filters,
                                   experiment=experiment, status=status, first=first, last=last, everything=everything)
    _check_named_runs(stats, workspace, names, jobs)
    rows, notes = run_reports.select_runs(stats, query, sort_given=False)
    if not rows:
        selection = " ".join([*names, *jobs] + ([f"experiment {experiment}"] if experiment else [])
                             + ([f"status {status}"] if status else []) + [f"where {text}" for text in filters])
        raise QueryError(f"no runs match {selection} in workspace {workspace}")
    return rows, notes


def export_runs(stats: StatsStore, workspace: str, rows: Sequence[Dict[str, Any]], dest: str) -> Dict[str, Any]:
    """Write one event-file folder per run under dest; returns what was written:
    {dest, runs: [{run, folder, points, skipped}], points, skipped}."""
    SummaryWriter = _writer_class()  # before anything is written: a missing extra writes nothing
    root = check_dest(dest)
    history = run_reports.metric_history(stats, workspace, [row["name"] for row in rows])
    earlier = {row["name"]: _earlier_folders(root, row["name"]) for row in rows}
    for folder in (folder for folders in earlier.values() for folder in folders):
        if not _ours(folder):
            raise TensorBoardError(f"--dest: {folder} holds more than event files; not replacing it "
                                   f"(move it away, or export to another folder)")
    swept = swept_hparams(rows)
    points_of = {row["name"]: scalar_points(history.get(row["name"], []), _run_time(row)) for row in rows}

    root.mkdir(parents=True, exist_ok=True)
    written = []
    for row in rows:
        run = row["name"]
        points, skipped = points_of[run]
        name = folder_name(row, swept)
        aside = Path(tempfile.mkdtemp(prefix=f".{run}.", suffix=".part", dir=root))
        try:
            writer = SummaryWriter(logdir=str(aside), max_queue=1000, flush_secs=3600)
            try:
                # no experiment summary: without one, TensorBoard builds it from every run's session start
                # (each hparam's type, its values' domain, whether it differs, which its UI shows first) and
                # takes the metrics from the runs' scalars; tensorboardX's own has no domains and no `differs`
                session_start, session_end = _session_summaries(row)
                writer.file_writer.add_summary(session_start, walltime=_run_time(row))
                for tag, value, step, when in points:
                    writer.add_scalar(tag, value, global_step=step, walltime=when)
                if session_end is not None:
                    writer.file_writer.add_summary(session_end, walltime=row["ended"] if _number(row.get("ended"))
                                                   else _run_time(row))
            finally:
                writer.close()
            for folder in earlier[run]:
                shutil.rmtree(folder)
            os.replace(aside, root / name)
        except BaseException:
            shutil.rmtree(aside, ignore_errors=True)
            raise
        written.append({"run": run, "folder": name, "points": len(points), "skipped": skipped})
    return {"dest": str(root), "runs": written, "points": sum(r["points"] for r in written),
            "skipped": sum(r["skipped"] for r in written)}


def export_tensorboard(cfg: xt_config.Config, stats: StatsStore, dest: str, *, names: Sequence[str] = (),
                       jobs: Sequence[str] = (), experiment: Optional[str] = None, status: Optional[str] = None,
                       filters: Sequence[str] = (), first: Optional[int] = None, last: Optional[int] = None,
                       everything: bool = False) -> Dict[str, Any]:
    """`xt export tensorboard`: the runs `xt list runs` would select with these options, as event
    files under dest; returns what was written (and the selection's notes). Bad input writes nothing."""
    _writer_class()
    check_dest(dest)
    rows, notes = select(cfg, stats, names=names, jobs=jobs, experiment=experiment, status=status,
                         filters=filters, first=first, last=last, everything=everything)
    written = export_runs(stats, cfg.general.workspace, rows, dest)
    written["notes"] = notes
    return written


# --- xt view tensorboard ----------------------------------------------------------------------
def tensorboard_program() -> str:
    """The tensorboard executable: the one installed beside this Python (a venv's), else on PATH."""
    beside = Path(sys.executable).parent / ("tensorboard.exe" if os.name == "nt" else "tensorboard")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("tensorboard")
    if not found:
        raise TensorBoardError(NEEDS_VIEWER.format(python=sys.executable))
    return found


def export_dest(dest: Optional[str]) -> Tuple[str, bool]:
    """Where `xt view tensorboard` exports: dest, else a new temporary folder; and whether it is temporary."""
    if dest:
        return dest, False
    return tempfile.mkdtemp(prefix="xt-tensorboard-"), True


class _Terminated(Exception):
    """SIGTERM reached `xt view tensorboard`: TensorBoard must not outlive it."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def serve(program: str, logdir: str, port: int) -> int:
    """Run TensorBoard on logdir in the foreground until it ends, Ctrl-C or SIGTERM; its exit status
    (0 on Ctrl-C, 143 on SIGTERM). TensorBoard is always ended before this returns."""
    in_main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    process = subprocess.Popen([program, "--logdir", logdir, "--port", str(port)])
    try:
        return process.wait()
    except KeyboardInterrupt:
        return 0
    except _Terminated:
        return 128 + signal.SIGTERM
    finally:
        if process.poll() is None:  # a Ctrl-C at a terminal reached it too, a signal to xt alone did not
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def view_tensorboard(cfg: xt_config.Config, stats: StatsStore, *, dest: Optional[str] = None,
                     port: int = DEFAULT_PORT, announce: Callable[[str], None] = print, **selection: Any) -> int:
    """`xt view tensorboard`: export the selection (to dest, else a temporary folder removed after),
    then run TensorBoard on it; returns TensorBoard's exit status. announce: shows a line to the user
    (the notes, then where the files are), before TensorBoard starts."""
    program = tensorboard_program()  # before any export: a missing program writes nothing
    _writer_class("view")
    if dest:
        check_dest(dest)
    rows, notes = select(cfg, stats, verb="view", **selection)
    logdir, temporary = export_dest(dest)
    try:
        written = export_runs(stats, cfg.general.workspace, rows, logdir)
        for note in notes:
            announce(f"xt: note: {note}")
        announce(f"wrote {len(written['runs'])} runs ({written['points']} points) to {logdir}; "
                 f"TensorBoard on http://localhost:{port}/ (Ctrl-C stops it)")
        return serve(program, logdir, port)
    finally:
        if temporary:
            shutil.rmtree(logdir, ignore_errors=True)
