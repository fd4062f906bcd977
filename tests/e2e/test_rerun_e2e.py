"""`xt rerun --failed JOB`, `--status`, and `--set`: a new job with exactly those runs' code snapshot,
commands and hparams (issue 15, recovery)."""
import pytest

FLAKY = """import sys
from xt_submit import Run
run = Run()
lr = float([a for a in sys.argv if a.startswith("--lr=")][0].split("=")[1])
run.log_metrics({"loss": lr})
sys.exit(3 if lr > 0.25 else 0)
"""


@pytest.fixture(scope="module")
def half_failed(tmp_path_factory):
    """job1: four runs, the second and fourth ended in error (one sweep for the module's tests)."""
    from support.cli_project import Project

    project = Project(tmp_path_factory.mktemp("rerun"))
    (project.code / "train.py").write_text(FLAKY)
    job = project.json("run", "train.py", "--lr=[0.1,0.3,0.2,0.5]", "--opt=[sgd]")
    runs = {r["name"]: r for r in _ended(project, job["job"])}
    assert [r["status"] for r in runs.values()] == ["completed", "error", "completed", "error"]
    yield project, job["job"], runs
    project.stop_host()


def test_rerun_failed_queues_exactly_the_failed_runs_with_their_commands(half_failed):
    project, job, original = half_failed
    out = project.json("rerun", job, "--failed")
    assert out["rerun_of"] == ["run1.2", "run1.4"] and len(out["runs"]) == 2
    rerun = _ended(project, out["job"])
    assert [(r["hparams"], r["command"]) for r in rerun] == [
        (original["run1.2"]["hparams"], original["run1.2"]["command"]),
        (original["run1.4"]["hparams"], original["run1.4"]["command"])]
    assert {r["tags"]["rerun_of"] for r in rerun} == {job}


def test_rerun_with_set_changes_the_hparam_of_every_rerun_run(half_failed):
    project, job, original = half_failed
    out = project.json("rerun", job, "--status", "error", "--set", "lr=0.2")
    rerun = _ended(project, out["job"])
    assert [(r["hparams"], r["status"]) for r in rerun] == [({"lr": 0.2, "opt": "sgd"}, "completed")] * 2
    assert [r["command"] for r in rerun] == ["python train.py --lr=0.2 --opt=sgd"] * 2
    one = project.json("rerun", "run1.1", "--set", "opt=adam")
    (run,) = _ended(project, one["job"])
    assert run["hparams"] == {"lr": 0.1, "opt": "adam"} and run["tags"]["rerun_of"] == "run1.1"


@pytest.mark.parametrize("args, expected", [
    (("--failed", "job9"), "job job9 not found in workspace ws1"),
    (("--status", "done", "job1"), "--status: expected end states among cancelled, completed, error, stopped, got done"),
    (("--status", "cancelled", "job1"), "job1: no runs ended cancelled: nothing to rerun"),
    (("run1.1", "--set", "lr"), "--set: expected name=value (one fixed value), got 'lr'"),
    (("run1.1", "--set", "lr=[1,2]"), "--set: expected name=value (one fixed value), got 'lr=[1,2]'"),
    (("run1.1", "--set", "lr=99999999999999999999999"),
     "rerun: hp_points[0].lr: 99999999999999999999999 is a whole number outside the 64-bit range every stats "
     "store keeps: write it as a float or as text"),
    (("--failed", "run1.1"), "job: expected a name like job7, got 'run1.1'"),
])
def test_bad_reruns_are_one_line_and_submit_nothing(half_failed, args, expected):
    project, _, _ = half_failed
    jobs = project.json("list", "jobs")
    result = project.xt("rerun", *args, check=False)
    assert result.returncode == 2 and result.stderr.strip() == f"xt: {expected}"
    assert project.json("list", "jobs") == jobs  # nothing submitted


def _ended(project, job):
    project.wait_job(job)
    return project.json("list", "runs", "--job", job)
