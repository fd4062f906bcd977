"""services/submit.py: a submission waits for its whole job, not for the first record of it."""
import contextlib
import threading
import time

from support.pipeline import make_code_zip, make_manifest
from xt_submit.domain import records
from xt_submit.services import submit


def test_a_submission_waits_until_every_run_of_its_job_is_recorded(parts):
    """The dispatch names the job, records it, then its runs: the runs must all be there when the
    submitter reads them (it used to answer `job1: no runs` for a real sweep)."""
    key, sha = make_code_zip(parts)
    manifest = make_manifest(key, sha, hp_space={"lr": [0.1, 0.2, 0.3]})
    stats = parts.ports.stats
    job = stats.assign_job_name("ws1", "sub-1")
    stats.insert_job(records.new_job(manifest, name=job, number=1, submission_id="sub-1", run_count=3, created=1.0))
    plan = [(f"run1.{k}", f"python train.py --lr={lr}", {"lr": lr}) for k, lr in enumerate([0.1, 0.2, 0.3], start=1)]

    def the_rest_of_the_dispatch():
        time.sleep(0.3)
        stats.insert_runs(records.new_runs(manifest, job=job, number=1, plan=plan[:1], created=1.0))
        time.sleep(0.3)
        stats.insert_runs(records.new_runs(manifest, job=job, number=1, plan=plan, created=1.0))

    dispatcher = threading.Thread(target=the_rest_of_the_dispatch)
    dispatcher.start()
    submission = submit.await_dispatch(parts, "ws1", "sub-1", keep_served=lambda: None, timeout=60)
    dispatcher.join()
    assert submission == submit.Submission("job1", ["run1.1", "run1.2", "run1.3"])


def test_following_a_job_looks_often_only_once_no_run_waits_and_a_run_just_ended(parts, monkeypatch):
    """`xt run --wait` saw a short job's end ~50 ms late on average (a 0.1 s poll): once no run is
    queued it looks 10 ms after a run ended, doubling the pause while none does; with runs queued,
    and when nothing moves, it keeps to the 0.1 s poll (a long run costs a few looks, not 100 a second)."""
    key, sha = make_code_zip(parts)
    manifest = make_manifest(key, sha, hp_space={"lr": [0.1, 0.2]})
    stats = parts.ports.stats
    job = stats.assign_job_name("ws1", "sub-1")
    stats.insert_job(records.new_job(manifest, name=job, number=1, submission_id="sub-1", run_count=2, created=1.0))
    plan = [(f"run1.{k}", f"python train.py --lr={lr}", {"lr": lr}) for k, lr in enumerate([0.1, 0.2], start=1)]
    stats.insert_runs(records.new_runs(manifest, job=job, number=1, plan=plan, created=1.0))
    stats.update_run("ws1", "run1.1", {"status": "running"})
    # what happens during each pause, in turn: the second run starts, the first ends, then nothing
    # for a while, the second ends, the job ends
    script = [lambda: stats.update_run("ws1", "run1.2", {"status": "running"}),
              lambda: stats.update_run("ws1", "run1.1", {"status": "completed"}),
              None, None, None, None, None,
              lambda: stats.update_run("ws1", "run1.2", {"status": "completed"}),
              lambda: stats.update_job("ws1", job, {"status": "completed"})]
    pauses = []

    def sleep(seconds):
        pauses.append(seconds)
        step = script[len(pauses) - 1]
        if step:
            step()

    monkeypatch.setattr(submit.time, "sleep", sleep)  # while a run is queued
    closing = []  # the pauses the queue may cut short (the host handling a message)
    monkeypatch.setattr(parts.queue, "followed",
                        lambda: contextlib.nullcontext(lambda seconds: closing.append(seconds) or sleep(seconds)))
    final = submit.follow(parts, "ws1", job, lambda record: None, keep_served=lambda: None)
    assert final["status"] == "completed" and final["counts"] == {"completed": 2}
    assert pauses == [0.1, 0.1, 0.01, 0.02, 0.04, 0.08, 0.1, 0.1, 0.01]
    assert closing == pauses[1:]  # only the first, with run1.2 queued, is a plain sleep


def test_a_submission_registers_its_target_unless_its_caller_already_did(parts, tmp_path):
    from xt_submit.config import load_config
    from xt_submit.runtime.local_host import LocalHost

    (tmp_path / "xt_config.yaml").write_text("compute-targets: {lab: {service: pool}}\n"
                                             "boxes: {here: {address: localhost, max-runs: 1}}\n")
    cfg = load_config(cwd=tmp_path)
    key, sha = make_code_zip(parts)
    registered = []
    real_register = parts.compute.register_target
    parts.compute.register_target = lambda name, definition: (registered.append(name), real_register(name, definition))
    host, stop = LocalHost(parts), threading.Event()

    def serve():
        while not stop.is_set():
            host.step() or time.sleep(0.01)

    server = threading.Thread(target=serve)
    server.start()
    try:
        for already in (False, True):
            manifest = make_manifest(key, sha, hp_space={}, target="lab")
            submission = submit.submit(parts, manifest, cfg, keep_served=lambda: None, timeout=60, target_registered=already)
            assert len(submission.runs) == 1
    finally:
        stop.set()
        server.join()
    assert registered == ["lab"]  # the first submission's own; the second's caller had registered it
    assert parts.compute.target("lab")["service"] == "pool"
