"""Early stopping on an Azure Batch target, through the real azure-batch SDK against the Batch
service's transport peer (tests/peers/batch_service.py) and real Blob Storage (Azurite).

Batch's terminate ends a task with no signal it documents, so the stopped run's node may never
report: the run must end as stopped from the policy's decision alone, with its metric history."""
import uuid

import pytest
from test_batch_compute import compute_for, ports_for  # the same target, account and transport

from peers.batch_service import FakeBatchService

from support.pipeline import make_manifest
from xt_submit import handlers
from xt_submit.domain import layout, run_log
from xt_submit.domain.messages import (CANCELLED, COMPLETED, STOPPED, EarlyStopping, JobSubmitted, RunFinished,
                                       RunProgress, RunStarted)
from xt_submit.node_kit import code_archive

WS = "ws1"
POLICY = EarlyStopping(policy="median", delay_evaluation=1, evaluation_interval=1)


@pytest.fixture
def fake():
    return FakeBatchService()


@pytest.fixture
def blob(azurite_connection_string):
    from xt_submit.adapters.storage.blob import BlobStorage

    storage = BlobStorage(f"xt-stop-{uuid.uuid4().hex[:8]}", connection_string=azurite_connection_string)
    storage.ensure_container()
    return storage


def progress(run, reports, at):
    rows, total, best = [], 0.0, float("inf")
    for i, value in enumerate(reports, start=1):
        total, best = total + value, min(best, value)
        rows.append([value, total / i, best])
    return RunProgress(workspace=WS, job="job1", run=run, node_id="tvm-1", at=at, log_bytes=100 * len(reports),
                       metrics={"loss": reports[-1]}, first_report=1, primary=rows)


def submit(ports, tmp_path, **manifest_fields):
    """A job of the script's snapshot on the Batch target `gpu`, dispatched."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text("print('hi')\n")
    snap = code_archive.snapshot_code(["."], str(src))
    ports.storage.write(layout.code_key(snap.sha256), snap.data)
    manifest = make_manifest(layout.code_key(snap.sha256), snap.sha256, target="gpu", **manifest_fields)
    handlers.dispatch_job(JobSubmitted(submission_id="sub-1", manifest=manifest, submitted_at=1.0), ports)


def ship_log(storage, run, losses):
    """What the node's wrapper has shipped of the run log while it ran."""
    key = layout.run_log_key(WS, run)
    storage.create_log(key, run_log.record(100.0, "hparams", {"x": 1}))
    for step, loss in enumerate(losses, start=1):
        storage.append(key, run_log.record(100.0 + step, "metrics", {"step": step, "loss": loss}))


def test_a_stopped_batch_run_ends_as_stopped_without_its_nodes_report(fake, blob, tmp_path):
    compute = compute_for(fake, blob, tmp_path)
    ports = ports_for(compute, blob, tmp_path)
    submit(ports, tmp_path, hp_space={"x": [1, 2, 3]}, concurrent=3, early_stopping=POLICY)
    for run in ("run1.1", "run1.2", "run1.3"):
        fake.start("xt-ws1-job1", run.replace(".", "-"))
        handlers.run_started(RunStarted(workspace=WS, job="job1", run=run, node_id="tvm-1", started_at=150.0), ports)
    ship_log(blob, "run1.3", [0.9, 0.8, 0.8])

    assert handlers.run_progress(progress("run1.1", [0.5, 0.3, 0.2], 160.0), ports) == ""
    assert handlers.run_progress(progress("run1.2", [0.5, 0.35, 0.25], 160.0), ports) == ""
    reason = handlers.run_progress(progress("run1.3", [0.9, 0.8, 0.8], 161.0), ports)
    assert reason.startswith("early-stopped by the median policy")

    # the task is terminated on Batch, and the run has ended: no heartbeat timeout will turn it into an error
    assert [r[2] for r in fake.calls("POST", r"/jobs/.*/terminate")] == ["/jobs/xt-ws1-job1/tasks/run1-3/terminate"]
    assert fake.tasks["xt-ws1-job1"]["run1-3"]["state"] == "completed"
    run = ports.stats.get_run(WS, "run1.3")
    assert (run["status"], run["reason"], run["ended"]) == (STOPPED, reason, 161.0)
    assert handlers.mark_silent_runs(10_000.0, 60.0, ports) == ["run1.1", "run1.2"]  # only the live ones
    assert ports.stats.get_run(WS, "run1.3")["status"] == STOPPED
    # its metrics are kept: the history it shipped before the kill is in the index, and in run_stats.json
    assert [(row["step"], row["name"], row["value"]) for row in ports.stats.get_metrics(WS, "run1.3")] == [
        (1, "loss", 0.9), (2, "loss", 0.8), (3, "loss", 0.8)]
    assert b'"status":"stopped"' in blob.read(layout.run_stats_key(WS, "run1.3"))

    # a later progress report still in flight asks Batch again (a completed task: nothing to terminate)
    handlers.run_progress(progress("run1.3", [0.9, 0.8, 0.8], 162.0), ports)
    assert len(fake.calls("POST", r"/jobs/.*/terminate")) == 1
    # if the node does report after all, the run stays stopped and gains its exit code
    handlers.run_finished(RunFinished(workspace=WS, job="job1", run="run1.3", node_id="tvm-1", status=CANCELLED,
                                      exit_code=-15, started_at=150.0, ended_at=163.0, metrics={"loss": 0.8}), ports)
    run = ports.stats.get_run(WS, "run1.3")
    assert (run["status"], run["reason"], run["exit_code"]) == (STOPPED, reason, -15)


def test_the_job_ends_when_its_other_runs_finish_with_the_stopped_one_counted(fake, blob, tmp_path):
    compute = compute_for(fake, blob, tmp_path)
    ports = ports_for(compute, blob, tmp_path)
    submit(ports, tmp_path, hp_space={"x": [1, 2, 3]}, concurrent=3, early_stopping=POLICY)
    for run in ("run1.1", "run1.2", "run1.3"):
        handlers.run_started(RunStarted(workspace=WS, job="job1", run=run, node_id="tvm-1", started_at=150.0), ports)
    handlers.run_progress(progress("run1.1", [0.5, 0.3, 0.2], 160.0), ports)
    handlers.run_progress(progress("run1.2", [0.5, 0.35, 0.25], 160.0), ports)
    assert handlers.run_progress(progress("run1.3", [0.9, 0.8, 0.8], 161.0), ports)
    for run in ("run1.1", "run1.2"):
        handlers.run_finished(RunFinished(workspace=WS, job="job1", run=run, node_id="tvm-1", status=COMPLETED,
                                          exit_code=0, started_at=150.0, ended_at=170.0, metrics={"loss": 0.2}), ports)
    job = ports.stats.get_job(WS, "job1")
    assert job["status"] == COMPLETED and job["counts"] == {STOPPED: 1, COMPLETED: 2}


def test_a_cancelled_batch_run_keeps_the_metric_history_it_shipped(fake, blob, tmp_path):
    from xt_submit.domain.messages import CancelRequested

    compute = compute_for(fake, blob, tmp_path)
    ports = ports_for(compute, blob, tmp_path)
    submit(ports, tmp_path, hp_space={"x": [1, 2]}, concurrent=2)
    fake.start("xt-ws1-job1", "run1-1")
    handlers.run_started(RunStarted(workspace=WS, job="job1", run="run1.1", node_id="tvm-1", started_at=150.0), ports)
    ship_log(blob, "run1.1", [0.7, 0.6])

    handlers.cancel_runs(CancelRequested(workspace=WS, job="job1", requested_at=170.0), ports)
    assert {r["name"]: r["status"] for r in ports.stats.list_runs(WS, job="job1")} == {"run1.1": CANCELLED,
                                                                                      "run1.2": CANCELLED}
    assert [(row["step"], row["value"]) for row in ports.stats.get_metrics(WS, "run1.1")] == [(1, 0.7), (2, 0.6)]
    assert ports.stats.get_metrics(WS, "run1.2") == []  # never started: nothing to read
