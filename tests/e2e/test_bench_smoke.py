"""The benchmarks still run (tiny sizes, no peer): a refactor must not leave bench/ broken.
Correctness only; the figures themselves are claimed in bench/results.md, never asserted here."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script,args,keys", [
    ("p1_logging.py", ["--calls", "2000", "--repeat", "1", "--mlflow-calls", "0"], ["ours_calls_per_s", "ratio_to_limit"]),
    ("p2_dispatch.py", ["--runs", "300", "--repeat", "1"], ["runs_per_s", "ratio_to_limit"]),
    ("p3_query.py", ["--runs", "2000", "--repeat", "1", "--mlflow-runs", "0"], ["ours_s", "cli_process_s"]),
    ("p4_sweep.py", ["--runs", "4", "--repeat", "1"], ["ours_s", "x_limit"]),
    ("p4_first_run.py", ["--repeat", "1"], ["cold_s", "serving_s", "limit_s", "cold_x_limit"]),
    ("p5_snapshot.py", ["--files", "40", "--mb", "2", "--repeat", "1"], ["ours_s", "resubmit_s"]),
    ("p6_ingest.py", ["--records", "4000", "--repeat", "1"], ["records_per_s", "ratio_to_limit"]),
    ("startup.py", ["--runs", "200", "--repeat", "1"], ["help_s", "list_s", "import_run_in_process_s"]),
])
def test_benchmark_runs(script, args, keys):
    out = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=BENCH, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(result[key] > 0 for key in keys) and result["peak_rss_mb"] > 0


def test_cloud_cost_counts_every_service_the_same_per_run_at_two_sizes():
    """P8 starts its own peers (Azurite, the AMQP broker, its Mongo wire peer) and drives a sweep
    through the Functions app at two sizes: every service is used, per run alike at both."""
    out = subprocess.run([sys.executable, str(BENCH / "p8_cloud_cost.py"), "--runs", "20", "--small", "10"], cwd=BENCH,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    large, small = result["headline_per_run"], result["headline_per_run_small"]
    assert set(large) == {"blob_ops", "bus_ops", "mongo_commands", "ru"}
    assert all(large[key] > 0 and small[key] > 0 for key in large), (large, small)
    # the job's own handful of operations spread over 10 or 20 runs is the only difference
    assert all(abs(ratio - 1) <= 0.1 for ratio in result["ratio_large_to_small"].values()), result["ratio_large_to_small"]
    per_run = result["per_run"]
    assert per_run["blob"]["write"] > 0 and per_run["bus"]["completes"] > 0 and per_run["mongo_by_class"]["write"] > 0
    costs = result["cost_per_1000_runs_usd"]
    assert set(costs) == {"blob", "service_bus", "cosmos_serverless", "functions"} and all(v > 0 for v in costs.values())
    idle = result["idle_month_usd"]
    assert idle["ours_month"] > 0 and idle["mlflow_server_month"] > 0 and result["functions"]["invocations_per_run"] >= 2
