"""P3: `xt list runs --filter metrics.acc>0.5 --sort metrics.loss --last 20` over N recorded runs
(embedded store), against the same indexed query written by hand, and mlflow.search_runs on the
same data (MLflow's own SQLite schema, filled with the same runs)."""
from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import uuid
from pathlib import Path

from common import emit, interleaved, median, remove_scratch, run_child, timed, user_env

import msgspec

from xt_submit.cli import reports
from xt_submit.domain import run_query
from xt_submit.adapters.stats.sqlite import RUN_COLUMNS, SqliteStats
from xt_submit.bootstrap import embedded
from xt_submit.config import RunReports

ARGS = ["--filter", "metrics.acc>0.5", "--sort", "metrics.loss", "--last", "20"]


def generate(n: int, seed: int = 3):
    rng = random.Random(seed)
    for i in range(n):
        job, k = divmod(i, 100)
        yield {"name": f"run{job + 1}.{k + 1}", "job": f"job{job + 1}", "job_number": job + 1, "run_index": k + 1,
               "hparams": {"lr": rng.choice([0.001, 0.01, 0.1]), "opt": rng.choice(["sgd", "adam"])},
               "metrics": {"loss": rng.random() * 2, "acc": rng.random(), "epoch": 10}}


def fill_ours(home, n: int) -> None:
    """Setup, untimed: rows exactly as the handlers leave them after each run finished."""
    stats = embedded(home).ports.stats
    encode = msgspec.json.Encoder().encode
    runs, values = [], []
    for r in generate(n):
        row = {"workspace": "ws1", "name": r["name"], "job": r["job"], "job_number": r["job_number"],
               "run_index": r["run_index"], "experiment": "exp", "username": "me", "target": "local",
               "status": "completed", "exit_code": 0, "node_id": "local", "reason": "", "created": 1.0, "queued": 1.0,
               "started": 2.0, "ended": 3.0, "duration": 1.0, "command": "python train.py",
               "hparams": encode(r["hparams"]).decode(), "metrics": encode(r["metrics"]).decode(), "tags": "{}"}
        runs.append(tuple(row.values()))  # every other column takes its default, as on insert
        values += [("ws1", r["name"], name, value) for name, value in r["metrics"].items()]
    db = stats._db
    db.execute("BEGIN")
    db.executemany(f"INSERT INTO runs ({','.join(row)}) VALUES ({','.join('?' * len(row))})", runs)
    db.executemany("INSERT INTO last_metrics (workspace, run, name, value) VALUES (?, ?, ?, ?)", values)
    db.execute("COMMIT")
    db.execute("ANALYZE")


def fill_mlflow(root: str, n: int) -> str:
    import logging

    logging.disable(logging.WARNING)
    import mlflow

    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("bench", artifact_location=f"{root}/artifacts")
    db = sqlite3.connect(f"{root}/mlflow.db")
    runs, latest, metrics, params = [], [], [], []
    for r in generate(n):
        run_id = uuid.uuid4().hex
        runs.append((run_id, r["name"], "LOCAL", "train.py", "", "me", "FINISHED", 1, 2, "", "active",
                     f"{root}/artifacts/{run_id}", int(experiment_id), None))
        for name, value in r["metrics"].items():
            latest.append((name, value, 1, 10, 0, run_id))
            metrics.append((name, value, 1, run_id, 10, 0))
        params += [(name, str(value), run_id) for name, value in r["hparams"].items()]
    db.executemany("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
    db.executemany("INSERT INTO latest_metrics VALUES (?,?,?,?,?,?)", latest)
    db.executemany("INSERT INTO metrics VALUES (?,?,?,?,?,?)", metrics)
    db.executemany("INSERT INTO params VALUES (?,?,?)", params)
    db.commit()
    db.execute("ANALYZE")  # as on ours (fill_ours): MLflow's plans depend on it even more than ours
    db.close()
    return experiment_id


MLFLOW_SEARCH = """
import sys
import mlflow

found = mlflow.MlflowClient().search_runs([sys.argv[1]], filter_string="metrics.acc > 0.5",
                                          order_by=["metrics.loss DESC"], max_results=20)
assert len(found) == 20
print("\\n".join(r.info.run_name for r in found))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--process-repeat", type=int, default=5, help="samples of each whole-process figure")
    parser.add_argument("--mlflow-runs", type=int, default=10_000,
                        help="MLflow's sorted search grows faster than linearly, so it is compared with ours on this"
                             " many runs; 0 skips it")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="xt-bench-p3-")
    result = {"id": "P3", "runs": args.runs, "analyze": "ANALYZE run on both stores after filling them"}
    ours = measure_ours(root, "home", args.runs, args.repeat)
    home_env = user_env(root, XT_HOME=str(Path(root, "home")))
    cli = interleaved({"cli": lambda: cli_process(root, home_env)}, args.process_repeat)
    result.update(ours, cli_process_s=median(cli["cli"]), peak_rss_mb=cli_process(root, home_env, peak=True))
    if args.mlflow_runs:
        small = measure_ours(root, "home-small", args.mlflow_runs, args.repeat)
        import mlflow

        experiment_id = fill_mlflow(root, args.mlflow_runs)
        client = mlflow.MlflowClient()

        def peer():
            found = client.search_runs([experiment_id], filter_string="metrics.acc > 0.5",
                                       order_by=["metrics.loss DESC"], max_results=20)
            assert len(found) == 20
            return found

        peer_names = sorted(r.info.run_name for r in peer())
        mlflow_s = median(interleaved({"mlflow": lambda: timed(peer)}, 3)["mlflow"])
        # whole processes, as a user types them, in turn: `xt list runs` and a script doing MLflow's search
        small_env = user_env(root, XT_HOME=str(Path(root, "home-small")))
        peer_env = user_env(root, MLFLOW_TRACKING_URI=f"sqlite:///{root}/mlflow.db")
        processes = interleaved({
            "ours": lambda: cli_process(root, small_env),
            "mlflow": lambda: run_child([sys.executable, "-c", MLFLOW_SEARCH, experiment_id], own_peak=False, cwd=root,
                                        env=peer_env).seconds}, args.process_repeat)
        result.update(mlflow_runs=args.mlflow_runs, mlflow_s=mlflow_s, ours_at_mlflow_runs_s=small["ours_s"],
                      x_mlflow=mlflow_s / small["ours_s"], same_runs_as_mlflow=peer_names == small["names"],
                      cli_process_at_mlflow_runs_s=median(processes["ours"]),
                      mlflow_process_s=median(processes["mlflow"]),
                      x_mlflow_process=median(processes["mlflow"]) / median(processes["ours"]))
    del result["names"]
    remove_scratch(root)
    emit(result)


def cli_process(root: str, env: dict, peak: bool = False) -> float:
    """`xt list runs ARGS` as a user types it (process start and imports included): its seconds, or its peak RSS."""
    done = run_child([sys.executable, "-m", "xt_submit.cli", "list", "runs", *ARGS], own_peak=peak, env=env, cwd=root)
    return done.peak_rss_mb if peak else done.seconds


def measure_ours(root: str, name: str, n: int, repeat: int) -> dict:
    home = Path(root, name)
    fill_ours(home, n)
    stats = SqliteStats(str(home / "stats.db"))

    def ours():
        # what `xt list runs` does after argument parsing: build the query, run it, format the table
        query = run_query.RunQuery(workspace="ws1", filters=(run_query.parse_filter("metrics.acc>0.5"),),
                                   sort=run_query.parse_sort("metrics.loss"), last=20)
        rows = stats.query_runs(query)
        assert len(rows) == 20
        columns = reports.resolve_columns(reports.parse_columns(",".join(RunReports().columns)), rows, kind="runs")
        return reports.format_table(rows, columns)

    limit_db = sqlite3.connect(str(home / "stats.db"))

    def by_hand():
        rows = limit_db.execute(
            f"SELECT {','.join('r.' + c for c in RUN_COLUMNS)} FROM last_metrics s CROSS JOIN runs r"
            " ON r.workspace = s.workspace AND r.name = s.run WHERE s.workspace = 'ws1' AND s.name = 'loss'"
            " AND EXISTS (SELECT 1 FROM last_metrics m WHERE m.workspace = r.workspace AND m.run = r.name"
            " AND m.name = 'acc' AND m.value > 0.5) ORDER BY s.value DESC LIMIT 20").fetchall()
        assert len(rows) == 20

    # in turn (A B A B), after a warm-up round of each: the page cache warm, as for a user's second query
    samples = interleaved({"ours": lambda: timed(ours), "limit": lambda: timed(by_hand)}, repeat)
    ours_s, limit_s = median(samples["ours"]), median(samples["limit"])
    names = sorted(r["name"] for r in stats.query_runs(run_query.RunQuery(
        workspace="ws1", filters=(run_query.parse_filter("metrics.acc>0.5"),), sort=run_query.parse_sort("metrics.loss"),
        last=20)))
    return {"ours_s": ours_s, "limit_s": limit_s, "ratio_to_limit": limit_s / ours_s, "names": names}


if __name__ == "__main__":
    main()
