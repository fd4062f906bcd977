"""bench/p9_event_cost.py still runs (tiny sizes): correctness only, its figures are claimed in the report."""
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_event_cost_bench_runs():
    out = subprocess.run([sys.executable, str(BENCH / "p9_event_cost.py"), "--small", "5", "--large", "300",
                          "--events", "3"], cwd=BENCH, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["large_runs"] == 300 and all(result[key] > 0 for key in ("started_ratio", "finished_ratio"))
