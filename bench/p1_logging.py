"""P1: Run.log_metrics of 4 metrics, calls/s in a loop, against the limit (a raw buffered JSON-lines
write of the same dicts with the fastest encoder here) and MLflow (local SQLite) in its fastest
documented mode.

What each call does: ours encodes the step and appends it to an in-memory buffer, written to the
local run log every second or 4,096 lines (the database write happens once, at run finish: P6);
the limit does the same encode and a buffered file write. MLflow is measured three ways, by
steps/s: `MlflowClient.log_batch` of 250 steps (1,000 metrics, its per-call maximum) per call, one
SQLite transaction each (its fastest documented mode, the peer figure); `mlflow.log_metrics(...,
synchronous=False)` (queued, batched by a background thread; timed until flushed); and one
synchronous `mlflow.log_metrics` per step (a commit per step, for reference).

Ours and the limit each run in a process of their own, in turn (A B A B), so the peak RSS is the
logging loop's own.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from common import emit, interleaved, median, remove_scratch, run_child, user_env

MLFLOW_BATCH_METRICS = 1000  # MLflow's documented maximum of metrics per log_batch call


def metric_dicts(n: int):
    return [{"step": i, "loss": 1.0 / (i + 1), "acc": i / (n + 1), "lr": 0.01} for i in range(n)]


def child(kind: str, calls: int, root: str) -> float:
    dicts = metric_dicts(calls)
    path = os.path.join(root, f"{kind}-{os.getpid()}.jsonl")
    # the loop's steady state: imports (the encoder's too) are start-up's, measured by bench/startup.py
    import msgspec

    from xt_submit.node_kit.run_api import Run

    warm = Run(log_path=path + ".warm")
    warm.log_metrics({"loss": 1.0})
    warm.close()
    start = time.perf_counter()
    if kind == "ours":
        run = Run(log_path=path)
        log = run.log_metrics
        for d in dicts:
            log(d)
        run.close()
    else:
        encode = msgspec.json.Encoder().encode
        now = time.time
        with open(path, "wb", buffering=1 << 16) as f:
            write = f.write
            for d in dicts:
                write(encode({"time": now(), "event": "metrics", "data": d}) + b"\n")
    seconds = time.perf_counter() - start
    with open(path, "rb") as f:
        logged = sum(1 for _ in f)
    assert logged == calls, logged  # nothing lost
    os.unlink(path)
    os.unlink(path + ".warm")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--mlflow-calls", type=int, default=150,
                        help="steps for MLflow's per-step and async modes (log_batch logs 20x as many); 0 skips MLflow")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", choices=["ours", "limit"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"seconds": child(args.child, args.calls, args.root)}))
        return

    root = tempfile.mkdtemp(prefix="xt-bench-p1-")
    env = user_env(root)
    peaks = {"ours": [], "limit": []}

    def measure(kind: str) -> float:
        done = run_child([sys.executable, __file__, "--child", kind, "--calls", str(args.calls), "--root", root], env=env)
        peaks[kind].append(done.peak_rss_mb)
        return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]

    samples = interleaved({"ours": lambda: measure("ours"), "limit": lambda: measure("limit")}, args.repeat, warmup=0)
    ours_s, limit_s = median(samples["ours"]), median(samples["limit"])
    result = {"id": "P1", "calls": args.calls, "ours_calls_per_s": args.calls / ours_s,
              "limit_calls_per_s": args.calls / limit_s, "ratio_to_limit": limit_s / ours_s,
              "peak_rss_mb": max(peaks["ours"]), "limit_peak_rss_mb": max(peaks["limit"]),
              "each_call": {"ours": "encode + append to an in-memory buffer (file write every 1 s / 4,096 lines;"
                                    " the database write is P6)",
                            "limit": "encode + buffered file write",
                            "mlflow_batch": f"log_batch of {MLFLOW_BATCH_METRICS // 4} steps: one SQLite transaction",
                            "mlflow_async": "log_metrics(synchronous=False): queued, a background thread batches",
                            "mlflow_per_step": "log_metrics: one SQLite transaction per step"}}
    if args.mlflow_calls:
        rates = mlflow_steps_per_second(root, args.mlflow_calls)
        result.update(rates)
        best = max(rates["mlflow_batch_steps_per_s"], rates["mlflow_async_steps_per_s"])
        result.update(mlflow_calls_per_s=best, x_mlflow=result["ours_calls_per_s"] / best,
                      x_mlflow_per_step=result["ours_calls_per_s"] / rates["mlflow_per_step_steps_per_s"])
    remove_scratch(root)
    emit(result)


def mlflow_steps_per_second(root: str, steps: int) -> dict:
    """Steps/s of each MLflow mode with a local SQLite backend, the median of three passes each."""
    import logging

    logging.disable(logging.WARNING)
    import mlflow
    from mlflow.entities import Metric

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    mlflow.set_experiment("bench")
    client = mlflow.MlflowClient()
    dicts = metric_dicts(steps * 20)
    per_call = MLFLOW_BATCH_METRICS // 4
    samples = {"per_step": [], "batch": [], "async": []}
    with mlflow.start_run() as active:
        run_id = active.info.run_id
        mlflow.log_metrics({"loss": 1.0, "acc": 0.0, "lr": 0.01}, step=0)  # schema warm-up, untimed
        for _ in range(3):
            start = time.perf_counter()
            for d in dicts[:steps]:
                mlflow.log_metrics({"loss": d["loss"], "acc": d["acc"], "lr": d["lr"], "step": d["step"]},
                                   step=d["step"])
            samples["per_step"].append(steps / (time.perf_counter() - start))

            now = int(time.time() * 1000)
            batches = [[Metric(name, d[name], now, d["step"]) for d in dicts[i:i + per_call]
                        for name in ("loss", "acc", "lr", "step")] for i in range(0, len(dicts), per_call)]
            start = time.perf_counter()  # the Metric objects are built beforehand, untimed
            for batch in batches:
                client.log_batch(run_id, metrics=batch)
            samples["batch"].append(len(dicts) / (time.perf_counter() - start))

            start = time.perf_counter()
            for d in dicts[:steps]:
                mlflow.log_metrics({"loss": d["loss"], "acc": d["acc"], "lr": d["lr"], "step": d["step"]},
                                   step=d["step"], synchronous=False)
            mlflow.flush_async_logging()  # logged means written, as ours is by close()
            samples["async"].append(steps / (time.perf_counter() - start))
    return {f"mlflow_{mode}_steps_per_s": median(values) for mode, values in samples.items()}


if __name__ == "__main__":
    main()
