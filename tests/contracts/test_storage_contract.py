"""The storage port: one suite, run against every adapter (a directory tree, and Blob Storage on Azurite)."""
import itertools
import threading

import pytest

from xt_submit.adapters.storage.blob import BlobStorage
from xt_submit.adapters.storage.directory import DirectoryStorage, StorageKeyError
from xt_submit.ports import NotFound

_containers = itertools.count()


@pytest.fixture(params=["directory", "blob"])
def storage(request, tmp_path):
    if request.param == "directory":
        return DirectoryStorage(tmp_path / "storage")
    blob = BlobStorage(f"xt-contract-{next(_containers)}",
                       connection_string=request.getfixturevalue("azurite_connection_string"))
    blob.ensure_container()
    return blob


def test_write_read_overwrite_and_create_if_absent(storage):
    assert storage.write("a/b.txt", b"one")
    assert storage.read("a/b.txt") == b"one"
    assert storage.write("a/b.txt", b"two")
    assert not storage.write("a/b.txt", b"three", overwrite=False)
    assert storage.read("a/b.txt") == b"two"
    assert storage.exists("a/b.txt") and not storage.exists("a/c.txt")
    with pytest.raises(NotFound, match="storage: no such key a/c.txt"):
        storage.read("a/c.txt")
    storage.delete("a/b.txt")
    storage.delete("a/b.txt")  # deleting twice is fine
    assert not storage.exists("a/b.txt")


def test_a_signature_changes_with_every_write_and_not_with_reads(storage):
    assert storage.signature("code/none.zip") is None
    storage.write("code/a.zip", b"snapshot")
    first = storage.signature("code/a.zip")
    assert first and storage.read("code/a.zip") == b"snapshot"
    assert storage.signature("code/a.zip") == first
    storage.write("code/a.zip", b"snapshot")  # the same bytes again: still another write
    second = storage.signature("code/a.zip")
    assert second and second != first
    storage.create_log("runs/r/log.jsonl", b"opening\n")
    opened = storage.signature("runs/r/log.jsonl")
    storage.append("runs/r/log.jsonl", b"more\n")
    assert storage.signature("runs/r/log.jsonl") not in (None, opened)


def test_a_key_reads_in_pieces_as_it_reads_whole(storage):
    data = bytes(range(256)) * 20_000  # 5 MB: more than one piece of any storage
    storage.write("runs/r/big.bin", data)
    storage.create_log("runs/r/log.jsonl", b"opening\n")
    storage.append("runs/r/log.jsonl", b"second\n")
    assert b"".join(storage.read_chunks("runs/r/big.bin")) == data
    assert b"".join(storage.read_chunks("runs/r/log.jsonl")) == b"opening\nsecond\n"
    with pytest.raises(NotFound, match="storage: no such key runs/r/none"):
        storage.read_chunks("runs/r/none")  # at the call: a missing log is known before any piece


def test_logs_are_created_once_and_appended(storage):
    assert storage.create_log("runs/r/log.jsonl", b"opening\n")
    assert not storage.create_log("runs/r/log.jsonl", b"opening again\n")  # a redelivery
    storage.append("runs/r/log.jsonl", b"started\n")
    storage.append("runs/r/new.jsonl", b"first\n")  # append creates a missing log
    assert storage.read("runs/r/log.jsonl") == b"opening\nstarted\n"
    assert storage.read("runs/r/new.jsonl") == b"first\n"


def test_concurrent_appends_keep_every_record(storage):
    storage.create_log("log.jsonl", b"")
    lines = [f"record {i:04d}\n".encode() for i in range(200)]

    def writer(chunk):
        for line in chunk:
            storage.append("log.jsonl", line)

    threads = [threading.Thread(target=writer, args=(lines[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(storage.read("log.jsonl").splitlines(keepends=True)) == lines


def test_list_by_prefix_and_files(storage, tmp_path):
    for key in ("w/runs/run1.1/a.txt", "w/runs/run1.1/sub/b.txt", "w/runs/run1.10/c.txt", "w/other.txt"):
        storage.write(key, key.encode())
    assert storage.list("w/runs/run1.1/") == ["w/runs/run1.1/a.txt", "w/runs/run1.1/sub/b.txt"]
    assert storage.list("nothing/") == []
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 40_000)  # 10 MB: several chunks
    storage.upload_file("w/big.bin", str(big))
    storage.download_file("w/big.bin", str(tmp_path / "back" / "big.bin"))
    assert (tmp_path / "back" / "big.bin").read_bytes() == big.read_bytes()
    with pytest.raises(NotFound):
        storage.download_file("w/missing.bin", str(tmp_path / "x"))


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../b", "a//b", "a\\\\b", ""])
def test_keys_cannot_escape(storage, key):
    with pytest.raises(StorageKeyError):
        storage.write(key, b"x")


def test_blob_progress_is_reported(azurite_connection_string, tmp_path):
    seen = []
    blob = BlobStorage("xt-progress", connection_string=azurite_connection_string, max_concurrency=2,
                       progress=lambda done, total: seen.append((done, total)))
    blob.ensure_container()
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * (9 * 1024 * 1024))
    blob.upload_file("f.bin", str(path))
    assert seen and seen[-1][0] == 9 * 1024 * 1024


def test_the_pipeline_and_a_real_run_on_blob_storage(tmp_path, azurite_connection_string):
    """Dispatch, a real run through the run wrapper, and its finish, with Blob Storage as the store."""
    import time

    from xt_submit import handlers
    from support.pipeline import make_manifest
    from xt_submit.node_kit import code_archive
    from xt_submit.domain import layout, run_log
    from xt_submit.bootstrap import embedded
    from xt_submit.domain.messages import JobSubmitted, decode_event
    from xt_submit.ports import Ports
    from xt_submit.runtime.wrapper import RunWrapper

    blob = BlobStorage("xt-pipeline", connection_string=azurite_connection_string)
    blob.ensure_container()
    base = embedded(tmp_path / "home")
    ports = Ports(storage=blob, stats=base.ports.stats, compute=base.ports.compute, publisher=base.ports.publisher)
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text("import os\nfrom xt_submit import Run\nr = Run()\nr.log_metrics({'loss': 0.5})\n"
                                  "r.close()\nos.makedirs('output', exist_ok=True)\nopen('output/m.txt', 'w').write('w')\n"
                                  "print('trained')\n")
    snapshot = code_archive.snapshot_code(["."], str(src))
    blob.write(layout.code_key(snapshot.sha256), snapshot.data)
    manifest = make_manifest(layout.code_key(snapshot.sha256), snapshot.sha256, hp_space={"lr": [0.1]})
    handlers.dispatch_job(JobSubmitted(submission_id="s", manifest=manifest, submitted_at=1.0), ports)
    (task,) = base.compute.launchable(10)

    wrapper = RunWrapper(task, tmp_path / "node", blob, base.ports.publisher, node=base.local_node)
    wrapper.start()
    while not wrapper.ended():
        time.sleep(0.05)
    finished = wrapper.finish()
    for message in base.queue.receive("events", max_messages=10):
        event = decode_event(message.body)
        {"RunStarted": handlers.run_started, "RunFinished": handlers.run_finished}[type(event).__name__](event, ports)
    assert finished.status == "completed"
    run = base.ports.stats.get_run("ws1", "run1.1")
    assert run["status"] == "completed" and run["metrics"] == {"loss": 0.5}
    assert blob.read(layout.console_key("ws1", "run1.1")) == b"trained\n"
    assert blob.list(layout.output_prefix("ws1", "run1.1")) == [layout.output_prefix("ws1", "run1.1") + "m.txt"]
    events = [e["event"] for e in run_log.parse(blob.read(layout.run_log_key("ws1", "run1.1")))]
    assert events == ["created", "hparams", "queued", "started", "metrics", "ended"]


def test_a_read_url_reads_one_blob_only_and_expires(azurite_connection_string):
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import BlobClient

    blob = BlobStorage("xt-sas", connection_string=azurite_connection_string)
    blob.ensure_container()
    blob.write("code/abc.zip", b"the code")
    blob.write("code/other.zip", b"not yours")
    url = blob.read_url("code/abc.zip", expiry_seconds=600)
    assert "AccountKey" not in url and "sig=" in url
    assert BlobClient.from_blob_url(url).download_blob().readall() == b"the code"
    with pytest.raises(HttpResponseError):  # the signature names one blob
        BlobClient.from_blob_url(url.replace("code/abc.zip", "code/other.zip")).download_blob().readall()
    with pytest.raises(HttpResponseError):  # read only
        BlobClient.from_blob_url(url).upload_blob(b"tampered", overwrite=True)
    expired = blob.read_url("code/abc.zip", expiry_seconds=-60)
    with pytest.raises(HttpResponseError):
        BlobClient.from_blob_url(expired).download_blob().readall()
