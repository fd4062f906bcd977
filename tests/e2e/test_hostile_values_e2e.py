"""Values the message contracts cannot carry (issue 16, class 1), through the real CLI, host and runs on
the embedded default: numbers no store holds, more metric names than a message holds, options out of
range, and a reindex over a store with what it cannot read. No run is left running, nothing is lost."""
import time

from xt_submit.runtime.local_host import host_running

HOSTILE = '''
import os, sys
from xt_submit import Run
run = Run()
run.log_hparams({"wide": 2**64})
run.log_metrics({"step": 1, "big": 2**64, "low": -2**63 - 1, "inf": 1e308 * 10, "nan": float("nan"), "fine": 0.5})
pid = os.fork()  # after logging, before the flush: the child must not write the parent's metrics again
if pid == 0:
    sys.exit(0)
os.waitpid(pid, 0)
'''
KEPT = {"big": float(2**64), "low": float(-2**63 - 1), "inf": None, "nan": None, "fine": 0.5}

MANY_NAMES = '''
from xt_submit import Run
run = Run()
run.log_metrics({f"metric-{i:05d}-" + "x" * 60: i / 7 for i in range(20_000)})
'''
STEPS = '''
import sys
from xt_submit import Run
lr = float(sys.argv[1].split("=")[1])
run = Run()
for step in range(1, 4):
    run.log_metrics({"step": step, "loss": lr * 10 / step, "acc": 1 - lr / step})
'''


def test_numbers_no_store_holds_end_the_run_as_completed_with_each_kept(project, reliability):
    (project.code / "hostile.py").write_text(HOSTILE)
    out = project.json("run", "--wait", "hostile.py")
    assert out["status"] == "completed"
    (run,) = project.json("list", "runs")
    assert run["metrics"] == KEPT and run["hparams"] == {"wide": float(2**64)}
    history = project.json("view", "metrics", run["name"])[run["name"]]
    assert [(point["name"], point["value"]) for point in history] == list(KEPT.items())  # once: the fork wrote none
    stop_host(project)
    reindexed = project.xt("admin", "reindex")
    assert "ws1: reindexed 1 jobs, 1 runs, 5 metric records" in reindexed.stdout
    assert project.json("list", "runs") == [run]
    reliability.add("hostile values: 2**64, -2**63-1, inf, nan logged by a script, then a fork (CLI)", runs=1,
                    runs_stuck=0, values_lost=0, metrics_duplicated=0)


def test_a_script_logging_20k_long_metric_names_completes_with_all_of_them(project, reliability):
    (project.code / "many.py").write_text(MANY_NAMES)
    out = project.json("run", "--wait", "many.py")
    assert out["status"] == "completed"
    record = project.json("view", "run", out["runs"][0])
    assert record["status"] == "completed" and len(record["metrics"]) == 20_000
    reliability.add("hostile values: 20,000 long metric names (a 1.7 MB finish), completed with every one kept (CLI)",
                    runs=1, metrics=20_000, dead_lettered=0)


BIG = "99999999999999999999"
OUT_OF_RANGE = [  # one of each kind here; tests/unit/test_hostile_values.py tries every option in-process
    (["run", "--concurrent", BIG], "--concurrent"), (["run", "--max-runs", BIG], "--max-runs"),
    (["run", "--max-time", "nan"], "--max-time"), (["list", "runs", "--last", BIG], "--last"),
    (["serve", "--idle-exit", "inf"], "--idle-exit"),
]


def test_numbers_out_of_range_on_the_command_line_are_one_line_errors_naming_the_option(project, reliability):
    for args, option in OUT_OF_RANGE:
        if args[0] == "run":
            args = [*args, "--dry-run", "train.py"]
        result = project.xt(*args, check=False)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        (line,) = result.stderr.strip().splitlines()
        assert option in line and "Traceback" not in line, (args, line)
    checks = len(OUT_OF_RANGE)
    (project.code / "big_hp.yaml").write_text(
        "hyperparameter-distributions:\n  x: [" + ", ".join(str(i) for i in range(60_000)) + "]\n")
    for args, named in ((["--hp-config", "big_hp.yaml"], "job manifest"), (["train.py", f"--lr=[0.1,{2**64}]"], "lr")):
        args = args if args[0] == "train.py" else [*args, "train.py"]
        result = project.xt("run", "--max-runs", "1", *args, check=False)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        (line,) = result.stderr.strip().splitlines()
        assert named in line, line
        checks += 1
    (project.code / "xt_config.yaml").write_text(f"compute-targets: {{local: {{service: local, concurrent: {BIG}}}}}\n")
    result = project.xt("run", "--dry-run", "train.py", check=False)
    assert result.returncode == 2 and "compute-targets.local.concurrent" in result.stderr.strip()
    assert not (project.home / "host.lock").exists() or not host_running(project.home)  # nothing was submitted
    reliability.add("hostile values: numbers out of range in manifest fields, config keys, CLI options (one-line error)",
                    inputs_tried=checks + 1)


def test_reindex_over_a_corrupt_run_stats_and_a_torn_run_log_reports_each_and_keeps_the_rest(project, reliability):
    (project.code / "steps.py").write_text(STEPS)
    out = project.json("run", "--wait", "steps.py", "--lr=[0.1,0.2,0.3]")
    before = {run["name"]: run for run in project.json("list", "runs")}
    stop_host(project)
    runs = project.home / "storage" / "workspaces" / "ws1" / "runs"
    for name in ("run1.1", "run1.2"):  # the "ended" line of each log torn mid-write
        log = runs / name / "run_log.jsonl"
        data = log.read_bytes()
        log.write_bytes(data[: data.rindex(b'"status"')])
    (runs / "run1.2" / "run_stats.json").write_bytes(b'{"status": "compl')

    result = project.xt("admin", "reindex", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "ws1: skipped run1.2: " in result.stdout and "run_stats.json" in result.stdout
    assert "ws1: reindexed 1 jobs, 3 runs, 18 metric records; skipped 1 (listed above)" in result.stdout
    after = {run["name"]: run for run in project.json("list", "runs")}
    assert after["run1.1"] == before["run1.1"] and after["run1.3"] == before["run1.3"]  # nothing intact was lost
    assert after["run1.2"]["metrics"] == before["run1.2"]["metrics"]
    assert after["run1.2"]["status"] == "error"
    assert project.json("view", "job", out["job"])["status"] == "error"
    reliability.add("hostile values: xt admin reindex over a corrupt run_stats.json and two torn run logs (CLI)",
                    items_corrupted=3, skipped_and_reported=1, intact_runs_lost=0)


def stop_host(project):
    """The host idles a little before it exits: stop it now, and wait until its lock is free."""
    project.stop_host()
    deadline = time.monotonic() + 10
    while host_running(project.home) and time.monotonic() < deadline:
        time.sleep(0.05)
