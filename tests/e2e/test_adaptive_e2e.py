"""Adaptive search and early stopping on the embedded default, through the real CLI, host and runs
(issue 15), and a live run's metrics in its record while it runs (issue 14)."""
import time

BOWL = """import sys
from xt_submit import Run
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
x, opt = float(args["x"]), args["opt"]
Run().log_metrics({"loss": (x - 0.3) ** 2 + (0.5 if opt == "sgd" else 0.0)})
"""

CURVES = """import sys, time
from xt_submit import Run
lr = float([a for a in sys.argv if a.startswith("--lr=")][0].split("=")[1])
run = Run()
slow = lr > 1  # the bad run is also the slow one: it reaches each step after the others did
for step in range(1, (60 if slow else 12) + 1):
    run.log_metrics({"step": step, "loss": lr / step})
    run.flush()  # each step reaches the log at once (the Run API buffers for up to a second)
    time.sleep(0.25 if slow else 0.05)
"""


def test_bayesian_search_plans_its_runs_from_results_up_to_max_runs(tmp_path):
    from support.cli_project import Project

    project = Project(tmp_path)
    (project.code / "train.py").write_text(BOWL)
    try:
        out = project.json("run", "--search-type", "bayesian", "--max-runs", "5", "--concurrent", "2", "--seed", "3",
                           "train.py", "--x=[$uniform(0,1)]", "--opt=[sgd,adam]")
        assert out["runs"] == [f"{out['job']}.1".replace("job", "run"), f"{out['job']}.2".replace("job", "run")]
        job = project.wait_job(out["job"])
        runs = project.json("list", "runs", "--job", out["job"])
        assert job["status"] == "completed" and len(runs) == 5 and {r["status"] for r in runs} == {"completed"}
        best = min(runs, key=lambda r: r["metrics"]["loss"])
        assert job["search"]["best"]["run"] == best["name"]
        assert job["search"]["best"]["value"] == best["metrics"]["loss"]
        shown = project.xt("view", "job", out["job"]).stdout
        assert "bayesian search: 5 of 5 runs" in shown and best["name"] in shown
    finally:
        project.stop_host()


def test_early_stopping_stops_the_run_behind_and_its_end_is_stopped(tmp_path):
    from support.cli_project import Project

    project = Project(tmp_path)
    project.env["XT_PROGRESS_SECONDS"] = "0.3"
    (project.code / "train.py").write_text(CURVES)
    try:
        out = project.json("run", "--concurrent", "3", "--early-policy", "median", "--delay-evaluation", "2",
                           "train.py", "--lr=[0.1,0.12,5.0]")
        slow = out["runs"][2]
        job = project.wait_job(out["job"])
        runs = {r["name"]: r for r in project.json("list", "runs", "--job", out["job"])}
        stopped = runs[slow]
        assert stopped["status"] == "stopped", stopped
        assert stopped["reason"].startswith("early-stopped by the median policy at report")
        assert stopped["metrics"]["loss"] > 5.0 / 60 + 1e-9  # loss = 5 / step: it ended before step 60, metrics kept
        assert [runs[n]["status"] for n in out["runs"][:2]] == ["completed", "completed"]
        assert job["status"] == "completed"
        log = project.json("view", "log", slow)
        assert [r["data"]["reason"] for r in log if r["event"] == "early_stopped"] == [stopped["reason"]]
    finally:
        project.stop_host()


WAITS = """import os, time
from xt_submit import Run
run = Run()
run.log_metrics({"step": 1, "loss": 0.75})
run.flush()
release = os.environ["INVOCATIONS"] + ".release"
while not os.path.exists(release):  # the test lets it end once it saw the live values
    time.sleep(0.05)
run.log_metrics({"step": 2, "loss": 0.5})
"""


def test_a_running_runs_latest_metrics_show_in_list_view_and_filters(tmp_path):
    from support.cli_project import Project

    project = Project(tmp_path)
    project.env["XT_PROGRESS_SECONDS"] = "0.2"
    (project.code / "train.py").write_text(WAITS)
    try:
        out = project.json("run", "train.py")
        (run,) = out["runs"]
        deadline, record = time.time() + 90, None
        while time.time() < deadline:
            record = project.json("view", "run", run)
            if record["metrics"]:
                break
            time.sleep(0.1)
        assert record["status"] == "running" and record["metrics"] == {"loss": 0.75}
        assert [r["name"] for r in project.json("list", "runs", "--filter", "metrics.loss<0.8")] == [run]
        assert [m["value"] for m in project.json("view", "metrics", run)[run]] == [0.75]  # its history so far
        (tmp_path / "invocations.txt.release").write_text("")
        project.wait_job(out["job"])
        assert project.json("view", "run", run)["metrics"] == {"loss": 0.5}
    finally:
        (tmp_path / "invocations.txt.release").write_text("")
        project.stop_host()


RESUMABLE = """from xt_submit import Run
run = Run()
state = run.get_checkpoint() or {"epoch": 0}
start = state["epoch"]
for epoch in range(start + 1, start + 3):
    run.set_checkpoint({"epoch": epoch})
run.log_metrics({"started_at_epoch": start, "ended_at_epoch": start + 2})
"""


def test_resume_name_starts_each_run_from_that_runs_last_checkpoint(tmp_path):
    from support.cli_project import Project

    project = Project(tmp_path)
    (project.code / "train.py").write_text(RESUMABLE)
    try:
        first = project.json("run", "--wait", "train.py")
        (run,) = project.json("list", "runs", "--job", first["job"])
        assert run["metrics"] == {"started_at_epoch": 0, "ended_at_epoch": 2}
        second = project.json("run", "--wait", "--resume-name", run["name"], "train.py", "--x=[1,2]")
        resumed = project.json("list", "runs", "--job", second["job"])
        assert [r["metrics"] for r in resumed] == [{"started_at_epoch": 2, "ended_at_epoch": 4}] * 2
        missing = project.xt("run", "--resume-name", "run9.9", "train.py", check=False)
        assert missing.returncode != 0 and missing.stderr.strip().splitlines() == [
            "xt: run run9.9 not found in workspace ws1"]
    finally:
        project.stop_host()


FAILS_ONCE = """import os, sys
with open(os.environ["INVOCATIONS"], "a+") as f:
    f.seek(0)
    before = len(f.read().split())
    f.write("x\\n")
sys.exit(3 if before == 0 else 0)
"""


def test_retries_run_a_failed_run_again_and_the_job_completes(tmp_path):
    from support.cli_project import Project

    project = Project(tmp_path)
    (project.code / "train.py").write_text(FAILS_ONCE)
    try:
        out = project.json("run", "--wait", "--retries", "2", "train.py")
        runs = project.json("list", "runs", "--job", out["job"])
        assert out["status"] == "completed" and [(r["status"], r["retry_of"], r["attempt"]) for r in runs] == [
            ("error", None, None), ("completed", runs[0]["name"], 2)]
    finally:
        project.stop_host()
