"""Automatic retries of failed runs and the bulk cancel of a large job, on the embedded stores."""
import sqlite3

from support.job_steps import WS, finish, names, submit, task_runs
from support.pipeline import make_code_zip, make_manifest
from xt_submit import handlers
from xt_submit.domain import layout
from xt_submit.domain.messages import CANCELLED, COMPLETED, CancelRequested, JobSubmitted, RunStarted


def test_cancelling_a_large_job_writes_one_file_not_one_per_run_and_reindex_replays_it(parts):
    from xt_submit.handlers.reindex import rebuild_workspace

    key, sha = make_code_zip(parts)
    manifest = make_manifest(key, sha, hp_space={"x": list(range(3000))})
    handlers.dispatch_job(JobSubmitted(submission_id="big", manifest=manifest, submitted_at=100.0), parts.ports)
    handlers.run_started(RunStarted(workspace=WS, job="job1", run="run1.1", node_id="n1", started_at=150.0), parts.ports)
    before = set(parts.ports.storage.list(f"workspaces/{WS}/"))
    ended = handlers.cancel_runs(CancelRequested(workspace=WS, job="job1", requested_at=160.0), parts.ports)
    written = set(parts.ports.storage.list(f"workspaces/{WS}/")) - before
    assert len(ended) == 3000 and written == {layout.cancel_key(WS, "job1", 160.0)}  # one file, not one per run
    assert task_runs(parts) == sorted(f"run1.{k}" for k in range(1, 3001))
    with sqlite3.connect(parts.home / "compute.db") as db:
        assert dict(db.execute("SELECT state, count(*) FROM tasks GROUP BY state")) == {"cancelled": 3000}
    job = parts.ports.stats.get_job(WS, "job1")
    assert job["status"] == CANCELLED and job["counts"] == {CANCELLED: 3000}
    rebuild_workspace(parts.ports, WS)
    rebuilt = parts.ports.stats.list_runs(WS, job="job1")
    assert {(r["status"], r["ended"], r["reason"]) for r in rebuilt} == {(CANCELLED, 160.0, "cancelled by request")}


def test_a_failed_run_is_retried_as_a_new_run_and_the_job_fails_only_on_a_last_attempt(parts):
    submit(parts, hp_space={"x": [1, 2]}, retries=2)
    assert finish(parts, "run1.1", 0.5, status="error") and names(parts) == ["run1.1", "run1.2", "run1.3"]
    handlers.run_finished(finish(parts, "run1.1", 0.5, status="error"), parts.ports)  # redelivered: no second retry
    retry = parts.ports.stats.get_run(WS, "run1.3")
    first = parts.ports.stats.get_run(WS, "run1.1")
    assert (retry["retry_of"], retry["attempt"], retry["hparams"], retry["command"]) == \
        ("run1.1", 2, first["hparams"], first["command"])
    assert task_runs(parts) == ["run1.1", "run1.2", "run1.3"]
    finish(parts, "run1.2", 0.1)
    finish(parts, "run1.3", 0.4)  # the retry succeeds: the job is completed
    job = parts.ports.stats.get_job(WS, "job1")
    assert job["status"] == COMPLETED and job["run_count"] == 3 and job["counts"] == {COMPLETED: 2, "error": 1}


def test_retries_stop_after_the_limit_and_the_job_ends_in_error(parts):
    submit(parts, hp_space={"x": [1]}, retries=1)
    finish(parts, "run1.1", 0.5, status="error")
    finish(parts, "run1.2", 0.5, status="error")  # attempt 2 of 2
    assert names(parts) == ["run1.1", "run1.2"]
    assert parts.ports.stats.get_job(WS, "job1")["status"] == "error"


def test_two_failures_at_once_claim_different_numbers_for_their_retries(parts):
    from xt_submit.handlers.retries import retry_if_failed

    submit(parts, hp_space={"x": [1, 2]}, retries=1)
    for run in ("run1.1", "run1.2"):
        parts.ports.stats.update_run(WS, run, {"status": "error", "ended": 5.0})
    # both handlers read the job before either added its retry (two Functions instances)
    records = [parts.ports.stats.get_run(WS, run) for run in ("run1.1", "run1.2")]
    assert [retry_if_failed(parts.ports, r) for r in records] == ["run1.3", "run1.4"]
    assert [retry_if_failed(parts.ports, r) for r in records] == ["run1.3", "run1.4"]  # redelivered
    assert {r["name"]: r["retry_of"] for r in parts.ports.stats.list_runs(WS, job="job1") if r["retry_of"]} == \
        {"run1.3": "run1.1", "run1.4": "run1.2"}
