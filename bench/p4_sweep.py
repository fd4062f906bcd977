"""P4: a 100-run sweep of a trivial script end to end (submit to all stats recorded), local target,
concurrency 2, against the limit: 100 bare subprocess launches of the same script, 2 at a time.
The two run in turn (A B A B), medians, in the same environment; the peak RSS is the `xt run`
process's own (os.wait4), not the bench's."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from common import children_cpu_seconds, emit, interleaved, median, project_with, remove_scratch, run_child, sweep_breakdown, user_env

TRIVIAL = "import sys\nprint('run', sys.argv[1:])\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root, project = project_with("xt-bench-p4-", "trivial.py", TRIVIAL)
    counter = {"n": 0}
    env = user_env(root)
    peaks = []

    def ours() -> float:
        counter["n"] += 1
        done = run_child([sys.executable, "-m", "xt_submit.cli", "run", "--wait", "--json", "--concurrent", "2",
                          "trivial.py", f"--i=[$linspace(1,{args.runs},{args.runs})]"], cwd=project,
                         env=dict(env, XT_HOME=str(root / f"home{counter['n']}"), XT_HOST_IDLE_EXIT="1"))
        peaks.append(done.peak_rss_mb)
        return done.seconds

    bare_cpu = []

    def limit() -> float:
        def launch(i):
            subprocess.run([sys.executable, "trivial.py", f"--i={i}"], cwd=project, env=env, check=True,
                           capture_output=True)

        cpu = children_cpu_seconds()
        start = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(launch, range(1, args.runs + 1)))
        seconds = time.perf_counter() - start
        bare_cpu.append(1000 * (children_cpu_seconds() - cpu) / args.runs)
        return seconds

    samples = interleaved({"ours": ours, "limit": limit}, args.repeat, warmup=0)
    home = root / "home_breakdown"
    home.mkdir()
    breakdown = sweep_breakdown([sys.executable, "-m", "xt_submit.cli", "run", "--wait", "--json", "--concurrent", "2",
                                 "trivial.py", f"--i=[$linspace(1,{args.runs},{args.runs})]"],
                                home=str(home), cwd=project, env=dict(env, XT_HOME=str(home)), runs=args.runs)
    breakdown["bare_cpu_ms_per_run"] = median(bare_cpu)
    remove_scratch(root)
    ours_s, limit_s = median(samples["ours"]), median(samples["limit"])
    emit({"id": "P4", "runs": args.runs, "ours_s": ours_s, "limit_s": limit_s, "x_limit": ours_s / limit_s,
          "peak_rss_mb": max(peaks), "breakdown": breakdown})


if __name__ == "__main__":
    main()
