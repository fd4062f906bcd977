"""Local state lost or corrupt (issue 16, class 2), through the real CLI, host and runs on the
embedded default: a deleted stats.db, a truncated or garbled stats.db, queue.db or compute.db, a
corrupt stored code snapshot. Each command after the damage says what happened in one line, and
works; no job name is reused and nothing stored is overwritten."""
import hashlib
import json
import os

import pytest

SCRIPT = """
import sys
from xt_submit import Run
lr = float(sys.argv[1].split("=")[1]) if len(sys.argv) > 1 else 0.1
run = Run()
run.log_hparams({"lr": lr})
run.log_metrics({"step": 1, "loss": lr * 10})
"""
CORRUPTIONS = {
    "garbage": lambda path: path.write_bytes(b"not a database at all " * 300),
    "truncated to 100 bytes": lambda path: os.truncate(path, 100),
}


def _manifest(project, job):
    return (project.home / "storage" / "workspaces" / "ws1" / "jobs" / job / "xt_manifest.json").read_bytes()


def _done(project, *args):
    (project.code / "fit.py").write_text(SCRIPT)
    out = project.json("run", "--wait", "fit.py", *args)
    assert out["status"] == "completed", out
    return out["job"]


def test_deleting_stats_db_between_submissions_never_reuses_a_job_name(project, reliability):
    first = _done(project, "--lr=0.1")
    kept = _manifest(project, first)
    (first_run,) = project.json("list", "runs")
    os.unlink(project.home / "stats.db")  # the host may still be serving, holding the old file open
    second = _done(project, "--lr=0.2")
    assert (first, second) == ("job1", "job2")
    assert _manifest(project, first) == kept
    assert [j["name"] for j in project.json("list", "jobs")] == ["job1", "job2"]
    runs = {r["name"]: r for r in project.json("list", "runs")}
    assert runs["run1.1"]["status"] == "completed" and runs["run1.1"]["metrics"] == first_run["metrics"]
    assert runs["run2.1"]["hparams"]["lr"] == 0.2
    reliability.add("local state: stats.db deleted between two submissions (names from storage)", submissions=2,
                    names_reused=0, manifests_overwritten=0)


@pytest.mark.parametrize("db", ["stats.db", "queue.db", "compute.db"])
def test_a_truncated_or_garbled_local_db_is_reported_rebuilt_and_works(project, db, reliability):
    jobs = [_done(project)]
    for corrupt in CORRUPTIONS.values():
        project.stop_host()
        corrupt(project.home / db)
        listed = project.xt("list", "runs", "--json")
        assert "Traceback" not in listed.stderr and db in listed.stderr, listed.stderr
        (notice,) = listed.stderr.splitlines()  # one line, naming the file, what happened and what was done
        assert "moved aside to" in notice and "expected" in notice
        if db == "stats.db":  # rebuilt from storage: every earlier run is still listed
            assert "rebuilt the index from storage" in notice
        assert [r["job"] for r in json.loads(listed.stdout)] == jobs
        jobs.append(_done(project))
    assert jobs == ["job1", "job2", "job3"]
    assert [j["name"] for j in project.json("list", "jobs")] == jobs
    assert len(list(project.home.glob(f"{db}.corrupt-*[0-9]"))) == 2  # kept aside, for a look
    reliability.add(f"local state: {db} garbled / truncated with the host stopped: one-line notice, recreated",
                    files_corrupted=2, commands_locked_out=0, jobs_lost=0)


def test_a_corrupt_stored_code_snapshot_is_uploaded_again_by_the_next_submit(project, reliability):
    _done(project)
    (zip_path,) = (project.home / "storage" / "code").glob("*.zip")
    zip_path.write_bytes(zip_path.read_bytes()[:200])  # torn
    _done(project)
    assert hashlib.sha256(zip_path.read_bytes()).hexdigest() == zip_path.stem
    reliability.add("local state: stored code snapshot torn: hash checked on reuse, uploaded again",
                    snapshots_corrupted=1, runs_failed=0)
