"""Start-up: what a user waits for before XT does anything, against the limit of any Python
command here: `python -c pass` (the same interpreter and site, editable-install finder included).

Each case is a whole process, run in turn with the others (A B C A B C ...), medians:
  help       `xt --help`
  list       `xt list runs --last 20` over N recorded runs (embedded store)
  import     `python -c "from xt_submit import Run"`
  first_log  the same plus Run() and one log_metrics call and close (what a logging script pays)
and, measured inside the process, the import of Run alone (the figure a training run adds).
A second limit, the stack's floor: `python -c "import argparse, msgspec, sqlite3"`, what any command
that reads the config must load (the config's schema is msgspec's; the embedded store is SQLite).
`--tree DIR` measures another checkout of the source (PYTHONPATH), e.g. `git archive HEAD` unpacked.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import emit, interleaved, median, remove_scratch, run_child, user_env

HERE = Path(__file__).resolve().parent
IMPORT_RUN = ("import time; t = time.perf_counter(); from xt_submit import Run; "
              "print(time.perf_counter() - t)")
FIRST_LOG = ("import os, sys; from xt_submit import Run; r = Run(log_path=os.path.join(sys.argv[1], 'log.jsonl')); "
             "r.log_metrics({'loss': 0.5}); r.close()")


def xt_command() -> list:
    """The `xt` a user types (the console script beside this interpreter), else `python -m xt_submit.cli`."""
    script = Path(sys.executable).with_name("xt")
    return [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "xt_submit.cli"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000, help="recorded runs `xt list runs` looks through")
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--tree", help="the source tree to measure (default: the installed one)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="xt-bench-startup-"))
    try:
        from p3_query import fill_ours  # the same recorded runs as P3

        home = root / "home"
        fill_ours(home, args.runs)
        env = user_env(root, XT_HOME=str(home))
        if args.tree:
            env["PYTHONPATH"] = str(Path(args.tree).resolve())
        xt = xt_command()
        run = {"cwd": str(root), "env": env}
        imports = []

        def import_run() -> float:
            child = run_child([sys.executable, "-c", IMPORT_RUN], own_peak=False, **run)
            imports.append(float(child.stdout))
            return child.seconds

        cases = {
            "python_pass": lambda: run_child([sys.executable, "-c", "pass"], own_peak=False, **run).seconds,
            "stack_floor": lambda: run_child([sys.executable, "-c", "import argparse, msgspec, sqlite3"], own_peak=False,
                                             **run).seconds,
            "help": lambda: run_child([*xt, "--help"], own_peak=False, **run).seconds,
            "list": lambda: run_child([*xt, "list", "runs", "--last", "20"], own_peak=False, **run).seconds,
            "import": import_run,
            "first_log": lambda: run_child([sys.executable, "-c", FIRST_LOG, str(root)], own_peak=False, **run).seconds,
        }
        samples = interleaved(cases, args.repeat)
        peak = run_child([*xt, "list", "runs", "--last", "20"], **run).peak_rss_mb
    finally:
        remove_scratch(root)
    limit = median(samples["python_pass"])
    floor = median(samples["stack_floor"])
    result = {"id": "startup", "runs": args.runs, "limit_s": limit, "stack_floor_s": floor, "peak_rss_mb": peak,
              "list_x_stack_floor": median(samples["list"]) / floor}
    for name in ("help", "list", "import", "first_log"):
        result[f"{name}_s"] = median(samples[name])
        result[f"{name}_x_limit"] = median(samples[name]) / limit
    result["import_run_in_process_s"] = median(imports[1:] if len(imports) > 1 else imports)  # [0]: the warm-up
    emit(result)


if __name__ == "__main__":
    main()
