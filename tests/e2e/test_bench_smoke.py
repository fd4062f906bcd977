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
