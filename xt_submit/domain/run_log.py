"""The run log format: JSON lines of {"time", "event", "data"}.

Events: created, queued, started, hparams, metrics, checkpoint, ended. The same format is written
by the Run API inside the training script, by the run wrapper and by the handlers.
"""
from __future__ import annotations

from math import isfinite
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import msgspec

from xt_submit.domain.messages import INT64_MAX, INT64_MIN, storable

_encoder = msgspec.json.Encoder()


def record(time: float, event: str, data: Dict[str, Any]) -> bytes:
    return _encoder.encode({"time": time, "event": event, "data": data}) + b"\n"


class MetricRow(NamedTuple):
    """One logged value: a tuple, so a million of them stay small on the way to a bulk insert."""

    step: Optional[int]
    name: str
    value: Any
    time: Optional[float]


_RECORD_START = b'{"time":'


def iter_records(blob: bytes) -> Iterator[Dict[str, Any]]:
    """Every well-formed record; a torn or foreign line (a crash mid-write) is skipped, never fatal.
    A record appended after a torn one shares its line: it is read from where it starts."""
    decode = msgspec.json.Decoder().decode
    for line in blob.splitlines():
        try:
            entry = decode(line)
        except msgspec.DecodeError:
            start = line.rfind(_RECORD_START, 1)
            try:
                entry = decode(line[start:]) if start > 0 else None
            except msgspec.DecodeError:
                continue
        if isinstance(entry, dict) and isinstance(entry.get("event"), str) and isinstance(entry.get("data"), dict):
            yield entry


def parse(blob: bytes) -> List[Dict[str, Any]]:
    return list(iter_records(blob))


def _whole(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX else None


def summarize(records: Iterable[Dict[str, Any]]) -> Tuple[Dict[str, Any], Dict[str, Any], List[MetricRow]]:
    """(hparams, last value of each metric, metric rows) of a run log, each value as every store
    keeps it (messages.storable: a whole number outside int64 as a float, non-finite as None)."""
    hparams: Dict[str, Any] = {}
    last_metrics: Dict[str, Any] = {}
    rows: List[MetricRow] = []
    step_name = "step"
    for entry in records:
        event, data = entry["event"], entry["data"]
        if event == "created":
            step_name = data.get("step_name", step_name)
        elif event == "hparams":
            hparams.update(storable(data))
        elif event == "metrics":
            step_key = data.get("__step_name__", step_name)
            step = _whole(data.get(step_key, data.get("__index__")))
            time = entry.get("time")
            if not (type(time) is float or _whole(time) is not None):
                time = None
            for name, value in data.items():
                if name.startswith("__") or name == step_key:
                    continue
                kind = type(value)  # the hot loop of an ingest: storable() only for what it changes
                if kind is float:
                    if not isfinite(value):
                        value = None
                elif kind is int:
                    if not INT64_MIN <= value <= INT64_MAX:
                        value = storable(value)
                elif not (kind is str or kind is bool or value is None):
                    continue
                last_metrics[name] = value
                rows.append(MetricRow(step, name, value, time))
    return hparams, last_metrics, rows
