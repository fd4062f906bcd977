"""Adaptive sweeps (bayesian, dgd), early stopping and live metrics: the pure rules, then the handlers on the
embedded stores, with redelivered and reordered events."""
import math

import pytest

from support.job_steps import WS, finish, names, progress, score, submit, task_runs
from support.pipeline import make_code_zip, make_manifest
from xt_submit import handlers
from xt_submit.domain import adaptive_search, early_stopping, layout, run_log, sweep
from xt_submit.domain.manifest import check_manifest
from xt_submit.domain.messages import (CANCELLED, COMPLETED, STOPPED, CancelRequested, ContractError, EarlyStopping,
                                       JobSubmitted, RunStarted)
from xt_submit.domain.run_query import RunQuery, parse_filter



# --- the rules --------------------------------------------------------------------------------


def quadratic(point):
    return (point["x"] - 0.3) ** 2 + (0.1 if point["opt"] == "sgd" else 0.0)


def sequential_tpe(seed, count):
    """`count` runs one at a time (concurrent 1): each planned from all results before it."""
    params = sweep.compile_space({"x": "$uniform(0, 1)", "opt": ["sgd", "adam"]})
    points, results = [], []
    for index in range(1, count + 1):
        point = adaptive_search.next_point(params, search_type="bayesian", index=index, seed=seed, maximize=False,
                                           results=results, planned=points)
        points.append(point)
        results.append((point, quadratic(point)))
    return points


def test_tpe_plans_the_same_run_from_the_same_results():
    assert sequential_tpe(seed=5, count=14) == sequential_tpe(seed=5, count=14)
    assert sequential_tpe(seed=5, count=14) != sequential_tpe(seed=6, count=14)


def test_tpe_moves_toward_the_optimum_after_its_random_start():
    points = sequential_tpe(seed=11, count=40)
    start = points[:adaptive_search.TPE_STARTUP_RUNS]
    modelled = points[-15:]
    mean = lambda ps: sum(quadratic(p) for p in ps) / len(ps)  # noqa: E731
    assert mean(modelled) < mean(start) / 2  # the model's picks are much better than random ones
    assert sum(p["opt"] == "adam" for p in modelled) >= 10  # it learned the better optimizer
    assert all(0 <= p["x"] <= 1 for p in points)


def test_tpe_keeps_values_in_their_distribution_and_fixed_values_fixed():
    params = sweep.compile_space({"n": "$randint(2, 5)", "q": "$quniform(0, 1, 0.25)", "lr": "$loguniform(-7, -1)",
                                  "fixed": 3, "noise": "$normal(0, 1)"})
    results = [({"n": 2 + i % 3, "q": 0.25 * (i % 4), "lr": math.exp(-7 + i * 0.5), "fixed": 3, "noise": 0.0}, float(i))
               for i in range(12)]
    point = adaptive_search.next_point(params, search_type="bayesian", index=13, seed=1, maximize=True,
                                       results=results, planned=[r[0] for r in results])
    assert isinstance(point["n"], int) and 2 <= point["n"] <= 4  # $randint's high is exclusive
    assert point["q"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert math.exp(-7) <= point["lr"] <= math.exp(-1)
    assert point["fixed"] == 3 and isinstance(point["noise"], float)


def test_dgd_walks_to_neighbours_of_the_best_point_and_never_repeats():
    params = sweep.compile_space({"a": [1, 2, 3, 4], "b": [10, 20, 30]})
    score = lambda p: abs(p["a"] - 3) + abs(p["b"] - 20) / 10  # noqa: E731  best: a=3, b=20
    planned = adaptive_search.first_points(params, search_type="dgd", count=2, seed=3)
    results = [(p, score(p)) for p in planned]
    while True:
        point = adaptive_search.next_point(params, search_type="dgd", index=len(planned) + 1, seed=3,
                                           maximize=False, results=results, planned=planned)
        if point is None:
            break
        best_point, _ = adaptive_search.best(results, maximize=False)
        is_neighbour = sum(point[k] != best_point[k] for k in point) == 1
        assert is_neighbour or all(n in planned for n in adaptive_search._neighbours(params, best_point))
        planned.append(point)
        results.append((point, score(point)))
    assert len(planned) == 12 and len({(p["a"], p["b"]) for p in planned}) == 12  # every point once, then done
    assert {"a": 3, "b": 20} in planned[:8]  # descent reaches the optimum well before the grid runs out


def test_manifest_checks_name_what_an_adaptive_search_needs():
    key, sha = "code/x.zip", ""
    with pytest.raises(ContractError, match="bayesian search needs --max-runs"):
        check_manifest(make_manifest(key, sha, search_type="bayesian"))
    with pytest.raises(ContractError, match="dgd search walks a discrete grid: lr is a random distribution"):
        check_manifest(make_manifest(key, sha, search_type="dgd", hp_space={"lr": "$uniform(0,1)"}))
    with pytest.raises(ContractError, match="runs: a bayesian search decides its runs"):
        check_manifest(make_manifest(key, sha, search_type="bayesian", runs=3, max_runs=5))
    with pytest.raises(ContractError, match="early_stopping.policy: expected one of bandit, median, truncation"):
        check_manifest(make_manifest(key, sha, early_stopping=EarlyStopping(policy="fast")))
    with pytest.raises(ContractError, match="early_stopping.evaluation_interval: expected a whole number >= 1"):
        check_manifest(make_manifest(key, sha, early_stopping=EarlyStopping(policy="median", evaluation_interval=0)))
    with pytest.raises(ContractError, match="early_stopping.slack_factor: expected a finite number >= 0"):
        check_manifest(make_manifest(key, sha, early_stopping=EarlyStopping(policy="bandit", slack_factor=float("nan"))))


POLICY = {"policy": "median", "delay_evaluation": 2, "evaluation_interval": 2, "slack_factor": 0.1,
          "slack_amount": 0.0, "truncation_percentage": 50}


def test_checked_reports_follow_delay_and_interval():
    assert [i for i in range(1, 11) if early_stopping.is_checked(POLICY, i)] == [4, 6, 8, 10]
    kept = early_stopping.keep_checked(POLICY, 3, [[1.0, 1.0, 1.0], [2.0, 1.5, 1.0], [3.0, 2.0, 1.0]])
    assert kept == {"4": [2.0, 1.5, 1.0]}


@pytest.mark.parametrize("kind, own, others, maximize, stops", [
    ("median", [0.9, 0.9, 0.8], [[0.5, 0.6, 0.5], [0.4, 0.5, 0.4]], False, True),   # best 0.8 > median mean 0.55
    ("median", [0.9, 0.9, 0.5], [[0.5, 0.6, 0.5], [0.4, 0.5, 0.4]], False, False),  # best 0.5 < 0.55
    ("median", [0.5, 0.5, 0.5], [], False, False),  # nobody to compare with
    ("bandit", [1.2, 1.0, 1.0], [[1.0, 1.0, 1.0]], False, True),   # 1.2 > 1.0 * 1.1
    ("bandit", [1.05, 1.0, 1.0], [[1.0, 1.0, 1.0]], False, False),
    ("bandit", [0.8, 0.8, 0.8], [[1.0, 1.0, 1.0]], True, True),    # maximize: 0.8 < 1.0 / 1.1
    ("truncation", [0.9, 0, 0], [[0.1, 0, 0], [0.2, 0, 0], [0.3, 0, 0]], False, True),  # worst 2 of 4 go
    ("truncation", [0.15, 0, 0], [[0.1, 0, 0], [0.2, 0, 0], [0.3, 0, 0]], False, False),
    ("truncation", [0.5, 0, 0], [[0.5, 0, 0], [0.5, 0, 0], [0.5, 0, 0]], False, False),  # ties never stop a run
    ("median", [None, None, None], [[0.1, 0.1, 0.1]], False, False),  # a NaN is no evidence
])
def test_policies_decide_on_the_reports_at_the_same_step(kind, own, others, maximize, stops):
    reason = early_stopping.decide({**POLICY, "policy": kind}, maximize=maximize, metric="loss", report=4,
                                   own=own, others=others)
    assert bool(reason) is stops
    if stops:
        assert reason.startswith(f"early-stopped by the {kind} policy at report 4")


# --- the handlers -----------------------------------------------------------------------------


@pytest.mark.parametrize("search_type", ["bayesian", "dgd"])
def test_an_adaptive_job_plans_run_k_once_runs_up_to_k_minus_concurrent_ended(parts, search_type):
    dispatched = submit(parts, search_type=search_type, max_runs=5)
    assert dispatched.runs == ["run1.1", "run1.2"]  # the first `concurrent` runs, as today
    finish(parts, "run1.2", score(parts, "run1.2"))
    assert names(parts) == ["run1.1", "run1.2"]  # run 3 waits for run 1: the plan never depends on finish order
    finish(parts, "run1.1", score(parts, "run1.1"))
    assert names(parts) == ["run1.1", "run1.2", "run1.3", "run1.4"]
    assert parts.ports.stats.get_job(WS, "job1")["run_count"] == 4
    assert task_runs(parts) == ["run1.1", "run1.2", "run1.3", "run1.4"]  # queued on compute, once each
    for run in ("run1.3", "run1.4"):
        finish(parts, run, score(parts, run))
    assert names(parts)[-1] == "run1.5" and len(task_runs(parts)) == 5
    job = parts.ports.stats.get_job(WS, "job1")
    assert job["status"] == "running" and job["search"]["ended"] == "all 5 runs planned"  # not done: run 5 runs
    finish(parts, "run1.5", score(parts, "run1.5"))
    job = parts.ports.stats.get_job(WS, "job1")
    assert job["status"] == COMPLETED and job["run_count"] == 5
    points = [parts.ports.stats.get_run(WS, n)["hparams"] for n in names(parts)]
    if search_type == "dgd":
        assert len({(p["x"], p["opt"]) for p in points}) == 5  # never a point twice
    best = min(names(parts), key=lambda n: score(parts, n))
    assert job["search"]["best"]["run"] == best and job["search"]["best"]["value"] == pytest.approx(score(parts, best))


def test_a_redelivered_or_reordered_finish_plans_no_run_twice_and_the_same_runs(parts, tmp_path):
    from xt_submit.bootstrap import embedded

    def play(parts, order):
        submit(parts, search_type="bayesian", max_runs=6, seed=42)
        done = set()
        while len(done) < 6:
            live = [n for n in names(parts) if n not in done]
            run = live[order % len(live)] if len(live) > 1 else live[0]
            event = finish(parts, run, score(parts, run))
            handlers.run_finished(event, parts.ports)  # redelivered
            done.add(run)
        return [parts.ports.stats.get_run(WS, n)["hparams"] for n in names(parts)]

    first = play(parts, 0)
    second = play(embedded(tmp_path / "other"), 1)  # runs end in another order
    assert len(first) == 6 and first == second
    assert parts.ports.stats.get_job(WS, "job1")["status"] == COMPLETED


def test_cancelling_an_adaptive_job_ends_its_search(parts):
    submit(parts, search_type="dgd", max_runs=8)
    handlers.cancel_runs(CancelRequested(workspace=WS, job="job1", requested_at=130.0), parts.ports)
    finish(parts, "run1.1", 0.1, status=CANCELLED)
    finish(parts, "run1.2", 0.2, status=CANCELLED)
    job = parts.ports.stats.get_job(WS, "job1")
    assert names(parts) == ["run1.1", "run1.2"] and job["status"] == CANCELLED
    assert job["search"]["ended"] == "cancelled by request"


def test_live_metrics_reach_the_run_record_and_an_older_report_does_not_replace_them(parts):
    submit(parts, hp_space={"x": [1, 2]})
    handlers.run_started(RunStarted(workspace=WS, job="job1", run="run1.1", node_id="n1", started_at=150.0),
                         parts.ports)
    handlers.run_progress(progress("run1.1", [0.9, 0.5], log_bytes=200), parts.ports)
    handlers.run_progress(progress("run1.1", [0.9], log_bytes=100), parts.ports)  # late
    record = parts.ports.stats.get_run(WS, "run1.1")
    assert record["metrics"] == {"loss": 0.5} and record["status"] == "running"
    query = RunQuery(workspace=WS, filters=[parse_filter("metrics.loss<0.6")])
    assert [r["name"] for r in parts.ports.stats.query_runs(query)] == ["run1.1"]  # filters see live values


def test_early_stopping_stops_the_run_behind_and_its_end_is_stopped(parts):
    policy = EarlyStopping(policy="median", delay_evaluation=1, evaluation_interval=1)
    submit(parts, hp_space={"x": [1, 2, 3]}, concurrent=3, early_stopping=policy)
    assert parts.compute.launchable(10)[0].primary_metric == "loss"  # nodes report the primary metric
    for run in ("run1.1", "run1.2", "run1.3"):
        handlers.run_started(RunStarted(workspace=WS, job="job1", run=run, node_id="n1", started_at=150.0),
                             parts.ports)
        parts.compute.claim(next(t for t in parts.compute.launchable(10) if t.run == run))
        parts.compute.set_launched(WS, run)
    assert handlers.run_progress(progress("run1.1", [0.5, 0.3, 0.2]), parts.ports) == ""
    assert handlers.run_progress(progress("run1.2", [0.5, 0.35, 0.25]), parts.ports) == ""
    reason = handlers.run_progress(progress("run1.3", [0.9, 0.8, 0.8]), parts.ports)
    assert reason.startswith("early-stopped by the median policy at report 2: best loss so far 0.8")
    assert handlers.run_progress(progress("run1.3", [0.9, 0.8, 0.8], log_bytes=150), parts.ports) == ""  # once
    stopped = parts.ports.stats.get_run(WS, "run1.3")
    assert stopped["stopping"] == reason
    # ended now, as a cancel ends a run: a node killed outright (Batch) may never report
    assert (stopped["status"], stopped["reason"], stopped["ended"], stopped["exit_code"]) == (STOPPED, reason, 160.0, None)
    assert [t["run"] for t in parts.compute.launched() if t.get("cancel_requested")] == ["run1.3"]
    log = run_log.parse(parts.ports.storage.read(layout.run_log_key(WS, "run1.3")))
    assert log[-1]["event"] == "early_stopped" and log[-1]["data"]["reason"] == reason
    finish(parts, "run1.3", 0.8, status=CANCELLED)  # the node stops it as for a cancel
    for run in ("run1.1", "run1.2"):
        finish(parts, run, 0.2)
    record = parts.ports.stats.get_run(WS, "run1.3")
    assert record["status"] == STOPPED and record["reason"] == reason and record["metrics"] == {"loss": 0.8}
    assert record["exit_code"] is not None  # the node's report, after the stop, still filled in its end
    job = parts.ports.stats.get_job(WS, "job1")
    assert job["status"] == COMPLETED and job["counts"] == {STOPPED: 1, COMPLETED: 2}


def test_reindex_rebuilds_an_adaptive_job_with_the_runs_its_search_added(parts):
    from xt_submit.handlers.reindex import rebuild_workspace

    submit(parts, search_type="dgd", max_runs=4)
    for run in ("run1.1", "run1.2", "run1.3", "run1.4"):
        finish(parts, run, score(parts, run))
    before = {r["name"]: (r["run_index"], r["hparams"], r["status"]) for r in parts.ports.stats.list_runs(WS, job="job1")}
    job_before = parts.ports.stats.get_job(WS, "job1")
    rebuild_workspace(parts.ports, WS)
    after = {r["name"]: (r["run_index"], r["hparams"], r["status"]) for r in parts.ports.stats.list_runs(WS, job="job1")}
    job_after = parts.ports.stats.get_job(WS, "job1")
    assert after == before and len(after) == 4
    assert (job_after["status"], job_after["run_count"], job_after["search"]) == \
        (job_before["status"], job_before["run_count"], job_before["search"])
    assert task_runs(parts) == ["run1.1", "run1.2", "run1.3", "run1.4"]  # nothing planned twice


def test_a_live_runs_history_comes_from_its_shipped_log_until_the_index_has_it(parts):
    from xt_submit.services.run_reports import metric_history

    submit(parts, hp_space={"x": [1, 2]})
    key = layout.run_log_key(WS, "run1.1")
    parts.ports.storage.create_log(key, run_log.record(100.0, "hparams", {"x": 1}))
    for step in (1, 2):
        parts.ports.storage.append(key, run_log.record(150.0 + step, "metrics", {"step": step, "loss": 1 / step}))
    handlers.run_started(RunStarted(workspace=WS, job="job1", run="run1.1", node_id="n1", started_at=150.0),
                         parts.ports)
    live = metric_history(parts.ports.stats, WS, ["run1.1"], storage=parts.ports.storage)["run1.1"]
    assert [(m["step"], m["value"]) for m in live] == [(1, 1.0), (2, 0.5)]
    assert metric_history(parts.ports.stats, WS, ["run1.2"], storage=parts.ports.storage) == {"run1.2": []}
    finish(parts, "run1.1", 0.25)  # appends step 1 again as its last metric, and the index ingests the log
    ended = metric_history(parts.ports.stats, WS, ["run1.1"], storage=parts.ports.storage)["run1.1"]
    assert ended == parts.ports.stats.get_metrics(WS, "run1.1") and len(ended) == 3


def adaptive_lifecycle(parts):
    """A bayesian job of three runs, two at once: dispatch, the first run's end (which plans run 3),
    the second's, a cancel of the job."""
    from support.pipeline import finish_node, finished, node_writes, started

    key, sha = make_code_zip(parts)
    manifest = make_manifest(key, sha, search_type="bayesian", max_runs=3, concurrent=2,
                             hp_space={"x": "$uniform(0, 1)"})
    return [
        ("dispatch", None, handlers.dispatch_job, JobSubmitted(submission_id="sub-1", manifest=manifest,
                                                               submitted_at=100.0)),
        ("start run1.1", lambda s: node_writes(s, "run1.1", finished=False), handlers.run_started, started("run1.1")),
        ("finish run1.1", lambda s: finish_node(s, "run1.1"), handlers.run_finished, finished("run1.1")),
        ("finish run1.2", lambda s: node_writes(s, "run1.2", finished=True), handlers.run_finished,
         finished("run1.2")),
        ("cancel job1", None, handlers.cancel_runs, CancelRequested(workspace=WS, job="job1", requested_at=130.0)),
    ]


def test_a_crash_after_any_side_effect_of_an_adaptive_job_then_redelivery_reaches_the_same_state(tmp_path):
    from support.pipeline import run_steps, state_of
    from xt_submit.bootstrap import embedded

    def comparable(state):
        """Queued messages as a set (at-least-once), and tasks without their row ids (an insert a
        redelivery repeats may use up an id; nothing refers to it)."""
        tables = dict(state["tables"], queue=sorted(set(state["tables"]["queue"])))
        tables["compute.db:tasks"] = sorted(row.split(", ", 1)[1] for row in tables["compute.db:tasks"])
        return {**state, "tables": tables}

    baseline = embedded(tmp_path / "baseline")
    effects = run_steps(baseline, adaptive_lifecycle(baseline))
    expected = comparable(state_of(baseline))
    assert [r["name"] for r in baseline.ports.stats.list_runs(WS, job="job1")] == ["run1.1", "run1.2", "run1.3"]
    crashes = 0
    for i, count in enumerate(effects):
        for k in range(1, count + 1):
            parts = embedded(tmp_path / f"fault-{i}-{k}")
            run_steps(parts, adaptive_lifecycle(parts), fail_at=(i, k))
            assert comparable(state_of(parts)) == expected, f"crash in step {i} after side effect {k}"
            crashes += 1
    assert crashes >= 15


def test_a_finished_runs_reports_still_count_for_the_runs_still_running(parts):
    policy = EarlyStopping(policy="median", delay_evaluation=1, evaluation_interval=1)
    submit(parts, hp_space={"x": [1, 2]}, concurrent=2, early_stopping=policy)
    for run in ("run1.1", "run1.2"):
        handlers.run_started(RunStarted(workspace=WS, job="job1", run=run, node_id="n1", started_at=150.0),
                             parts.ports)
    assert handlers.run_progress(progress("run1.1", [0.5, 0.3, 0.2]), parts.ports) == ""
    finish(parts, "run1.1", 0.2)  # ended before the other got as far
    reason = handlers.run_progress(progress("run1.2", [0.9, 0.8, 0.8]), parts.ports)
    assert reason.startswith("early-stopped by the median policy at report 2")
