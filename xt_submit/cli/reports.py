"""Turning job and run records into what `xt list` / `xt view` print: JSON objects, aligned tables, CSV."""
from __future__ import annotations

import os
import re
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import msgspec

from xt_submit.domain.errors import OneLineError
from xt_submit.domain.messages import TERMINAL_STATUSES
from xt_submit.domain.records import JOB_FIELDS, RUN_FIELDS
from xt_submit.services.run_reports import JOB_DERIVED, job_counts, job_json, lookup, sort_records  # noqa: F401 (used here and by the commands)

TIME_COLUMNS = frozenset({"created", "queued", "started", "ended"})
SECONDS_FIELDS = frozenset({"duration", "elapsed", "max_time"})  # shown with their unit
_SPEC = re.compile(r"^([A-Za-z_][\w.\-*/]*)(?:=([^:]+))?(?::(.+))?$")


class ReportError(OneLineError):
    pass


class Column(msgspec.Struct, frozen=True):  # not a dataclass: a struct's class costs start-up far less
    key: str  # a field, metrics.NAME, hparams.NAME or tags.NAME
    header: str
    fmt: Optional[str] = None


# --- columns ----------------------------------------------------------------------------------
def parse_columns(text: str) -> List[Column]:
    """`col[=Alias][:fmt],...` -> columns; `hparams.*` / `metrics.*` / `tags.*` stand for every name seen."""
    columns = []
    for item in filter(None, (piece.strip() for piece in text.split(","))):
        match = _SPEC.match(item)
        if not match:
            raise ReportError(f"--columns: {item!r}: expected col[=Alias][:fmt]")
        key, alias, fmt = match.groups()
        if fmt:
            try:
                format(1.5, fmt)
            except ValueError:
                raise ReportError(f"--columns: {item!r}: {fmt!r} is not a number format (like .3f or ,d)") from None
        columns.append(Column(key, alias or key.split(".", 1)[-1], fmt))
    return columns


def resolve_columns(specs: Sequence[Column], rows: Sequence[Dict[str, Any]], kind: str) -> List[Column]:
    """Expand wildcards over the rows and refuse columns nothing has (a typo, most likely)."""
    fields = set(RUN_FIELDS) if kind == "runs" else set(JOB_FIELDS) | set(JOB_DERIVED)
    resolved: List[Column] = []
    for spec in specs:
        group, dot, name = spec.key.partition(".")
        if dot and name == "*":
            seen: Dict[str, None] = {}
            for row in rows:
                seen.update(dict.fromkeys((row.get(group) or {}).keys()))
            resolved += [Column(f"{group}.{key}", key, spec.fmt) for key in seen]
        elif spec.key in fields or not rows or any(lookup(row, spec.key) is not None for row in rows) \
                or (dot and group in ("metrics", "hparams", "tags") and any(name in (r.get(group) or {}) for r in rows)):
            resolved.append(spec)
        else:
            raise ReportError(f"--columns: unknown column {spec.key!r} (no {kind} has it)")
    return resolved


def group_rows(rows: Sequence[Dict[str, Any]], column: str) -> List[Tuple[Any, List[Dict[str, Any]]]]:
    groups: Dict[Any, List[Dict[str, Any]]] = {}
    for row in rows:
        value = lookup(row, column)
        groups.setdefault(value if not isinstance(value, (dict, list)) else str(value), []).append(row)
    return list(groups.items())


# --- output -----------------------------------------------------------------------------------
def format_time(value: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def compact(data: Dict[str, Any]) -> str:
    """`k=v k=v` on one line (a run log entry's data); a mapping or list value in brackets, so it stays one."""
    return " ".join(f"{k}={_shown(k, v) or readable(v, nested=True)}" for k, v in data.items() if not k.startswith("__"))


def format_duration(seconds: float) -> str:
    """Seconds with their unit, as a person reads them: `250ms`, `12.3s`, `4m05s`, `1h02m`, `3d04h`."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def readable(value: Any, nested: bool = False) -> str:
    """A value as a person reads it: mappings as `name=value, ...`, lists comma-separated, text bare
    (never Python's `{'x': 1}`); a mapping inside another is in parentheses, so its pairs stay its own."""
    if isinstance(value, dict):
        if not value:
            return "-"
        text = ", ".join(f"{k}={readable(v, nested=True)}" for k, v in value.items())
        return f"({text})" if nested else text
    if isinstance(value, (list, tuple)):
        if not value:
            return "-"
        text = ", ".join(readable(v, nested=True) for v in value)
        return f"[{text}]" if nested else text
    if value is None:
        return "-"
    return str(value)


def _shown(key: str, value: Any) -> Optional[str]:
    """The display of the fields whose meaning is a unit (times, seconds), or None for the others."""
    if not _is_number(value):
        return None
    if key in TIME_COLUMNS:
        return format_time(value)
    if key in SECONDS_FIELDS:
        return format_duration(value)
    return None


def _cell(value: Any, column: Column, precision: int) -> str:
    if value is None:
        return ""
    if column.fmt and _is_number(value):
        return format(value, column.fmt)
    shown = _shown(column.key, value)
    if shown is not None:
        return shown
    if isinstance(value, float):
        return f"{value:.{precision}f}"
    if isinstance(value, (dict, list, tuple)):
        return readable(value) if value else ""
    return str(value)


# --- colour: status words on a terminal only ---------------------------------------------------
STATUS_COLOURS = {"completed": "32", "error": "31", "cancelled": "33", "stopped": "33", "running": "36"}


def colour_on(stream) -> bool:
    """Colour for a person at a terminal; never in a pipe or a file, nor when NO_COLOR is set to
    anything but "" (https://no-color.org) or the terminal is dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def paint_status(text: str, status: Any) -> str:
    """`text` (the status, maybe padded) in the status's colour; other words unchanged."""
    code = STATUS_COLOURS.get(status) if isinstance(status, str) else None
    return f"\x1b[{code}m{text}\x1b[0m" if code else text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(records: Sequence[Dict[str, Any]], columns: Sequence[Column], precision: int = 4,
                 max_width: int = 30, colour: bool = False) -> str:
    """Aligned columns; numbers right-aligned; long cells cut to max_width; with `colour`, status
    words in their colour (added after padding, so the columns stay aligned)."""
    def clip(text: str) -> str:
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[clip(_cell(lookup(r, c.key), c, precision)) for c in columns] for r in records]
    numeric = [bool(records) and all(_is_number(lookup(r, c.key)) or lookup(r, c.key) is None for r in records)
               and c.key not in TIME_COLUMNS for c in columns]
    headers = [clip(c.header) for c in columns]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    painted = [colour and c.key == "status" for c in columns]

    def line(values, statuses=None):
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        if statuses:
            padded = [paint_status(text, status) if paint else text
                      for text, status, paint in zip(padded, statuses, painted)]
        return "  ".join(padded).rstrip()

    body = [line(row, [lookup(r, c.key) for c in columns] if any(painted) else None)
            for row, r in zip(cells, records)]
    return "\n".join([line(headers), line(["-" * w for w in widths])] + body)


def export(rows: Sequence[Dict[str, Any]], columns: Sequence[Column], path: str) -> None:
    """The rows' raw values (not the display formatting) as CSV or TSV, for a spreadsheet or pandas."""
    import csv  # here: only --export writes a file

    from xt_submit.services.local_files import written_aside

    if path.lower().endswith(".csv"):
        delimiter = ","
    elif path.lower().endswith(".tsv"):
        delimiter = "\t"
    else:
        raise ReportError(f"--export: {path!r}: expected a .csv or .tsv file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ReportError(f"--export: {path!r}: expected an existing folder, {folder!r} is not one")
    try:
        with written_aside(path) as aside, open(aside, "w", newline="") as f:
            writer = csv.writer(f, delimiter=delimiter)
            writer.writerow([c.header for c in columns])
            for row in rows:
                writer.writerow(["" if lookup(row, c.key) is None else lookup(row, c.key) for c in columns])
    except OSError as exc:
        raise ReportError(f"--export: {path!r}: {exc.strerror or exc}") from None


def format_fields(record: Dict[str, Any], colour: bool = False) -> str:
    """One `name: value` line per field; with `colour`, the status in its colour."""
    width = max(map(len, record)) if record else 0
    return "\n".join(f"{key:>{width}}: {_field(key, value, colour)}" for key, value in record.items())


def _field(key: str, value: Any, colour: bool = False) -> str:
    shown = _shown(key, value)
    if shown is not None:
        return shown
    if colour and key == "status":
        return paint_status(readable(value), value)
    return readable(value)


def metrics_table(history: Dict[str, List[Dict[str, Any]]], precision: int = 4) -> str:
    """Metric history aligned by step: one row per step, one column per run and metric."""
    series: Dict[str, Dict[Any, Any]] = {}
    for run, rows in history.items():
        for row in rows:
            series.setdefault(f"{run}:{row['name']}", {})[row["step"]] = row["value"]
    steps = sorted({step for values in series.values() for step in values}, key=lambda s: (s is None, s))
    table = [{"step": step, **{name: values.get(step) for name, values in series.items()}} for step in steps]
    return format_table(table, [Column("step", "step")] + [Column(name, name) for name in series], precision, 40)


def job_summary(stats, workspace: str, job: str, now: float) -> Dict[str, Any]:
    """Counts by status, the best run by the job's primary metric, and how long it took."""
    from xt_submit.domain.run_query import Filter, RunQuery, SortKey

    record = stats.get_job(workspace, job)
    metric = record.get("primary_metric") or "loss"
    maximize = bool(record.get("maximize_metric"))
    best = stats.query_runs(RunQuery(workspace=workspace, jobs=(job,), filters=(Filter("metrics", metric, "exists", True),),
                                     sort=SortKey("metrics", metric), reverse=not maximize, last=1))
    started, ended = record.get("started"), record.get("ended")
    summary = job_json(record)
    summary.update(job_counts(record))
    summary["duration"] = round((ended or now) - started, 3) if started else None
    summary["best_run"] = ({"name": best[0]["name"], metric: best[0]["metrics"].get(metric),
                            "hparams": best[0]["hparams"]} if best else None)
    summary["primary_metric"] = f"{metric} ({'max' if maximize else 'min'})"
    summary["done"] = record["status"] in TERMINAL_STATUSES
    if record.get("search"):
        summary["search"] = {**record["search"], "runs": record.get("run_count") or 0}
    if record.get("early_stopping"):
        summary["early_stopping"] = record["early_stopping"]
    return summary


def search_line(search: Dict[str, Any]) -> str:
    """An adaptive job's progress in one line: runs so far of its budget, the best point and metric."""
    line = f"{search['type']} search: {search['runs']} of {search['budget']} runs"
    best = search.get("best")
    if best:
        point = ", ".join(f"{name}={value}" for name, value in best["hparams"].items())
        line += f"; best {best['run']} {best['metric']}={best['value']:.6g} ({point})"
    return line + (f"; ended: {search['ended']}" if search.get("ended") else "; searching")


def policy_line(policy: Dict[str, Any]) -> str:
    knobs = {"bandit": ("slack_factor", "slack_amount"), "median": (), "truncation": ("truncation_percentage",)}
    shown = [f"{name}={policy[name]}" for name in ("delay_evaluation", "evaluation_interval",
                                                   *knobs.get(policy["policy"], ()))]
    return f"{policy['policy']} ({', '.join(shown)})"
