"""Local state lost or corrupt (issue 16, class 2), at the adapter and handler level: a stats index
that lost its jobs never hands out a name storage holds; a corrupt or truncated SQLite file is
moved aside, recreated (the stats index rebuilt from storage) and reported in one line; a stored
code snapshot that is not what its name says is uploaded again."""
import gc
import hashlib
import os

import msgspec
import pytest

from support.pipeline import make_code_zip, make_manifest
from xt_submit import handlers
from xt_submit.adapters.compute.tasks import LocalCompute
from xt_submit.adapters.queue.sqlite import SqliteQueue
from xt_submit.adapters.stats.sqlite import SqliteStats
from xt_submit.adapters.storage.directory import DirectoryStorage
from xt_submit.bootstrap import embedded
from xt_submit.domain import layout
from xt_submit.domain.messages import JobSubmitted, RunTask
from xt_submit.ports import Ports
from xt_submit.services.code_upload import upload_code

CORRUPTIONS = {
    "garbage": lambda path: path.write_bytes(b"this is no database, only words and \x00\xff bytes " * 100),
    "truncated to 100 bytes": lambda path: os.truncate(path, 100),
    "truncated mid-page": lambda path: os.truncate(path, os.path.getsize(path) - 1000),
}


def submit(parts, submission_id, key, sha, **overrides):
    return handlers.dispatch_job(JobSubmitted(submission_id=submission_id, manifest=make_manifest(
        key, sha, hp_space={"lr": [0.1]}, **overrides), submitted_at=1.0), parts.ports)


def test_an_index_that_lost_its_jobs_never_hands_out_a_name_storage_holds(tmp_path, reliability):
    parts = embedded(tmp_path / "home")
    key, sha = make_code_zip(parts)
    first = submit(parts, "sub-a", key, sha, experiment="first")
    manifest_key = layout.manifest_key("ws1", first.job)
    kept = parts.ports.storage.read(manifest_key)
    # The stats store forgets everything (a new, empty index) while storage keeps job1.
    lost = Ports(storage=parts.ports.storage, stats=SqliteStats(str(tmp_path / "empty.db")),
                 compute=parts.ports.compute, publisher=parts.ports.publisher)
    second = handlers.dispatch_job(JobSubmitted(submission_id="sub-b", manifest=make_manifest(
        key, sha, hp_space={"lr": [0.1]}, experiment="second"), submitted_at=2.0), lost)
    assert (first.job, second.job) == ("job1", "job2")
    assert parts.ports.storage.read(manifest_key) == kept  # never overwritten
    assert msgspec.json.decode(parts.ports.storage.read(layout.manifest_key("ws1", "job2")))["experiment"] == "second"
    # A redelivery of either submission comes back to its own name, and the waiting `xt run` finds it.
    again = handlers.dispatch_job(JobSubmitted(submission_id="sub-b", manifest=make_manifest(
        key, sha, hp_space={"lr": [0.1]}, experiment="second"), submitted_at=2.0), lost)
    assert again.job == "job2" and lost.stats.find_job_by_submission("ws1", "sub-b") == "job2"
    assert submit(parts, "sub-a", key, sha, experiment="first").job == "job1"
    assert parts.ports.storage.read(manifest_key) == kept
    # The next new submission skips both names too.
    assert handlers.dispatch_job(JobSubmitted(submission_id="sub-c", manifest=make_manifest(
        key, sha, hp_space={"lr": [0.1]}), submitted_at=3.0), lost).job == "job3"
    reliability.add("local state: stats index lost, names taken from storage (never reused)", submissions=4,
                    names_reused=0, manifests_overwritten=0)


def test_a_manifest_left_without_its_job_log_by_another_submission_is_not_taken(tmp_path):
    parts = embedded(tmp_path / "home")
    key, sha = make_code_zip(parts)
    other = b'{"workspace": "ws1", "a dispatch that crashed": "before its job log"}'
    parts.ports.storage.write(layout.manifest_key("ws1", "job1"), other)
    assert submit(parts, "sub-a", key, sha).job == "job2"
    assert parts.ports.storage.read(layout.manifest_key("ws1", "job1")) == other


def test_a_new_stats_index_is_rebuilt_from_storage_when_opened(tmp_path, capfd):
    parts = embedded(tmp_path / "home")
    key, sha = make_code_zip(parts)
    submit(parts, "sub-a", key, sha)
    submit(parts, "sub-b", key, sha)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{tmp_path}/home/stats.db{suffix}"):
            os.unlink(f"{tmp_path}/home/stats.db{suffix}")
    capfd.readouterr()
    reopened = embedded(tmp_path / "home")
    assert [j["name"] for j in reopened.ports.stats.list_jobs("ws1")] == ["job1", "job2"]
    assert submit(reopened, "sub-c", key, sha).job == "job3"
    (line,) = capfd.readouterr().err.splitlines()
    assert "stats.db" in line and "rebuilt the index from storage: 2 jobs, 2 runs" in line
    # a brand-new home with nothing in storage says nothing
    embedded(tmp_path / "other")
    assert capfd.readouterr().err == ""


def test_a_stats_index_deleted_under_a_running_process_is_reopened(tmp_path, capfd):
    parts = embedded(tmp_path / "home")
    key, sha = make_code_zip(parts)
    submit(parts, "sub-a", key, sha)
    os.unlink(tmp_path / "home" / "stats.db")  # the process keeps its handle on the deleted file
    assert submit(parts, "sub-b", key, sha).job == "job2"
    # what another process (a new `xt list jobs`) reads is the same
    assert [j["name"] for j in SqliteStats(str(tmp_path / "home" / "stats.db")).list_jobs("ws1")] == ["job1", "job2"]


def _open(kind, path, storage_home, notices):
    """The adapter of `kind` on path; the stats index rebuilds from the storage under storage_home."""
    if kind == "queue":
        return SqliteQueue(str(path), notice=notices.append)
    if kind == "compute":
        return LocalCompute(str(path), notice=notices.append)
    storage = DirectoryStorage(storage_home / "storage")

    def rebuild(stats):
        from xt_submit.handlers.reindex import rebuild_workspace

        ports = Ports(storage=storage, stats=stats, compute=LocalCompute(str(storage_home / "compute.db")), publisher=None)
        return f"rebuilt: {rebuild_workspace(ports, 'ws1')['jobs']} jobs" if storage.list("workspaces/") else None
    return SqliteStats(str(path), rebuild=rebuild, notice=notices.append)


def _task(job, run, command="c"):
    return RunTask(workspace="ws1", experiment="e", job=job, run=run, command=command, code_key="code/x.zip",
                   hparams={}, target="local")


def _fill(kind, store):
    """Enough rows for several pages, so damage past the first page hits the tables."""
    if kind == "stats":
        store.insert_runs([{"workspace": "ws1", "name": f"run1.{k}", "job": "job1", "job_number": 1, "run_index": k,
                            "status": "queued", "command": "x" * 500} for k in range(2, 400)])
    elif kind == "queue":
        store.send("jobs", [b"x" * 500] * 400)
    else:
        store.submit([_task("job1", f"run1.{k}", "x" * 500) for k in range(1, 400)])


def _works(kind, store):
    if kind == "stats":
        store.insert_job({"workspace": "ws1", "name": "job9", "number": 9, "status": "queued", "run_count": 1})
        return [j["name"] for j in store.list_jobs("ws1")]
    if kind == "queue":
        store.send("jobs", [b"after"])
        return [m.body for m in store.receive("jobs", 5)]
    store.submit([_task("job9", "run9.1")])
    return [t.run for t in store.launchable(5)]


EXPECTED_AFTER = {"stats": ["job1", "job9"], "queue": [b"after"], "compute": ["run9.1"]}  # stats: job1 from storage


def _setup(tmp_path, kind):
    """(db path, home whose storage holds job1): what the stats index is rebuilt from."""
    home = tmp_path / "home"
    parts = embedded(home)
    key, sha = make_code_zip(parts)
    submit(parts, "sub-a", key, sha)
    return tmp_path / f"{kind}.db", home


def _only_notice(notices, path):
    (line,) = notices
    assert "\n" not in line and line.startswith(f"{path}: ") and "moved aside to" in line and "expected" in line
    return line


@pytest.mark.parametrize("kind", ["stats", "queue", "compute"])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_file_found_at_open_is_moved_aside_recreated_and_reported_in_one_line(tmp_path, kind, corruption,
                                                                                         reliability):
    path, home = _setup(tmp_path, kind)
    notices = []
    store = _open(kind, path, home, notices)
    _fill(kind, store)
    del store  # closed, as by a process that stopped
    gc.collect()
    before = path.read_bytes()
    CORRUPTIONS[corruption](path)
    damaged = path.read_bytes()
    notices.clear()
    assert _works(kind, _open(kind, path, home, notices)) == EXPECTED_AFTER[kind]
    _only_notice(notices, path)
    (aside,) = [p for p in path.parent.iterdir()
                if p.name.startswith(f"{kind}.db.corrupt-") and not p.name.endswith(("-wal", "-shm"))]
    assert aside.read_bytes() == damaged != before
    reliability.add(f"local state: {kind}.db corrupt at open (garbage, truncated): moved aside, recreated, reported",
                    files_corrupted=1, commands_locked_out=0)


@pytest.mark.parametrize("kind", ["stats", "queue", "compute"])
def test_corruption_met_by_a_live_process_is_recovered_where_it_is_met(tmp_path, kind, reliability):
    path, home = _setup(tmp_path, kind)
    notices = []
    store = _open(kind, path, home, notices)
    _fill(kind, store)
    store._file.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself, none in the WAL
    with open(path, "r+b") as f:  # the pages under the open connection turn to garbage
        f.seek(4096)
        f.write(b"\xee" * (os.path.getsize(path) - 4096))
    store._file.conn.execute("PRAGMA shrink_memory")  # nothing cached: the next read meets the damage
    notices.clear()
    assert _works(kind, store) == EXPECTED_AFTER[kind]
    _only_notice(notices, path)
    reliability.add(f"local state: {kind}.db corrupted under a live process: recovered on the next call",
                    files_corrupted=1, commands_locked_out=0)


def test_a_corrupt_stored_code_snapshot_is_uploaded_again(tmp_path, reliability):
    tree = tmp_path / "proj"
    tree.mkdir()
    (tree / "train.py").write_text("print(1)\n")
    storage = DirectoryStorage(tmp_path / "storage")
    key, sha = upload_code(storage, tmp_path, ["."], str(tree), [], 10**9)
    for damage in (b"not a zip", storage.read(key)[:-10]):
        storage.write(key, damage)
        # the tree is unchanged (its fingerprint is cached): the stored bytes are checked all the same
        assert upload_code(storage, tmp_path, ["."], str(tree), [], 10**9) == (key, sha)
        assert hashlib.sha256(storage.read(key)).hexdigest() == sha
    (tmp_path / "snapshot_cache.json").unlink()  # and when the tree is zipped again (no cache)
    storage.write(key, b"torn")
    assert upload_code(storage, tmp_path, ["."], str(tree), [], 10**9) == (key, sha)
    assert hashlib.sha256(storage.read(key)).hexdigest() == sha
    reliability.add("local state: stored code snapshot corrupt: hash checked on reuse, uploaded again",
                    snapshots_corrupted=3, reused_corrupt=0)
