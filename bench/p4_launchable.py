"""P4's per-pass question, isolated: the host asks which queued local runs may start at every pass
of its loop (LocalCompute.launchable). Measured with one job of N queued runs whose slots are full
(what a big sweep looks like for its whole length), at 1,000 and 10,000 queued, against the floor
of any question to the same table: one task read by its primary key. Medians of interleaved rounds.
The ratio must not grow with N: a pass that reads every queued run makes a sweep quadratic."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import emit, interleaved, median, remove_scratch

from xt_submit.adapters.compute.tasks import LocalCompute
from xt_submit.domain.messages import RunTask


def full_job(folder: Path, queued: int) -> LocalCompute:
    compute = LocalCompute(str(folder / f"compute{queued}.db"))
    compute.submit([RunTask(workspace="ws1", experiment="e", job="job1", run=f"run1.{i}", command="python t.py",
                            code_key="code/x.zip", hparams={"i": i}, target="local", concurrent=2)
                    for i in range(1, queued + 3)])
    for task in compute.launchable(4):  # the job's 2 slots taken: the rest wait
        compute.claim(task)
        compute.set_launched(task.workspace, task.run)
    return compute


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200, help="calls per timed sample")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="xt-bench-launchable-"))
    stores = {n: full_job(folder, n) for n in (1_000, 10_000)}

    def timed(call):
        def sample() -> float:
            start = time.perf_counter()
            for _ in range(args.calls):
                call()
            return (time.perf_counter() - start) / args.calls
        return sample

    cases = {f"launchable_{n}": timed(lambda c=c: c.launchable(4)) for n, c in stores.items()}
    cases["limit"] = timed(lambda c=stores[10_000]: c._db.execute("SELECT * FROM tasks WHERE seq = 5000").fetchone())
    samples = interleaved(cases, args.repeat)
    limit = median(samples["limit"])
    result = {"id": "P4-launchable", "limit_ms": 1000 * limit}
    for n in stores:
        ours = median(samples[f"launchable_{n}"])
        result[f"queued_{n}_ms"] = 1000 * ours
        result[f"queued_{n}_x_limit"] = ours / limit
    result["growth_10x_queued"] = result["queued_10000_ms"] / result["queued_1000_ms"]
    remove_scratch(folder)
    emit(result)


if __name__ == "__main__":
    main()
