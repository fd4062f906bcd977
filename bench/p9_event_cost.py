"""P9: what one RunStarted and one RunFinished cost the handlers, in a job of 10 runs and in one of
100,000 (the embedded stores). The job's bookkeeping must not grow with the job: the target ratio is 1."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import emit, median, remove_scratch
from p2_dispatch import sweep_space

from xt_submit import handlers
from xt_submit.bootstrap import embedded
from xt_submit.domain import layout, records
from xt_submit.domain.messages import COMPLETED, JobManifest, RunFinished, RunStarted

WS = "ws1"


def job_of(parts, runs: int) -> None:
    """A dispatched job of `runs` queued runs, recorded straight into the index (the dispatch itself is P2's)."""
    manifest = JobManifest(workspace=WS, experiment="bench", script="train.py", command="python train.py",
                           code_key="code/none.zip", code_sha256="0" * 64, hp_space=sweep_space(runs))
    parts.ports.stats.insert_job(records.new_job(manifest, name="job1", number=1, submission_id="sub-1",
                                                 run_count=runs, created=100.0))
    plan = ((layout.run_name(1, index), "python train.py", {"seed": index}) for index in range(1, runs + 1))
    parts.ports.stats.insert_runs(records.new_runs(manifest, job="job1", number=1, plan=list(plan), created=100.0))


def event_costs(root: Path, runs: int, events: int) -> dict:
    """Median seconds of run_started and of run_finished over `events` runs of the job (never its last,
    so the job stays open: the steady state, not the one recount that closes a job)."""
    parts = embedded(root / f"home-{runs}")
    job_of(parts, runs)
    timings: dict = {"started": [], "finished": []}
    for index in range(1, min(events, runs - 1) + 1):
        run = layout.run_name(1, index)
        start = time.perf_counter()
        handlers.run_started(RunStarted(workspace=WS, job="job1", run=run, node_id="n1", started_at=110.0), parts.ports)
        timings["started"].append(time.perf_counter() - start)
        start = time.perf_counter()
        handlers.run_finished(RunFinished(workspace=WS, job="job1", run=run, node_id="n1", status=COMPLETED,
                                          exit_code=0, started_at=110.0, ended_at=120.0), parts.ports)
        timings["finished"].append(time.perf_counter() - start)
    job = parts.ports.stats.get_job(WS, "job1")
    assert job["status"] == "running" and job["counts"].get(COMPLETED) == min(events, runs - 1), job["counts"]
    return {kind: median(samples) for kind, samples in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=21, help="runs started and finished in each job")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="xt-bench-p9-"))
    try:
        small, large = event_costs(root, args.small, args.events), event_costs(root, args.large, args.events)
    finally:
        remove_scratch(root)
    emit({"id": "P9", "small_runs": args.small, "large_runs": args.large, "events": args.events,
          **{f"{kind}_small_ms": small[kind] * 1000 for kind in small},
          **{f"{kind}_large_ms": large[kind] * 1000 for kind in large},
          **{f"{kind}_ratio": large[kind] / small[kind] for kind in small}})


if __name__ == "__main__":
    main()
