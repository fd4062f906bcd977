"""P2: dispatch of an N-run grid sweep (job message -> every run recorded and queued for compute),
against the physical limit: one bulk insert of the same N run rows into the same store."""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from common import emit, median_seconds

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="xt-bench-p2-"))
    src = root / "src"
    src.mkdir()
    (src / "train.py").write_text("print('hi')\n")
    snapshot = code_archive.snapshot_code(["."], str(src))
    state = {}

    def fresh_home():
        home = root / f"home-{uuid.uuid4().hex[:8]}"
        parts = embedded(home)
        parts.ports.storage.write(layout.code_key(snapshot.sha256), snapshot.data)
        manifest = JobManifest(workspace="ws1", experiment="bench", script="train.py", command="python train.py",
                               code_key=layout.code_key(snapshot.sha256), code_sha256=snapshot.sha256,
                               hp_space=sweep_space(args.runs), seed=1)
        state["parts"] = parts
        state["body"] = encode(JobSubmitted(submission_id=uuid.uuid4().hex, manifest=manifest, submitted_at=time.time()))

    def dispatch():
        result = handlers.dispatch_job(decode_event(state["body"]), state["parts"].ports)
        assert len(result.runs) == args.runs

    ours, _ = median_seconds(dispatch, args.repeat, fresh_home)
    recorded = state["parts"].ports.stats.job_rollup("ws1", "job1")["counts"]["queued"]
    queued = state["parts"].compute._db.execute("SELECT count(*) FROM tasks WHERE state = 'queued'").fetchone()[0]
    assert recorded == queued == args.runs

    # The limit: the same run rows, one executemany into the same schema, one transaction.
    sample = state["parts"].ports.stats._db.execute(f"SELECT {','.join(RUN_COLUMNS)} FROM runs").fetchall()

    def fresh_store():
        state["limit_db"] = SqliteStats(str(root / f"limit-{uuid.uuid4().hex[:8]}.db"))._db

    def bulk_insert():
        db = state["limit_db"]
        db.execute("BEGIN IMMEDIATE")
        db.executemany(f"INSERT INTO runs ({','.join(RUN_COLUMNS)}) VALUES ({','.join('?' * len(RUN_COLUMNS))})", sample)
        db.execute("COMMIT")

    limit, _ = median_seconds(bulk_insert, args.repeat, fresh_store)
    shutil.rmtree(root, ignore_errors=True)
    emit({"id": "P2", "runs": args.runs, "ours_s": ours, "limit_s": limit, "runs_per_s": args.runs / ours,
          "ratio_to_limit": limit / ours, "recorded": recorded, "queued_for_compute": queued})


if __name__ == "__main__":
    main()
