"""A run's start and end in a job without an adaptive search cost the same at any job size: the
handlers never list, recount or roll up the job's runs for them (roll_job's claim), counted on the
real embedded store."""
import collections

import pytest

from support.job_steps import WS, submit
from xt_submit import handlers
from xt_submit.domain.messages import COMPLETED, ERROR, RunFinished, RunStarted
from xt_submit.ports import StatsStore

PER_JOB = {"list_runs", "recount_job", "job_rollup", "query_runs"}


def spy_on_store(stats):
    """Wrap each of the store's port methods on the instance (internal calls go through them too)."""
    calls = collections.Counter()
    for name in vars(StatsStore):
        if name.startswith("_") or not callable(getattr(stats, name, None)):
            continue

        def counted(*args, _name=name, _real=getattr(stats, name), **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        setattr(stats, name, counted)
    return calls


def events_of_one_run(parts, run, status):
    calls = spy_on_store(parts.ports.stats)
    handlers.run_started(RunStarted(workspace=WS, job="job1", run=run, node_id="n1", started_at=110.0), parts.ports)
    started = dict(calls)
    calls.clear()
    handlers.run_finished(RunFinished(workspace=WS, job="job1", run=run, node_id="n1", status=status,
                                      exit_code=0 if status == COMPLETED else 1, started_at=110.0, ended_at=120.0),
                          parts.ports)
    return started, dict(calls)


@pytest.mark.parametrize("status", [COMPLETED, ERROR])
def test_start_and_end_of_a_run_in_a_1000_run_job_never_list_or_recount_its_runs(tmp_path, status):
    from xt_submit.bootstrap import embedded

    costs = {}
    for size in (3, 1000):
        parts = embedded(tmp_path / f"home-{size}")
        submit(parts, hp_space={"x": list(range(size))})
        assert parts.ports.stats.get_job(WS, "job1")["run_count"] == size
        started, finished = events_of_one_run(parts, "run1.2", status)
        assert not PER_JOB & set(started) and not PER_JOB & set(finished), (size, started, finished)
        job = parts.ports.stats.get_job(WS, "job1")
        assert job["status"] == "running" and job["counts"][status] == 1
        costs[size] = (started, finished)
    assert costs[1000] == costs[3]  # the same store calls, one by one
