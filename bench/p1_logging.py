"""P1: Run.log_metrics of 4 metrics, calls/s in a loop, against the limit (a raw buffered JSON-lines
write of the same dicts with the fastest encoder here) and mlflow.log_metrics (local SQLite)."""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from common import emit, median_seconds

import msgspec

from xt_submit.node_kit.run_api import Run


def metric_dicts(n: int):
    return [{"step": i, "loss": 1.0 / (i + 1), "acc": i / (n + 1), "lr": 0.01} for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--mlflow-calls", type=int, default=150, help="0 skips the MLflow comparison")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="xt-bench-p1-")
    dicts = metric_dicts(args.calls)

    def ours():
        run = Run(log_path=os.path.join(root, "ours.jsonl"))
        log = run.log_metrics
        for d in dicts:
            log(d)
        run.close()

    def limit():
        encode = msgspec.json.Encoder().encode
        now = time.time
        with open(os.path.join(root, "raw.jsonl"), "wb", buffering=1 << 16) as f:
            write = f.write
            for d in dicts:
                write(encode({"time": now(), "event": "metrics", "data": d}) + b"\n")

    def remove(name):
        return lambda: os.path.exists(os.path.join(root, name)) and os.unlink(os.path.join(root, name))

    ours_s, _ = median_seconds(ours, args.repeat, remove("ours.jsonl"))
    with open(os.path.join(root, "ours.jsonl"), "rb") as f:
        logged = sum(1 for _ in f)
    assert logged == args.calls, logged  # nothing lost
    limit_s, _ = median_seconds(limit, args.repeat, remove("raw.jsonl"))

    result = {"id": "P1", "calls": args.calls, "ours_calls_per_s": args.calls / ours_s,
              "limit_calls_per_s": args.calls / limit_s, "ratio_to_limit": limit_s / ours_s}
    if args.mlflow_calls:
        rate = mlflow_calls_per_second(root, dicts[: args.mlflow_calls])
        result.update(mlflow_calls_per_s=rate, x_mlflow=result["ours_calls_per_s"] / rate)
    shutil.rmtree(root, ignore_errors=True)
    emit(result)


def mlflow_calls_per_second(root: str, dicts) -> float:
    """mlflow.log_metrics with a local SQLite backend: the median of three passes."""
    import logging

    logging.disable(logging.WARNING)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    mlflow.set_experiment("bench")
    samples = []
    with mlflow.start_run():
        mlflow.log_metrics({"loss": 1.0, "acc": 0.0, "lr": 0.01}, step=0)  # schema warm-up, untimed
        for _ in range(3):
            start = time.perf_counter()
            for d in dicts:
                mlflow.log_metrics({"loss": d["loss"], "acc": d["acc"], "lr": d["lr"], "step": d["step"]}, step=d["step"])
            samples.append((time.perf_counter() - start) / len(dicts))
    return 1 / sorted(samples)[1]


if __name__ == "__main__":
    main()
