"""`xt cancel all [--target T]`: every unfinished job of the workspace stops; ended jobs stay as they were."""
SLEEPER = "import sys, time\nfrom xt_submit import Run\nRun()\ntime.sleep(float(sys.argv[1].split('=')[1]))\n"


def _status(project, job):
    (record,) = [j for j in project.json("list", "jobs") if j["name"] == job]
    return record["status"]


def test_cancel_all_stops_every_unfinished_job_and_only_those(project):
    (project.code / "train.py").write_text(SLEEPER)
    done = project.json("run", "train.py", "--s=0")["job"]
    assert project.wait_job(done)["status"] == "completed"
    busy = [project.json("run", "--concurrent", "1", "train.py", "--s=[600,600]")["job"] for _ in range(2)]
    refused = project.xt("cancel", "all", "--target", "nope", check=False)
    assert refused.returncode == 2 and "--target: expected a compute-targets name (" in refused.stderr and "got 'nope'" in refused.stderr
    out = project.xt("cancel", "all").stdout
    assert out.strip() == f"cancel requested: {', '.join(busy)}"
    for job in busy:
        assert project.wait_job(job)["status"] == "cancelled"
    assert {r["status"] for job in busy for r in project.json("list", "runs", "--job", job)} == {"cancelled"}
    assert _status(project, done) == "completed"
    assert project.xt("cancel", "all").stdout.strip() == "nothing to cancel: every job has ended"
