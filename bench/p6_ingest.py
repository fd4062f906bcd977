"""P6: ingest N metric records at run finish (run_finished: read the run log from storage, parse,
bulk-write the records, update the run) against the limit: the raw database write alone, an
executemany of the same rows, built beforehand, into the same table in one transaction.

Each measurement is a process of its own (ours and the limit in turn, A B A B), which reports its
time; its peak RSS (os.wait4) is the operation's, not the bench's: the interpreter, the imports and
the ingest, as a host or a Functions worker would see it. `--tree DIR` runs ours from another
checkout (PYTHONPATH), e.g. `git archive HEAD` unpacked, for a before/after figure.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import emit, interleaved, median, remove_scratch, run_child, user_env

METRICS_PER_STEP = 4
LIMIT_BATCH = 100_000  # rows built (untimed) per executemany (timed): the limit's own memory stays bounded


def write_run_log(path: Path, records: int) -> None:
    """The run log a training script leaves: a created and an hparams record, then one metrics
    record of METRICS_PER_STEP values per step; written piecewise, so 10M records need no 1 GB list."""
    from xt_submit.domain import run_log

    steps = records // METRICS_PER_STEP
    with open(path, "wb") as f:
        f.write(run_log.record(1.0, "created", {"job": "job1", "command": "python t.py", "step_name": "step"}))
        f.write(run_log.record(1.0, "hparams", {"lr": 0.1}))
        for start in range(0, steps, 10_000):
            f.write(b"".join(run_log.record(2.0 + i * 1e-3, "metrics", {"step": i, "loss": 1 / (i + 1), "acc": i / steps,
                                                                         "lr": 0.1, "grad": 0.5, "__index__": i + 1})
                             for i in range(start, min(steps, start + 10_000))))


def fresh_home(root: Path, log: Path) -> Path:
    """A store with job1 and its running run1.1, and the run's log in storage (setup, untimed)."""
    from xt_submit.bootstrap import embedded
    from xt_submit.domain import layout

    home = root / f"home-{uuid.uuid4().hex[:8]}"
    parts = embedded(home)
    parts.ports.stats.insert_job({"workspace": "ws1", "name": "job1", "number": 1, "status": "running", "run_count": 1})
    parts.ports.stats.insert_runs([{"workspace": "ws1", "name": "run1.1", "job": "job1", "job_number": 1,
                                    "run_index": 1, "status": "running", "hparams": {}, "metrics": {}, "tags": {}}])
    parts.ports.storage.upload_file(layout.run_log_key("ws1", "run1.1"), str(log))
    return home


def child_ours(home: Path) -> dict:
    from xt_submit import handlers
    from xt_submit.bootstrap import embedded
    from xt_submit.domain.messages import RunFinished

    parts = embedded(home)
    event = RunFinished(workspace="ws1", job="job1", run="run1.1", node_id="n", status="completed", exit_code=0,
                        started_at=1.0, ended_at=9.0)
    start = time.perf_counter()
    handlers.run_finished(event, parts.ports)
    seconds = time.perf_counter() - start
    stored = parts.ports.stats._db.execute("SELECT count(*) FROM metrics").fetchone()[0]
    return {"seconds": seconds, "stored": stored}


def child_limit(home: Path, log: Path) -> dict:
    from xt_submit.domain import run_log

    db = sqlite3.connect(str(home / "stats.db"), isolation_level=None)
    with open(log, "rb") as f:
        summary = run_log.LogSummary(run_log.iter_records_from_chunks(iter(lambda: f.read(1 << 20), b"")))
        rows = (("ws1", "run1.1", seq, *row) for seq, row in enumerate(summary.metric_rows()))
        seconds, stored = 0.0, 0
        start = time.perf_counter()
        db.execute("BEGIN")
        seconds += time.perf_counter() - start
        while batch := list(itertools.islice(rows, LIMIT_BATCH)):  # built outside the timer
            start = time.perf_counter()
            db.executemany("INSERT INTO metrics (workspace, run, seq, step, name, value, time)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
            seconds += time.perf_counter() - start
            stored += len(batch)
        start = time.perf_counter()
        db.execute("COMMIT")
        seconds += time.perf_counter() - start
    return {"seconds": seconds, "stored": stored}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", help="the source tree ours runs from (default: the installed one)")
    parser.add_argument("--child", choices=["ours", "limit"], help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement, in a process of its own
        measured = child_ours(Path(args.home)) if args.child == "ours" else child_limit(Path(args.home), Path(args.log))
        print(json.dumps(measured))
        return

    root = Path(tempfile.mkdtemp(prefix="xt-bench-p6-"))
    try:
        log = root / "run_log.jsonl"
        write_run_log(log, args.records)
        peaks = {"ours": [], "limit": []}

        def measure(kind: str, env: dict) -> float:
            home = fresh_home(root, log)
            child = run_child([sys.executable, __file__, "--child", kind, "--home", str(home), "--log", str(log)],
                              env=env)
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            assert measured["stored"] == args.records, measured  # every record, none twice
            peaks[kind].append(child.peak_rss_mb)
            shutil.rmtree(home, ignore_errors=True)
            return measured["seconds"]

        ours_env = user_env(root, **({"PYTHONPATH": str(Path(args.tree).resolve())} if args.tree else {}))
        limit_env = user_env(root)
        samples = interleaved({"ours": lambda: measure("ours", ours_env), "limit": lambda: measure("limit", limit_env)},
                              args.repeat, warmup=0)
    finally:
        remove_scratch(root)
    ours_s, limit_s = median(samples["ours"]), median(samples["limit"])
    emit({"id": "P6", "records": args.records, "ours_s": ours_s, "limit_s": limit_s, "ratio_to_limit": limit_s / ours_s,
          "records_per_s": args.records / ours_s, "peak_rss_mb": max(peaks["ours"]),
          "limit_peak_rss_mb": max(peaks["limit"]),
          "measures": "ours: read, parse and write the log at run finish; limit: the same rows' executemany alone"})


if __name__ == "__main__":
    main()
