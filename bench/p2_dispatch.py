"""P2: dispatch of an N-run grid sweep (job message -> every run recorded and queued for compute),
against the physical limit: one bulk insert of the same N run rows into the same store."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import emit, interleaved, median, remove_scratch, run_child, user_env

from xt_submit import handlers
from xt_submit.node_kit import code_archive
from xt_submit.domain import layout
from xt_submit.adapters.stats.sqlite import RUN_COLUMNS, SqliteStats
from xt_submit.bootstrap import embedded
from xt_submit.domain.messages import JobManifest, JobSubmitted, decode_event, encode


def sweep_space(runs: int) -> dict:
    # 10 x 10 x (runs/100) grid
    return {"lr": [round(0.001 * (i + 1), 4) for i in range(10)], "opt": [f"opt{i}" for i in range(10)],
            "seed": list(range(runs // 100))}


def child(kind: str, runs: int, root: Path) -> dict:
    """One measurement: ours dispatches the sweep into a fresh store; the limit bulk-inserts the run
    rows such a dispatch records (taken from an untimed dispatch) into another fresh store."""
    src = root / "src"
    snapshot = code_archive.snapshot_code(["."], str(src))

    def dispatch(sweep_runs: int):
        home = root / f"home-{uuid.uuid4().hex[:8]}"
        parts = embedded(home)
        parts.ports.storage.write(layout.code_key(snapshot.sha256), snapshot.data)
        manifest = JobManifest(workspace="ws1", experiment="bench", script="train.py", command="python train.py",
                               code_key=layout.code_key(snapshot.sha256), code_sha256=snapshot.sha256,
                               hp_space=sweep_space(sweep_runs), seed=1)
        body = encode(JobSubmitted(submission_id=uuid.uuid4().hex, manifest=manifest, submitted_at=time.time()))
        start = time.perf_counter()
        result = handlers.dispatch_job(decode_event(body), parts.ports)
        return parts, result, time.perf_counter() - start

    dispatch(100)  # untimed: a host or a Functions worker dispatches warm (imports, compiled patterns)
    parts, result, seconds = dispatch(runs)
    assert len(result.runs) == runs
    recorded = parts.ports.stats.job_rollup("ws1", "job1")["counts"]["queued"]
    queued = parts.compute._db.execute("SELECT count(*) FROM tasks WHERE state = 'queued'").fetchone()[0]
    assert recorded == queued == runs
    if kind == "ours":
        return {"seconds": seconds, "recorded": recorded, "queued_for_compute": queued}
    # the limit: the same run rows, one executemany into the same schema, one transaction
    sample = parts.ports.stats._db.execute(f"SELECT {','.join(RUN_COLUMNS)} FROM runs").fetchall()
    db = SqliteStats(str(root / f"limit-{uuid.uuid4().hex[:8]}.db"))._db
    start = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    db.executemany(f"INSERT INTO runs ({','.join(RUN_COLUMNS)}) VALUES ({','.join('?' * len(RUN_COLUMNS))})", sample)
    db.execute("COMMIT")
    return {"seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", choices=["ours", "limit"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement in a process of its own: its peak RSS is the dispatch's
        print(json.dumps(child(args.child, args.runs, Path(args.root))))
        return
    root = Path(tempfile.mkdtemp(prefix="xt-bench-p2-"))
    src = root / "src"
    src.mkdir()
    (src / "train.py").write_text("print('hi')\n")
    env = user_env(root)
    peaks: list = []
    last: dict = {}

    def measure(kind: str) -> float:
        done = run_child([sys.executable, __file__, "--child", kind, "--runs", str(args.runs), "--root", str(root)],
                         env=env)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        if kind == "ours":
            peaks.append(done.peak_rss_mb)
            last.update(measured)
        return measured["seconds"]

    samples = interleaved({"ours": lambda: measure("ours"), "limit": lambda: measure("limit")}, args.repeat, warmup=0)
    remove_scratch(root)
    ours, limit = median(samples["ours"]), median(samples["limit"])
    emit({"id": "P2", "runs": args.runs, "ours_s": ours, "limit_s": limit, "runs_per_s": args.runs / ours,
          "ratio_to_limit": limit / ours, "recorded": last["recorded"], "queued_for_compute": last["queued_for_compute"],
          "peak_rss_mb": max(peaks)})


if __name__ == "__main__":
    main()
