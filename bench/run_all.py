"""Runs every benchmark, checks each against its target, and writes bench/results.json and
bench/results.md. Each bench measures its operation in processes of their own (ours and its limit
in turn, A B A B, medians); the peak RSS column is the measured operation's own process (os.wait4),
not the bench's.

    scripts/bench.sh            # installs the bench extra (MLflow), then runs this
    scripts/bench.sh --only P4,P7,startup   # these again; the other rows kept from results.json
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import KEEP_SCRATCH

HERE = Path(__file__).resolve().parent
# Before the cases: written back (sync), then this long for the file system to settle. ext4 without
# a journal (this machine's root) skips inodes freed in the last 60 s (360 s while their table block
# is unwritten) at every file creation, so a test suite's or an earlier bench's deletions just
# before would price this run's creations (the host's CPU per P4 run moved 5.8 -> 9.5 ms between
# two runs of the same code that way). Elsewhere it costs only the wait.
SETTLE_SECONDS = 65

# (id, script, arguments, label of the size)
RUNS = [
    ("startup", "startup.py", [], "`xt --help`, `xt list runs --last 20` over 100,000 runs, `from xt_submit import Run`"),
    ("P1", "p1_logging.py", [], "200,000 calls"),
    ("P2", "p2_dispatch.py", ["--runs", "10000"], "10,000 runs"),
    ("P2", "p2_dispatch.py", ["--runs", "100000", "--repeat", "3"], "100,000 runs (10x)"),
    ("P3", "p3_query.py", ["--runs", "100000"], "100,000 runs"),
    ("P3", "p3_query.py", ["--runs", "1000000", "--mlflow-runs", "0", "--repeat", "9"], "1,000,000 runs (10x)"),
    ("P4", "p4_sweep.py", ["--repeat", "5"], "100 runs"),
    ("P4", "p4_sweep.py", ["--runs", "1000", "--repeat", "1"], "1,000 runs (10x)"),
    ("P5", "p5_snapshot.py", [], "200 MB, 5,000 files"),
    ("P6", "p6_ingest.py", ["--records", "1000000"], "1,000,000 records"),
    ("P6", "p6_ingest.py", ["--records", "10000000", "--repeat", "1"], "10,000,000 records (10x)"),
    ("P7", "p7_pool.py", ["--repeat", "7"], "20 runs on 2 SSH boxes"),
    ("P7", "p7_pool.py", ["--runs", "200", "--repeat", "3"], "200 runs on 2 SSH boxes (10x)"),
    ("P8", "p8_cloud_cost.py", ["--runs", "10000"], "10,000 runs (and 1,000) through the Functions app on the peers"),
]


def figure(r: dict) -> tuple:
    """(our figure, limit, peer, verdict) as text, per benchmark."""
    i = r["id"]
    if i == "startup":
        ok = r["help_x_limit"] <= 2 and r["list_x_limit"] <= 2 and r["import_run_in_process_s"] <= 0.03
        return (f"--help {r['help_s'] * 1000:.0f} ms ({r['help_x_limit']:.2f}x); list runs {r['list_s'] * 1000:.0f} ms"
                f" ({r['list_x_limit']:.2f}x; {r['list_x_stack_floor']:.2f}x the stack's floor, `import argparse,"
                f" msgspec, sqlite3` {r['stack_floor_s'] * 1000:.0f} ms); import Run {r['import_run_in_process_s'] * 1000:.1f} ms in-process,"
                f" import + first log_metrics {r['first_log_s'] * 1000:.0f} ms ({r['first_log_x_limit']:.2f}x)",
                f"python -c pass {r['limit_s'] * 1000:.0f} ms", "-", ok,
                "--help and list runs <= 2x python -c pass; import Run <= 30 ms")
    if i == "P1":
        ok = r["ratio_to_limit"] >= 0.5 and r.get("x_mlflow", 100) >= 100
        peer = (f"mlflow log_batch {r['mlflow_batch_steps_per_s']:,.0f} steps/s, async {r['mlflow_async_steps_per_s']:,.0f},"
                f" per step {r['mlflow_per_step_steps_per_s']:,.0f} (ours {r['x_mlflow']:,.0f}x its fastest;"
                f" {r['x_mlflow_per_step']:,.0f}x per step). Ours buffers; its database write is P6"
                if "x_mlflow" in r else "-")
        return (f"{r['ours_calls_per_s']:,.0f} calls/s", f"{r['limit_calls_per_s']:,.0f} calls/s ({r['ratio_to_limit']:.2f}x)",
                peer, ok, ">= 0.5x limit, >= 100x mlflow's fastest mode")
    if i == "P2":
        ok = r["runs_per_s"] >= 5000 and r["ratio_to_limit"] >= 0.3
        return (f"{r['ours_s'] * 1000:,.0f} ms ({r['runs_per_s']:,.0f} runs/s)",
                f"{r['limit_s'] * 1000:,.0f} ms ({r['ratio_to_limit']:.2f}x)", "-", ok, ">= 5,000 runs/s, >= 0.3x limit")
    if i == "P3":
        peer = (f"mlflow {r['mlflow_s'] * 1000:,.0f} ms at {r['mlflow_runs']:,} runs vs ours "
                f"{r['ours_at_mlflow_runs_s'] * 1000:.2f} ms ({r['x_mlflow']:,.0f}x faster, same runs: "
                f"{r['same_runs_as_mlflow']}); whole processes: mlflow {r['mlflow_process_s'] * 1000:,.0f} ms vs"
                f" `xt list runs` {r['cli_process_at_mlflow_runs_s'] * 1000:,.0f} ms ({r['x_mlflow_process']:.1f}x);"
                " ANALYZE on both") if "mlflow_s" in r else "-"
        ok = r["ours_s"] <= 0.05 and r.get("x_mlflow", 20) >= 20
        return (f"{r['ours_s'] * 1000:.2f} ms (whole CLI process {r['cli_process_s'] * 1000:.0f} ms)",
                f"{r['limit_s'] * 1000:.2f} ms ({r['ratio_to_limit']:.2f}x)", peer, ok, "<= 50 ms, >= 20x mlflow")
    if i == "P4":
        return (f"{r['ours_s']:.2f} s", f"{r['limit_s']:.2f} s ({r['x_limit']:.2f}x)", "-", r["x_limit"] <= 1.3,
                "<= 1.3x limit")
    if i == "P5":
        ok = r["x_limit"] <= 1.5 and r["resubmit_s"] <= 0.3
        return (f"{r['ours_s']:.2f} s; unchanged resubmit {r['resubmit_s']:.3f} s",
                f"{r['limit_s']:.2f} s ({r['x_limit']:.2f}x)", "-", ok, "<= 1.5x limit; resubmit <= 0.3 s")
    if i == "P6":
        return (f"{r['ours_s']:.2f} s ({r['records_per_s']:,.0f} records/s)",
                f"{r['limit_s']:.2f} s ({r['ratio_to_limit']:.2f}x)", "-", r["ratio_to_limit"] >= 0.5, ">= 0.5x limit")
    if i == "P7":  # issue 17's targets are for 200 and 20 runs: <= 2x and <= 4x bare exec
        ok = r["x_limit"] <= 4 if r["runs"] <= 20 else r["x_limit"] <= 2
        return (f"{r['ours_s']:.2f} s", f"{r['limit_s']:.2f} s ({r['x_limit']:.2f}x); with connection setup once per box"
                f" {r['limit_with_setup_s']:.2f} s ({r['x_limit_with_setup']:.2f}x)", "-", ok,
                "<= 4x limit at 20 runs, <= 2x at 200")
    if i == "P8":  # issue 17: ops per run must not grow with the job, and the stack must beat an idle server
        ratios = r["ratio_large_to_small"]
        same_per_run = all(v is not None and abs(v - 1) <= 0.10 for v in ratios.values())
        idle = r["idle_month_usd"]
        at_10k_a_month = idle["ours_month"] + 10 * r["cost_per_1000_runs_total_usd"]
        h = r["headline_per_run"]
        return (f"per run: {h['blob_ops']:.1f} blob ops, {h['bus_ops']:.1f} Service Bus ops, {h['mongo_commands']:.1f}"
                f" Mongo commands ({h['ru']:.0f} RU); ${r['cost_per_1000_runs_total_usd']:.3f} per 1,000 runs;"
                f" ${at_10k_a_month:.2f}/month at 10,000 runs/month (idle ${idle['ours_month']:.2f})",
                f"at {r['small_runs']:,} runs: per-run ratios " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()),
                f"always-on MLflow server ${idle['mlflow_server_month']:.2f}/month; break-even"
                f" {r['break_even_runs_per_month'] or 0:,} runs/month",
                same_per_run and at_10k_a_month < idle["mlflow_server_month"],
                "per-run ops at N within 10% of N/10's; 10,000 runs/month cost less than the idle server")
    raise ValueError(i)


def measure(only, earlier: dict, env: dict) -> list:
    """Each case's result (a case not in `only` kept from `earlier`), each script run with env."""
    results = []
    for bench_id, script, args, size in RUNS:
        if only is not None and bench_id not in only:
            if (bench_id, size) in earlier:
                results.append(earlier[(bench_id, size)])
            continue
        print(f"{bench_id} {size} ...", file=sys.stderr, flush=True)
        t0 = time.time()
        out = subprocess.run([sys.executable, str(HERE / script), *args], cwd=HERE, env=env, capture_output=True,
                             text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            results.append({"id": bench_id, "size": size, "error": out.stderr.strip().splitlines()[-1]})
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result.update(size=size, wall_s=round(time.time() - t0, 1), measured=time.strftime("%Y-%m-%d"))
        results.append(result)
    return results


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="comma-separated ids to measure again; the other rows are kept from results.json")
    parser.add_argument("--settle", type=float, default=SETTLE_SECONDS,
                        help=f"seconds to let the file system settle first (default {SETTLE_SECONDS}; 0: none)")
    options = parser.parse_args()
    only = set(options.only.split(",")) if options.only else None
    earlier = {}
    if only and (HERE / "results.json").exists():
        earlier = {(r["id"], r["size"]): r for r in json.loads((HERE / "results.json").read_text())["results"]}
    results = []
    if options.settle > 0:
        print(f"letting the file system settle for {options.settle:g} s (--settle 0 skips it)", file=sys.stderr)
        os.sync()
        time.sleep(options.settle)
    started = time.time()
    # every case's scratch in one folder, removed once all are measured (common.remove_scratch says why)
    scratch = tempfile.mkdtemp(prefix="xt-bench-run-")
    os.chmod(scratch, 0o1777)  # as /tmp: the SSH boxes' users (P7) reach their folders through it
    case_env = dict(os.environ, TMPDIR=scratch, **{KEEP_SCRATCH: "1"})
    try:
        results += measure(only, earlier, case_env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    total = time.time() - started

    lines = ["| id | size | ours | limit (ratio) | peer | peak RSS | target | met | measured |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['id']} | {r['size']} | error: {r['error']} | | | | | no |")
            continue
        if "skipped" in r:
            lines.append(f"| {r['id']} | {r['size']} | skipped: {r['skipped']} | | | | | - |")
            continue
        ours, limit, peer, ok, target = figure(r)
        r["target_met"] = ok
        lines.append(f"| {r['id']} | {r['size']} | {ours} | {limit} | {peer} | {r['peak_rss_mb']:.0f} MB | {target} |"
                     f" {'-' if ok is None else 'yes' if ok else 'NO'} | {r.get('measured', 'an earlier run')} |")
    table = "\n".join(lines)
    breakdowns = [f"- **{r['id']}** ({r['size']}): " + ", ".join(f"{name} {value:,.3g}" for name, value in r["breakdown"].items())
                  for r in results if "breakdown" in r]
    if breakdowns:
        table += ("\n\n## Per-run breakdowns\n\nOne more sweep each, with the host started by the bench so its CPU"
                  " can be read (`bench/common.sweep_breakdown`): the host's own CPU per run, its children's (the"
                  " runs, when they are this machine's), the CLI's, the fixed cost before the first run and after"
                  " the last, and slot_wait_ms: the median time from a run's end to the next run's start (its"
                  " supervisor's, before the code is unpacked and the command launched).\n\n" + "\n".join(breakdowns))
    (HERE / "results.json").write_text(json.dumps({"total_s": round(total, 1), "results": results}, indent=2))
    (HERE / "results.md").write_text(
        f"# Benchmark results\n\nAll figures are medians of ours and its limit measured in turn (A B A B) in the same"
        f" run; ratios are against that limit. Peak RSS is the measured operation's own process (os.wait4), not the"
        f" bench's. Child processes cache byte code as a user's install does. Total time {total:.0f} s"
        f"{' (only ' + ', '.join(sorted(only)) + ' measured again; the other rows are from the run they name)' if only else ''}."
        f"\n\n{table}\n")
    print(table)
    print(f"\ntotal {total:.0f} s; wrote bench/results.json and bench/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
