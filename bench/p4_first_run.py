"""P4's fixed cost, isolated: how long a user waits from `xt run --wait` to their first run's start,
with no host yet (a fresh XT_HOME: the host and this machine's agent start on the way) and with a
host already serving (a second `xt run` within its idle time), against the limit: the same script
started bare (`python t.py`, to its first line). A 2-run job, concurrency 2. Medians of interleaved
rounds; `--compare-with DIR` times the same cases with another checkout's xt_submit package (DIR
holds its xt_submit/) in the same turns, so a change is measured against what it changed."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import emit, interleaved, median, project_with, remove_scratch, user_env

SCRIPT = "import time\nprint(time.time(), flush=True)\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--compare-with", metavar="DIR", help="also time the cases with DIR's xt_submit package")
    args = parser.parse_args()
    root, project = project_with("xt-bench-first-run-", "t.py", SCRIPT)
    counter = {"n": 0}
    served_homes: dict = {}

    def first_run(code_from: str, serving: bool) -> float:
        """Seconds from the CLI's start to the earliest run's start (its record)."""
        if serving:
            home = served_homes.setdefault(code_from, root / f"served{len(served_homes)}")
        else:
            counter["n"] += 1
            home = root / f"cold{counter['n']}"
        env = user_env(root, XT_HOME=str(home), XT_HOST_IDLE_EXIT="60" if serving else "1")
        if code_from:
            env["PYTHONPATH"] = code_from
        began = time.time()
        out = subprocess.run([sys.executable, "-m", "xt_submit.cli", "run", "--wait", "--json", "t.py", "--i=[1,2]"],
                             cwd=project, env=env, capture_output=True, text=True, check=True)
        job = json.loads(out.stdout)["job"]
        listed = subprocess.run([sys.executable, "-m", "xt_submit.cli", "list", "runs", "--job", job, "--json"],
                                cwd=project, env=env, capture_output=True, text=True, check=True)
        return min(run["started"] for run in json.loads(listed.stdout)) - began

    def bare() -> float:
        began = time.time()
        out = subprocess.run([sys.executable, "t.py"], cwd=project, env=user_env(root), capture_output=True,
                             text=True, check=True)
        return float(out.stdout.split()[0]) - began

    cases = {"cold": lambda: first_run("", False), "serving": lambda: first_run("", True), "bare": bare}
    if args.compare_with:
        other = str(Path(args.compare_with).resolve())
        cases.update({"compared_cold": lambda: first_run(other, False),
                      "compared_serving": lambda: first_run(other, True)})
    samples = interleaved(cases, args.repeat)
    for home in served_homes.values():  # the serving hosts: stopped now, not after their idle time
        try:
            os.kill(int((home / "host.lock").read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
    remove_scratch(root)
    limit = median(samples["bare"])
    result = {"id": "P4-first-run", "limit_s": limit}
    for name in cases:
        if name != "bare":
            result[f"{name}_s"] = median(samples[name])
            result[f"{name}_x_limit"] = median(samples[name]) / limit
    emit(result)


if __name__ == "__main__":
    os.environ.pop("XT_CONFIG", None)
    main()
