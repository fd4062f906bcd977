"""The run log format: JSON lines of {"time", "event", "data"}.

Events: created, queued, started, hparams, metrics, checkpoint, ended. The same format is written
by the Run API inside the training script, by the run wrapper and by the handlers.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import msgspec

_encoder = msgspec.json.Encoder()


def record(time: float, event: str, data: Dict[str, Any]) -> bytes:
    return _encoder.encode({"time": time, "event": event, "data": data}) + b"\n"


class MetricRow(NamedTuple):
    """One logged value: a tuple, so a million of them stay small on the way to a bulk insert."""

    step: Optional[int]
    name: str
    value: Any
    time: Optional[float]


def iter_records(blob: bytes) -> Iterator[Dict[str, Any]]:
    """Every well-formed record; a torn or foreign line (a crash mid-write) is skipped, never fatal."""
    decode = msgspec.json.Decoder().decode
    for line in blob.splitlines():
        try:
            entry = decode(line)
        except msgspec.DecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("event"), str) and isinstance(entry.get("data"), dict):
            yield entry


def parse(blob: bytes) -> List[Dict[str, Any]]:
    return list(iter_records(blob))


def summarize(records: Iterable[Dict[str, Any]]) -> Tuple[Dict[str, Any], Dict[str, Any], List[MetricRow]]:
    """(hparams, last value of each metric, metric rows) of a run log."""
    hparams: Dict[str, Any] = {}
    last_metrics: Dict[str, Any] = {}
    rows: List[MetricRow] = []
    step_name = "step"
    for entry in records:
        event, data = entry["event"], entry["data"]
        if event == "created":
            step_name = data.get("step_name", step_name)
        elif event == "hparams":
            hparams.update(data)
        elif event == "metrics":
            step_key = data.get("__step_name__", step_name)
            step = data.get(step_key, data.get("__index__"))
            for name, value in data.items():
                if name.startswith("__") or name == step_key:
                    continue
                if isinstance(value, (int, float, str, bool)) or value is None:
                    last_metrics[name] = value
                    rows.append(MetricRow(step if isinstance(step, int) else None, name, value, entry.get("time")))
    return hparams, last_metrics, rows
