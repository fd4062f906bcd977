"""P6: ingest N metric records at run finish (run_finished: read the run log from storage, parse,
bulk-write the records, update the run) against the limit: a raw executemany of the same rows
into the same table."""
from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import uuid
from pathlib import Path

from common import emit, median_seconds

from xt_submit import handlers
from xt_submit.domain import layout, run_log
from xt_submit.bootstrap import embedded
from xt_submit.domain.messages import RunFinished

METRICS_PER_STEP = 4


def run_log_bytes(records: int) -> bytes:
    steps = records // METRICS_PER_STEP
    lines = [run_log.record(1.0, "created", {"job": "job1", "command": "python t.py", "step_name": "step"}),
             run_log.record(1.0, "hparams", {"lr": 0.1})]
    lines += [run_log.record(2.0 + i * 1e-3, "metrics", {"step": i, "loss": 1 / (i + 1), "acc": i / steps,
                                                          "lr": 0.1, "grad": 0.5, "__index__": i + 1})
              for i in range(steps)]
    return b"".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="xt-bench-p6-"))
    blob = run_log_bytes(args.records)
    state = {}

    def fresh():
        parts = embedded(root / f"home-{uuid.uuid4().hex[:8]}")
        parts.ports.stats.insert_job({"workspace": "ws1", "name": "job1", "number": 1, "status": "running",
                                      "run_count": 1})
        parts.ports.stats.insert_runs([{"workspace": "ws1", "name": "run1.1", "job": "job1", "job_number": 1,
                                        "run_index": 1, "status": "running", "hparams": {}, "metrics": {}, "tags": {}}])
        parts.ports.storage.write(layout.run_log_key("ws1", "run1.1"), blob)
        state["parts"] = parts

    event = RunFinished(workspace="ws1", job="job1", run="run1.1", node_id="n", status="completed", exit_code=0,
                        started_at=1.0, ended_at=9.0)

    def ours():
        handlers.run_finished(event, state["parts"].ports)

    ours_s, _ = median_seconds(ours, args.repeat, fresh)
    stored = state["parts"].ports.stats._db.execute("SELECT count(*) FROM metrics").fetchone()[0]
    assert stored == args.records, stored

    _, _, rows = run_log.summarize(run_log.parse(blob))
    tuples = [("ws1", "run1.1", seq, *row) for seq, row in enumerate(rows)]

    def fresh_table():
        fresh()
        state["db"] = sqlite3.connect(str(state["parts"].home / "stats.db"), isolation_level=None)

    def limit():
        db = state["db"]
        db.execute("BEGIN")
        db.executemany("INSERT INTO metrics (workspace, run, seq, step, name, value, time) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       tuples)
        db.execute("COMMIT")

    limit_s, _ = median_seconds(limit, args.repeat, fresh_table)
    shutil.rmtree(root, ignore_errors=True)
    emit({"id": "P6", "records": args.records, "ours_s": ours_s, "limit_s": limit_s, "ratio_to_limit": limit_s / ours_s,
          "records_per_s": args.records / ours_s})


if __name__ == "__main__":
    main()
