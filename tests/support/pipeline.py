"""Pipeline state for tests: a code snapshot and a manifest to dispatch, a job's whole lifecycle as
handler steps (with what its nodes write), and a fingerprint of everything recorded."""
import hashlib
import sqlite3

import pytest

from support.faults import InjectedFault, faulty
from xt_submit import handlers
from xt_submit.domain import layout, run_log
from xt_submit.domain.messages import CancelRequested, JobSubmitted, RunFinished, RunHeartbeat, RunProgress, RunStarted

WS = "ws1"


def state_of(parts):
    """Everything the pipeline has recorded: storage bytes, stats rows, compute tasks, queued messages."""
    home = parts.home
    storage = {}
    root = home / "storage"
    for path in sorted(root.rglob("*")):
        if path.is_file():
            storage[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    tables = {}
    for db, names in (("stats.db", ("jobs", "runs", "metrics", "submissions", "job_counters")),
                      ("compute.db", ("tasks",))):
        with sqlite3.connect(home / db) as conn:
            for name in names:
                tables[f"{db}:{name}"] = sorted(map(repr, conn.execute(f"SELECT * FROM {name}").fetchall()))
    with sqlite3.connect(home / "queue.db") as conn:
        tables["queue"] = sorted(map(repr, conn.execute("SELECT queue, body FROM messages").fetchall()))
    return {"storage": storage, "tables": tables}


def make_code_zip(parts, files=None):
    """Store a code snapshot of the given {name: text} files; returns its key."""
    from xt_submit.node_kit import code_archive
    from xt_submit.domain import layout

    src = parts.home.parent / "src"
    src.mkdir(exist_ok=True)
    for name, text in (files or {"train.py": "print('hi')\n"}).items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    snap = code_archive.snapshot_code(["."], str(src))
    key = layout.code_key(snap.sha256)
    parts.ports.storage.write(key, snap.data)
    return key, snap.sha256


def make_manifest(code_key, sha, **overrides):
    from xt_submit.domain.messages import JobManifest

    fields = dict(workspace="ws1", experiment="exp1", script="train.py", command="python train.py",
                  code_key=code_key, code_sha256=sha, hp_space={"lr": [0.1, 0.2, 0.3], "opt": ["sgd", "adam"]},
                  seed=7)
    fields.update(overrides)
    return JobManifest(**fields)


def node_writes(storage, run, *, finished, status="completed", exit_code=0):
    """What a node leaves in storage: the run log (opening, start, metrics, end) and an output."""
    key = layout.run_log_key(WS, run)
    storage.create_log(key, run_log.record(100.0, "created", {"job": "job1", "command": "c", "step_name": "step"})
                       + run_log.record(100.0, "hparams", {"lr": 0.1}) + run_log.record(100.0, "queued", {}))
    storage.append(key, run_log.record(110.0, "started", {"node": "n1"}))
    if finished:
        for step in (1, 2, 3):
            storage.append(key, run_log.record(110.0 + step, "metrics", {"step": step, "loss": 1 / step, "__index__": step}))
        storage.write(layout.output_prefix(WS, run) + "model.txt", f"weights of {run}".encode())
        storage.append(key, run_log.record(120.0, "ended", {"status": status, "exit_code": exit_code, "duration": 10.0,
                                                            "reason": "" if exit_code == 0 else f"exit code {exit_code}"}))


def started(run):
    return RunStarted(workspace=WS, job="job1", run=run, node_id="n1", started_at=110.0)


def finished(run, status="completed", exit_code=0):
    return RunFinished(workspace=WS, job="job1", run=run, node_id="n1", status=status, exit_code=exit_code,
                       started_at=110.0, ended_at=120.0, reason="" if exit_code == 0 else f"exit code {exit_code}",
                       metrics={"loss": 1 / 3})


def lifecycle(parts):
    """A job of three runs: dispatch, two starts, a success, a failure, and a cancel of the rest.
    Each step is (name, node effects or None, handler, event)."""
    key, sha = make_code_zip(parts)
    submitted = JobSubmitted(submission_id="sub-1", manifest=make_manifest(key, sha, hp_space={"lr": [0.1, 0.2, 0.3]}),
                             submitted_at=100.0)
    return [
        ("dispatch", None, handlers.dispatch_job, submitted),
        ("start run1.1", lambda s: node_writes(s, "run1.1", finished=False), handlers.run_started, started("run1.1")),
        ("start run1.2", lambda s: node_writes(s, "run1.2", finished=False), handlers.run_started, started("run1.2")),
        ("heartbeat run1.2", None, handlers.run_heartbeat,
         RunHeartbeat(workspace=WS, job="job1", run="run1.2", node_id="n1", at=115.0)),
        ("progress run1.2", None, handlers.run_progress, live_metrics("run1.2", {"loss": 0.75, "acc": 0.5})),
        ("finish run1.1", lambda s: finish_node(s, "run1.1"), handlers.run_finished, finished("run1.1")),
        ("finish run1.2", lambda s: finish_node(s, "run1.2", "error", 3), handlers.run_finished,
         finished("run1.2", "error", 3)),
        ("cancel job1", None, handlers.cancel_runs, CancelRequested(workspace=WS, job="job1", requested_at=130.0)),
    ]


def live_metrics(run, metrics, log_bytes=300):
    """What a node sends while its run is alive: the latest metrics logged so far (log_bytes: how
    much of its run log it had shipped; a later report has more)."""
    return RunProgress(workspace=WS, job="job1", run=run, node_id="n1", at=116.0, log_bytes=log_bytes,
                       metrics=metrics)


def finish_node(storage, run, status="completed", exit_code=0):
    key = layout.run_log_key(WS, run)
    for step in (1, 2, 3):
        storage.append(key, run_log.record(110.0 + step, "metrics", {"step": step, "loss": 1 / step, "__index__": step}))
    storage.write(layout.output_prefix(WS, run) + "model.txt", f"weights of {run}".encode())
    storage.append(key, run_log.record(120.0, "ended", {"status": status, "exit_code": exit_code, "duration": 10.0,
                                                        "reason": "" if exit_code == 0 else f"exit code {exit_code}"}))


def run_steps(parts, steps, fail_at=None):
    """Apply the steps; with fail_at=(i, k), step i crashes after its k-th side effect and is redelivered."""
    effects = []
    for i, (_, node, handler, event) in enumerate(steps):
        if node:
            node(parts.ports.storage)
        if fail_at and fail_at[0] == i:
            ports, counter = faulty(parts.ports, fail_at[1])
            with pytest.raises(InjectedFault):
                handler(event, ports)
        ports, counter = faulty(parts.ports, None)
        handler(event, ports)  # the (re)delivery
        effects.append(counter.effects)
    return effects
