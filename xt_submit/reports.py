"""Turning job and run records into what `xt list` / `xt view` print: JSON objects and aligned tables."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence
from xt_submit.errors import OneLineError

RUN_JSON_FIELDS = ("name", "job", "workspace", "experiment", "status", "exit_code", "duration", "hparams", "metrics",
                   "target", "node_id", "reason", "created", "started", "ended", "command", "tags")
JOB_JSON_FIELDS = ("name", "workspace", "experiment", "status", "run_count", "counts", "target", "username",
                   "created", "started", "ended", "command", "tags")


class ReportError(OneLineError):
    pass


def run_json(run: Dict[str, Any]) -> Dict[str, Any]:
    return {field: run.get(field) for field in RUN_JSON_FIELDS}


def job_json(job: Dict[str, Any]) -> Dict[str, Any]:
    return {field: job.get(field) for field in JOB_JSON_FIELDS}


def lookup(record: Dict[str, Any], column: str) -> Any:
    """`metrics.loss`, `hparams.lr`, a record field, or a bare metric / hparam name (XT style)."""
    if "." in column:
        group, _, key = column.partition(".")
        container = record.get(group)
        return container.get(key) if isinstance(container, dict) else None
    if column in record:
        return record[column]
    for group in ("metrics", "hparams"):
        container = record.get(group) or {}
        if column in container:
            return container[column]
    return None


def known_column(records: Sequence[Dict[str, Any]], column: str) -> bool:
    if not records:
        return True
    if "." in column:
        group, _, key = column.partition(".")
        return any(isinstance(r.get(group), dict) and key in r[group] for r in records) or group in ("metrics", "hparams", "tags")
    return any(column in r or column in (r.get("metrics") or {}) or column in (r.get("hparams") or {}) for r in records)


def sort_records(records: List[Dict[str, Any]], column: str, reverse: bool) -> List[Dict[str, Any]]:
    """Stable sort by a column; a missing value orders first (as NULL does in the stats stores)."""
    if not known_column(records, column):
        raise ReportError(f"--sort: unknown column {column!r}")

    def key(record):
        value = lookup(record, column)
        if value is None:
            return (0, 0)
        return (1, float(value)) if isinstance(value, (int, float)) else (2, str(value))

    return sorted(records, key=key, reverse=reverse)


def run_columns(runs: Sequence[Dict[str, Any]]) -> List[str]:
    """Fixed columns, then each hparam and metric seen, in first-seen order."""
    columns = ["name", "job", "status", "exit_code", "duration"]
    for group in ("hparams", "metrics"):
        seen: Dict[str, None] = {}
        for run in runs:
            for key in run.get(group) or {}:
                seen.setdefault(key, None)
        columns += [f"{group}.{key}" for key in seen]
    return columns


def format_table(records: Sequence[Dict[str, Any]], columns: Sequence[str], precision: int = 4,
                 headers: Optional[Sequence[str]] = None) -> str:
    headers = list(headers or [c.split(".", 1)[-1] for c in columns])
    cells = [[_cell(lookup(r, c), precision) for c in columns] for r in records]
    numeric = [all(_is_number(lookup(r, c)) or lookup(r, c) is None for r in records) and bool(records)
               for c in columns]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(row) for row in cells])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any, precision: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{precision}f}"
    return str(value)
