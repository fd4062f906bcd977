"""P4: a 100-run sweep of a trivial script end to end (submit to all stats recorded), local target,
concurrency 2, against the limit: 100 bare subprocess launches of the same script, 2 at a time."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import emit, median_seconds

TRIVIAL = "import sys\nprint('run', sys.argv[1:])\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="xt-bench-p4-"))
    project = root / "project"
    project.mkdir()
    (project / "trivial.py").write_text(TRIVIAL)
    counter = {"n": 0}

    def ours():
        counter["n"] += 1
        home = root / f"home{counter['n']}"
        env = dict(os.environ, XT_HOME=str(home), XT_HOST_IDLE_EXIT="1")
        subprocess.run([sys.executable, "-m", "xt_submit.cli", "run", "--wait", "--json", "--concurrent", "2",
                        "trivial.py", f"--i=[$linspace(1,{args.runs},{args.runs})]"],
                       cwd=project, env=env, check=True, capture_output=True)

    def limit():
        def launch(i):
            subprocess.run([sys.executable, "trivial.py", f"--i={i}"], cwd=project, check=True, capture_output=True)

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(launch, range(1, args.runs + 1)))

    ours_s, _ = median_seconds(ours, args.repeat)
    limit_s, _ = median_seconds(limit, args.repeat)
    shutil.rmtree(root, ignore_errors=True)
    emit({"id": "P4", "runs": args.runs, "ours_s": ours_s, "limit_s": limit_s, "x_limit": ours_s / limit_s})


if __name__ == "__main__":
    main()
