"""A run log is ingested as it is read, piece by piece (Storage.read_chunks ->
run_log.iter_records_from_chunks -> LogSummary.metric_rows -> replace_metrics): wherever the pieces
are cut, it yields exactly what parsing the whole log does, torn and foreign lines included.
Its peak memory is measured by bench/p6_ingest.py."""
from __future__ import annotations

import pytest

from xt_submit.adapters.storage.directory import DirectoryStorage
from xt_submit.domain import run_log
from xt_submit.ports import NotFound, Storage

LOG = b"".join([
    run_log.record(1.0, "created", {"job": "job1", "step_name": "epoch"}),
    run_log.record(1.5, "hparams", {"lr": 0.1, "big": 2**70}),
    run_log.record(2.0, "metrics", {"epoch": 1, "loss": 0.5, "acc": float("nan")}),
    b'{"time": 2.5, "event": "metr',  # torn by a crash: the next record shares its line
    run_log.record(3.0, "metrics", {"epoch": 2, "loss": 0.25, "note": "ok"}),
    b"not json at all\r\n",
    b"\n",
    run_log.record(4.0, "metrics", {"__index__": 3, "loss": 2**64, "epoch": 3}).replace(b"\n", b"\r\n"),
    run_log.record(5.0, "ended", {"status": "completed"}),
    b'{"time": 6.0, "event": "metrics", "data": {"loss": 0.1',  # the torn last line
])


def pieces(data: bytes, size: int):
    return (data[i:i + size] for i in range(0, len(data), size))


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 64, 100, 1000, len(LOG)])
def test_the_pieces_parse_as_the_whole_log_does(size):
    whole = list(run_log.iter_records(LOG))
    assert list(run_log.iter_records_from_chunks(pieces(LOG, size))) == whole
    assert [r["time"] for r in whole] == [1.0, 1.5, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("size", [1, 5, 333, len(LOG)])
def test_the_streamed_summary_is_the_whole_one(size):
    summary = run_log.LogSummary(run_log.iter_records_from_chunks(pieces(LOG, size)))
    rows = list(summary.metric_rows())
    assert (summary.hparams, summary.last_metrics, rows) == run_log.summarize(run_log.iter_records(LOG))
    assert [row.step for row in rows] == [1, 1, 2, 2, 3]  # the step key is the created record's step_name


def test_no_pieces_and_empty_pieces_are_an_empty_log():
    assert list(run_log.iter_records_from_chunks(iter(()))) == []
    assert list(run_log.iter_records_from_chunks([b"", b"", b""])) == []


def test_a_directory_reads_in_pieces_and_a_missing_key_fails_before_the_first(tmp_path, monkeypatch):
    from xt_submit.adapters.storage import directory

    storage = DirectoryStorage(tmp_path)
    storage.write("a/log.jsonl", LOG)
    monkeypatch.setattr(directory, "READ_CHUNK", 10)
    chunks = list(storage.read_chunks("a/log.jsonl"))
    assert b"".join(chunks) == LOG and max(map(len, chunks)) == 10
    with pytest.raises(NotFound):
        storage.read_chunks("a/missing.jsonl")  # raised by the call, not when the pieces are first read


def test_a_storage_without_its_own_pieces_reads_the_key_whole(tmp_path):
    class WholeReads(DirectoryStorage):
        read_chunks = Storage.read_chunks  # the port's default

    storage = WholeReads(tmp_path)
    storage.write("k", LOG)
    assert list(storage.read_chunks("k")) == [LOG]
    with pytest.raises(NotFound):
        storage.read_chunks("missing")
