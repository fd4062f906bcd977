"""bench/p9_event_cost.py still runs (tiny sizes), and its claim holds where it can be counted: an
event does the same work in the index (SQLite steps, store calls) in a small job and a large one."""
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


def work_per_event(root, runs, events=3):
    """Per run_started and run_finished of the bench's job: the SQLite virtual machine steps of the
    stats index (a scan of the job's runs costs steps per run) and the store's port calls."""
    import p9_event_cost as p9

    from xt_submit import handlers
    from xt_submit.bootstrap import embedded
    from xt_submit.domain import layout
    from xt_submit.domain.messages import COMPLETED, RunFinished, RunStarted

    parts = embedded(root / f"home-{runs}")
    p9.job_of(parts, runs)
    stats, counted = parts.ports.stats, {"steps": 0, "calls": 0}

    def step():
        counted["steps"] += 1
        return 0  # go on

    stats._db.set_progress_handler(step, 1)  # the adapter's own connection: every step of every statement
    for name in ("get_job", "get_run", "update_job", "update_run", "update_runs", "list_runs", "recount_job",
                 "job_rollup", "replace_metrics", "query_runs", "insert_runs"):
        def call(*args, _real=getattr(stats, name), **kwargs):
            counted["calls"] += 1
            return _real(*args, **kwargs)
        setattr(stats, name, call)

    work = {"started": [], "finished": []}
    for index in range(2, events + 2):  # not the first start (it sets the job's start) nor the last end
        run = layout.run_name(1, index)
        for kind, handle, event in (
                ("started", handlers.run_started, RunStarted(workspace=p9.WS, job="job1", run=run, node_id="n1",
                                                             started_at=110.0)),
                ("finished", handlers.run_finished, RunFinished(workspace=p9.WS, job="job1", run=run, node_id="n1",
                                                                status=COMPLETED, exit_code=0, started_at=110.0,
                                                                ended_at=120.0))):
            counted.update(steps=0, calls=0)
            handle(event, parts.ports)
            work[kind].append((counted["steps"], counted["calls"]))
    return {kind: max(samples) for kind, samples in work.items()}


def test_an_events_work_does_not_grow_with_the_job(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    small, large = work_per_event(tmp_path, 5), work_per_event(tmp_path, 600)
    for kind in ("started", "finished"):
        (small_steps, small_calls), (large_steps, large_calls) = small[kind], large[kind]
        assert large_calls == small_calls, (kind, small, large)
        # generous: reading the 600 runs once costs thousands of steps more, ~10 per run
        assert large_steps <= 1.5 * small_steps, (kind, small, large)
