"""Which queued local runs the host starts next (LocalCompute.launchable): oldest first, within
each job's `concurrent` and the machine's limit, whatever other jobs have queued."""
from xt_submit.adapters.compute.tasks import LocalCompute
from xt_submit.domain.messages import RunTask


def task(job, run, concurrent=2):
    return RunTask(workspace="ws1", experiment="e", job=job, run=run, command=f"python t.py --run={run}",
                   code_key="code/x.zip", hparams={"i": run}, target="local", concurrent=concurrent)


def start(compute, tasks):
    for t in tasks:
        assert compute.claim(t)
        compute.set_launched(t.workspace, t.run)


def test_a_job_with_its_slots_full_hides_no_later_jobs_runs_however_many_it_has_queued(tmp_path):
    compute = LocalCompute(str(tmp_path / "compute.db"))
    compute.submit([task("job1", f"run1.{i}") for i in range(1, 3001)])  # more than one look's worth
    start(compute, compute.launchable(4))
    compute.submit([task("job2", f"run2.{i}", concurrent=1) for i in range(1, 4)])
    chosen = compute.launchable(4)  # job1 full (2 of 2): of the machine's 2 free slots, job2 may take 1
    assert [(t.run, t.command, t.hparams) for t in chosen] == [("run2.1", "python t.py --run=run2.1", {"i": "run2.1"})]
    start(compute, chosen)
    assert compute.launchable(4) == []  # both full, the machine not


def test_the_oldest_queued_go_first_across_jobs_up_to_the_machines_limit(tmp_path):
    compute = LocalCompute(str(tmp_path / "compute.db"))
    compute.submit([task("job1", "run1.1"), task("job1", "run1.2"), task("job1", "run1.3")])
    compute.submit([task("job2", "run2.1", concurrent=5), task("job2", "run2.2", concurrent=5)])
    assert [t.run for t in compute.launchable(3)] == ["run1.1", "run1.2", "run2.1"]
    assert [t.run for t in compute.launchable(10)] == ["run1.1", "run1.2", "run2.1", "run2.2"]
    start(compute, compute.launchable(1))  # run1.1
    assert [t.run for t in compute.launchable(2)] == ["run1.2"]  # the machine's 2: run1.1 running, one free
    assert compute.launchable(1) == []


def test_runs_whose_processes_ended_free_their_slots_for_their_own_job_only(tmp_path):
    compute = LocalCompute(str(tmp_path / "compute.db"))
    compute.submit([task("job1", f"run1.{i}") for i in range(1, 5)])
    compute.submit([task("job2", f"run2.{i}", concurrent=1) for i in range(1, 3)])
    start(compute, compute.launchable(3))  # run1.1, run1.2, run2.1: every slot of both jobs taken
    assert compute.launchable(10) == []
    assert [t.run for t in compute.launchable(10, ended={("ws1", "job1"): 1})] == ["run1.3"]
    assert [t.run for t in compute.launchable(10, ended={("ws1", "job1"): 2, ("ws1", "job2"): 1})] == \
        ["run1.3", "run1.4", "run2.2"]
    assert [t.run for t in compute.launchable(3, ended={("ws1", "job2"): 1})] == ["run2.2"]  # the machine's 3: one free
