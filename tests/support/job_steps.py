"""Steps of a job on the embedded stores for handler tests: submit one, end its runs as their
nodes would, and read what was queued."""
import math
import sqlite3

from support.pipeline import make_code_zip, make_manifest
from xt_submit import handlers
from xt_submit.domain import layout, run_log
from xt_submit.domain.messages import COMPLETED, JobSubmitted, RunFinished, RunProgress

WS = "ws1"


def submit(parts, **overrides):
    """Dispatch job1: a 5 x 2 grid of x and opt, two runs at once, unless overridden."""
    key, sha = make_code_zip(parts)
    manifest = make_manifest(key, sha, **{"hp_space": {"x": [0.0, 0.25, 0.5, 0.75, 1.0], "opt": ["sgd", "adam"]},
                                         "concurrent": 2, **overrides})
    event = JobSubmitted(submission_id="sub-1", manifest=manifest, submitted_at=100.0)
    return handlers.dispatch_job(event, parts.ports)


def finish(parts, run, loss, status=COMPLETED, at=200.0):
    """What the run's node does at its end: the run log with its metric, then RunFinished."""
    record = parts.ports.stats.get_run(WS, run)
    key = layout.run_log_key(WS, run)
    parts.ports.storage.create_log(key, run_log.record(100.0, "hparams", record["hparams"]))
    parts.ports.storage.append(key, run_log.record(at, "metrics", {"step": 1, "loss": loss}))
    event = RunFinished(workspace=WS, job=record["job"], run=run, node_id="n1", status=status, exit_code=0,
                        started_at=150.0, ended_at=at, metrics={"loss": loss})
    handlers.run_finished(event, parts.ports)
    return event


def score(parts, run):
    hp = parts.ports.stats.get_run(WS, run)["hparams"]
    return (hp["x"] - 0.5) ** 2 + (0.5 if hp["opt"] == "sgd" else 0)


def task_runs(parts):
    with sqlite3.connect(parts.home / "compute.db") as db:
        return sorted(run for (run,) in db.execute("SELECT run FROM tasks"))


def names(parts, job="job1"):
    return [r["name"] for r in sorted(parts.ports.stats.list_runs(WS, job=job), key=lambda r: r["run_index"])]


def progress(run, reports, first=1, log_bytes=100, at=160.0):
    """A RunProgress carrying `reports` primary values (with their running means and bests)."""
    rows, total, best = [], 0.0, math.inf
    for i, value in enumerate(reports, start=1):
        total += value
        best = min(best, value)
        rows.append([value, total / i, best])
    return RunProgress(workspace=WS, job="job1", run=run, node_id="n1", at=at, log_bytes=log_bytes,
                       metrics={"loss": reports[-1]}, first_report=first, primary=rows[first - 1:])
