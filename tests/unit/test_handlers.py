"""Each handler against the real embedded adapters: effects, idempotency, order tolerance."""

import msgspec

from support.zips import zip_bytes
import pytest

from xt_submit import handlers
from support.pipeline import make_code_zip, make_manifest, state_of
from xt_submit.domain import layout, run_log
from xt_submit.domain.messages import (CancelRequested, ContractError, JobSubmitted, RunFinished, RunStarted,
                                UploadReceived, decode_event, encode)


def submit(parts, **overrides):
    key, sha = make_code_zip(parts)
    event = JobSubmitted(submission_id="sub-1", manifest=make_manifest(key, sha, **overrides), submitted_at=1.0)
    return event, handlers.dispatch_job(event, parts.ports)


def finished(run, status="completed", exit_code=0, **extra):
    return RunFinished(workspace="ws1", job=layout.job_of_run(run), run=run, node_id="n1", status=status,
                       exit_code=exit_code, started_at=10.0, ended_at=15.5, **extra)


def started(run):
    return RunStarted(workspace="ws1", job=layout.job_of_run(run), run=run, node_id="n1", started_at=10.0)


def test_dispatch_records_job_runs_storage_and_compute(parts):
    _, result = submit(parts)
    assert result.job == "job1"
    assert result.runs == [f"run1.{k}" for k in range(1, 7)]
    stats = parts.ports.stats
    runs = stats.list_runs("ws1", job="job1")
    assert [r["hparams"] for r in runs][:2] == [{"lr": 0.1, "opt": "sgd"}, {"lr": 0.1, "opt": "adam"}]
    assert runs[0]["command"] == "python train.py --lr=0.1 --opt=sgd"
    assert {r["status"] for r in runs} == {"queued"}
    assert stats.get_job("ws1", "job1")["run_count"] == 6
    (created,) = run_log.parse(parts.ports.storage.read(layout.job_log_key("ws1", "job1")))
    assert created["event"] == "created" and len(created["data"]["runs"]) == 6
    assert created["data"]["runs"][0] == {"name": "run1.1", "command": "python train.py --lr=0.1 --opt=sgd",
                                          "hparams": {"lr": 0.1, "opt": "sgd"}}
    assert len(parts.compute.launchable(100)) == 2  # concurrent=2 for the job


def test_dispatch_twice_is_one_job(parts):
    event, _ = submit(parts)
    before = state_of(parts)
    again = handlers.dispatch_job(event, parts.ports)
    assert again.job == "job1"
    assert state_of(parts) == before


def test_job_numbers_are_per_workspace_and_sequential(parts):
    key, sha = make_code_zip(parts)
    names = [handlers.dispatch_job(JobSubmitted(submission_id=f"s{i}", manifest=make_manifest(key, sha, workspace=ws),
                                                submitted_at=1.0), parts.ports).job
             for i, ws in enumerate(["ws1", "ws1", "ws2", "ws1"])]
    assert names == ["job1", "job2", "job1", "job3"]


def test_dispatch_rejects_missing_code_and_bad_space(parts):
    key, sha = make_code_zip(parts)
    with pytest.raises(ContractError, match="code_key: code/nothere.zip not found"):
        handlers.dispatch_job(JobSubmitted(submission_id="x", manifest=make_manifest("code/nothere.zip", sha),
                                           submitted_at=1.0), parts.ports)
    with pytest.raises(ContractError, match="lr"):
        handlers.dispatch_job(JobSubmitted(submission_id="y", manifest=make_manifest(key, sha, hp_space={"lr": []}),
                                           submitted_at=1.0), parts.ports)
    with pytest.raises(ContractError, match="workspace"):
        handlers.dispatch_job(JobSubmitted(submission_id="z", manifest=make_manifest(key, sha, workspace="../etc"),
                                           submitted_at=1.0), parts.ports)
    assert parts.ports.stats.list_jobs("ws1") == []  # nothing half-recorded


def test_run_finished_collects_metrics_outputs_and_closes_job(parts):
    submit(parts, hp_space={"lr": [0.1, 0.2]})
    storage = parts.ports.storage
    for run in ("run1.1", "run1.2"):
        storage.append(layout.run_log_key("ws1", run), run_log.record(11.0, "metrics", {"step": 1, "loss": 0.5, "__index__": 1})
                       + run_log.record(12.0, "metrics", {"step": 2, "loss": 0.25, "__index__": 2}))
        storage.write(layout.output_prefix("ws1", run) + "model.txt", b"weights")
        handlers.run_started(started(run), parts.ports)
    assert parts.ports.stats.get_job("ws1", "job1")["status"] == "running"
    handlers.run_finished(finished("run1.1"), parts.ports)
    assert parts.ports.stats.get_job("ws1", "job1")["status"] == "running"
    handlers.run_finished(finished("run1.2", status="error", exit_code=3), parts.ports)

    run = parts.ports.stats.get_run("ws1", "run1.1")
    assert run["status"] == "completed" and run["exit_code"] == 0 and run["duration"] == 5.5
    assert run["metrics"] == {"loss": 0.25}
    assert [(m["step"], m["value"]) for m in parts.ports.stats.get_metrics("ws1", "run1.1")] == [(1, 0.5), (2, 0.25)]
    stats_file = msgspec.json.decode(storage.read(layout.run_stats_key("ws1", "run1.1")))
    assert stats_file["outputs"] == ["model.txt"] and stats_file["metrics"] == {"loss": 0.25}
    job = parts.ports.stats.get_job("ws1", "job1")
    assert job["status"] == "error" and job["counts"] == {"completed": 1, "error": 1} and job["ended"] == 15.5


def test_finish_twice_and_start_after_finish_change_nothing(parts):
    submit(parts)
    handlers.run_finished(finished("run1.1"), parts.ports)
    before = state_of(parts)
    handlers.run_finished(finished("run1.1"), parts.ports)
    handlers.run_started(started("run1.1"), parts.ports)
    assert state_of(parts) == before
    assert parts.ports.stats.get_run("ws1", "run1.1")["status"] == "completed"


def test_cancel_job_ends_unstarted_runs_and_skips_finished(parts):
    submit(parts)
    for task in parts.compute.launchable(2):  # the executor takes run1.1 and run1.2
        assert parts.compute.claim(task)
    handlers.run_started(started("run1.2"), parts.ports)
    handlers.run_finished(finished("run1.1"), parts.ports)
    cancel = CancelRequested(workspace="ws1", job="job1", requested_at=20.0)
    ended = handlers.cancel_runs(cancel, parts.ports)
    assert ended == [f"run1.{k}" for k in range(2, 7)]
    before = state_of(parts)
    assert handlers.cancel_runs(cancel, parts.ports) == []
    assert state_of(parts) == before
    assert parts.ports.stats.get_run("ws1", "run1.1")["status"] == "completed"
    assert parts.compute.launchable(100) == []  # queued tasks will never launch
    # the running run's node reports its cancel: the job closes as cancelled
    handlers.run_finished(finished("run1.2", status="cancelled", exit_code=-15), parts.ports)
    assert parts.ports.stats.get_job("ws1", "job1")["status"] == "cancelled"


def _upload_zip(files):
    return zip_bytes(files)


def test_upload_becomes_a_job_submission_once(parts):
    manifest = {"workspace": "ws1", "experiment": "exp1", "script": "train.py", "command": "python train.py",
                "hp_space": {"lr": [0.1, 0.2]}}
    parts.ports.storage.write("uploads/drop1.zip", _upload_zip({"xt_manifest.json": msgspec.json.encode(manifest),
                                                                "train.py": b"print(1)\n"}))
    event = UploadReceived(upload_key="uploads/drop1.zip", received_at=5.0)
    first = handlers.accept_upload(event, parts.ports)
    second = handlers.accept_upload(event, parts.ports)
    assert first.submission_id == second.submission_id
    assert parts.ports.storage.exists(first.manifest.code_key)
    sent = [decode_event(m["body"]) for m in parts.queue.peek("jobs")]
    assert len(sent) == 2 and sent[0] == first
    assert handlers.dispatch_job(first, parts.ports).job == handlers.dispatch_job(second, parts.ports).job


@pytest.mark.parametrize("files,expected", [
    ({"train.py": b"x"}, "no xt_manifest.json"),
    ({"xt_manifest.json": b"{}"}, "xt_manifest.json: workspace: required field missing"),
    ({"xt_manifest.json": b'{"workspace": 3}'}, "workspace: expected str, got int"),
    ({"../evil.py": b"x", "xt_manifest.json": b"{}"}, "path escapes"),
])
def test_bad_uploads_are_rejected_with_a_reason(parts, files, expected):
    parts.ports.storage.write("uploads/bad.zip", _upload_zip(files))
    with pytest.raises(ContractError, match=expected):
        handlers.accept_upload(UploadReceived(upload_key="uploads/bad.zip", received_at=1.0), parts.ports)
    assert parts.queue.peek("jobs") == []


def test_not_a_zip_upload(parts):
    parts.ports.storage.write("uploads/x.zip", b"not a zip")
    with pytest.raises(ContractError, match="uploads/x.zip: not a zip file"):
        handlers.accept_upload(UploadReceived(upload_key="uploads/x.zip", received_at=1.0), parts.ports)


def test_messages_decode_strictly():
    good = encode(started("run1.1"))
    assert decode_event(good) == started("run1.1")
    with pytest.raises(ContractError, match="unknown field"):
        decode_event(good[:-1] + b',"extra":1}')
    with pytest.raises(ContractError, match="version: expected 1, got 2"):
        decode_event(good.replace(b'"version":1', b'"version":2') if b'"version":1' in good else
                     good[:-1] + b',"version":2}')


def preempted(run, preemptions=1, retries=2, requeued_at=12.0):
    from xt_submit.domain.messages import RunPreempted

    return RunPreempted(workspace="ws1", job=layout.job_of_run(run), run=run, node_id="n1", preemptions=preemptions,
                        retries=retries, requeued_at=requeued_at)


def test_preemption_requeues_then_the_run_starts_again(parts):
    submit(parts)
    handlers.run_started(started("run1.1"), parts.ports)
    assert handlers.run_preempted(preempted("run1.1"), parts.ports)
    run = parts.ports.stats.get_run("ws1", "run1.1")
    assert run["status"] == "preempted" and run["reason"] == "node n1 preempted: requeued (1 of 2 preemption-retries)"
    assert parts.ports.stats.get_job("ws1", "job1")["status"] == "running"  # preempted is not an end
    before = state_of(parts)
    assert not handlers.run_preempted(preempted("run1.1"), parts.ports)  # the periodic check repeats itself
    assert state_of(parts) == before
    # the requeued task starts on another node; a late copy of the preemption report changes nothing
    handlers.run_started(RunStarted(workspace="ws1", job="job1", run="run1.1", node_id="n2", started_at=20.0),
                         parts.ports)
    assert parts.ports.stats.get_run("ws1", "run1.1")["status"] == "running"
    assert not handlers.run_preempted(preempted("run1.1"), parts.ports)
    assert parts.ports.stats.get_run("ws1", "run1.1")["status"] == "running"
    handlers.run_finished(finished("run1.1"), parts.ports)
    assert not handlers.run_preempted(preempted("run1.1", preemptions=2, requeued_at=30.0), parts.ports)
    assert parts.ports.stats.get_run("ws1", "run1.1")["status"] == "completed"


def test_preemption_beyond_the_retries_ends_the_run_as_an_error(parts):
    submit(parts, hp_space={"lr": [0.1]})
    handlers.run_preempted(preempted("run1.1", preemptions=1, retries=1), parts.ports)
    assert handlers.run_preempted(preempted("run1.1", preemptions=2, retries=1, requeued_at=40.0), parts.ports)
    run = parts.ports.stats.get_run("ws1", "run1.1")
    assert run["status"] == "error" and run["ended"] == 40.0
    assert run["reason"] == "node n1 preempted: 2 preemptions, more than preemption-retries (1)"
    assert parts.ports.stats.get_job("ws1", "job1")["status"] == "error"
    stats_file = msgspec.json.decode(parts.ports.storage.read(layout.run_stats_key("ws1", "run1.1")))
    assert stats_file["status"] == "error"
    before = state_of(parts)
    assert not handlers.run_preempted(preempted("run1.1", preemptions=2, retries=1, requeued_at=40.0), parts.ports)
    assert state_of(parts) == before


def test_a_preempted_run_can_be_cancelled_and_the_event_routes(parts):
    from xt_submit.domain.messages import RunPreempted

    submit(parts, hp_space={"lr": [0.1]})
    handlers.run_preempted(preempted("run1.1"), parts.ports)
    assert handlers.cancel_runs(CancelRequested(workspace="ws1", job="job1", requested_at=20.0), parts.ports) == ["run1.1"]
    assert parts.ports.stats.get_job("ws1", "job1")["status"] == "cancelled"
    assert handlers.ON_EVENTS_QUEUE[RunPreempted] is handlers.run_preempted
    assert decode_event(encode(preempted("run1.1"))) == preempted("run1.1")
