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
    return _decoded(blob.splitlines())


def iter_records_from_chunks(chunks: Iterable[bytes]) -> Iterator[Dict[str, Any]]:
    """iter_records over a log arriving in pieces (Storage.read_chunks): only one piece and the
    line it cuts are held at a time, whatever the log's size."""
    cut: List[bytes] = []  # the start of a line that continues in the next piece
    for chunk in chunks:
        end = chunk.rfind(b"\n")
        if end < 0:
            cut.append(chunk)
            continue
        head = b"".join(cut) + chunk[:end] if cut else chunk[:end]
        cut = [chunk[end + 1:]]
        yield from _decoded(head.splitlines())
    tail = b"".join(cut)
    if tail:
        yield from _decoded(tail.splitlines())


def _decoded(lines: Iterable[bytes]) -> Iterator[Dict[str, Any]]:
    decode = msgspec.json.Decoder().decode
    for line in lines:
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
    summary = LogSummary(records)
    rows = list(summary.metric_rows())
    return summary.hparams, summary.last_metrics, rows


class LogSummary:
    """summarize() for a log too large to hold: metric_rows() yields the rows one at a time (to a
    bulk write), and hparams and last_metrics are complete once it is exhausted."""

    def __init__(self, records: Iterable[Dict[str, Any]]) -> None:
        self._records = records
        self.hparams: Dict[str, Any] = {}
        self.last_metrics: Dict[str, Any] = {}

    def metric_rows(self) -> Iterator[MetricRow]:
        hparams, last_metrics = self.hparams, self.last_metrics
        step_name = "step"
        for entry in self._records:
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
                    yield MetricRow(step, name, value, time)
