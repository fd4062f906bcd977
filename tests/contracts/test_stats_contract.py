"""The stats store port: one suite, run against every adapter (SQLite and the MongoDB API)."""

import pytest

from support.pipeline import lifecycle, run_steps
from xt_submit.bootstrap import embedded
from xt_submit.ports import NotFound, Ports
from xt_submit.domain.run_log import MetricRow


def run_doc(name, **fields):
    job_number, index = name[3:].split(".")
    return {"workspace": "ws1", "name": name, "job": f"job{job_number}", "job_number": int(job_number),
            "run_index": int(index), "status": "queued", "hparams": {"lr": 0.1}, "metrics": {}, "tags": {}, **fields}


def test_job_names_are_per_workspace_and_the_same_for_a_redelivery(stats_store):
    assert [stats_store.assign_job_name(ws, sub) for ws, sub in
            [("ws1", "a"), ("ws1", "b"), ("ws2", "c"), ("ws1", "a"), ("ws1", "d")]] == ["job1", "job2", "job1", "job1", "job3"]
    stats_store.restore_job_name("ws1", "old", 10)
    assert stats_store.assign_job_name("ws1", "e") == "job11"
    assert stats_store.find_job_by_submission("ws1", "a") is None  # named, not yet recorded
    stats_store.insert_job({"workspace": "ws1", "name": "job1", "number": 1, "status": "queued", "run_count": 1})
    assert stats_store.find_job_by_submission("ws1", "a") == "job1"


def test_a_job_read_without_its_hp_space_is_the_rest_of_its_record(stats_store):
    space = {"lr": [0.001 * k for k in range(10)], "seed": list(range(2000))}  # a sweep's values: ~20 KB
    stats_store.insert_job({"workspace": "ws1", "name": "job1", "number": 1, "status": "queued", "run_count": 20000,
                            "hp_space": space, "command": "python train.py"})
    stats_store.update_job("ws1", "job1", {"status": "running"})
    whole = stats_store.get_job("ws1", "job1")
    assert whole["hp_space"] == space and whole["status"] == "running"
    light = stats_store.get_job("ws1", "job1", hp_space=False)
    assert "hp_space" not in light and light == {k: v for k, v in whole.items() if k != "hp_space"}
    with pytest.raises(NotFound):
        stats_store.get_job("ws1", "job9", hp_space=False)


def test_workspaces_and_experiments(stats_store):
    for ws, job, experiment in (("ws1", "job1", "mnist"), ("ws1", "job2", "cifar"), ("ws2", "job1", "mnist")):
        stats_store.insert_job({"workspace": ws, "name": job, "number": int(job[3:]), "status": "queued",
                                "run_count": 1, "experiment": experiment})
    assert stats_store.workspaces() == ["ws1", "ws2"]
    assert stats_store.experiments("ws1") == ["cifar", "mnist"]


def test_inserts_keep_the_first_record(stats_store):
    stats_store.insert_runs([run_doc("run1.1", command="first")])
    stats_store.insert_runs([run_doc("run1.1", command="second"), run_doc("run1.2")])
    assert stats_store.get_run("ws1", "run1.1")["command"] == "first"
    assert [r["name"] for r in stats_store.list_runs("ws1", job="job1")] == ["run1.1", "run1.2"]


def test_has_key_says_whether_any_run_of_the_workspace_has_a_metric_hparam_or_tag(stats_store):
    stats_store.insert_runs([run_doc("run1.1", hparams={"lr": 0.1, "warm": None}, tags={"note": "x"}),
                             run_doc("run1.2", hparams={"opt": "adam"})])
    stats_store.update_run("ws1", "run1.2", {"status": "completed", "metrics": {"loss": 0.5}})
    has = stats_store.has_key
    assert has("ws1", "hparams", "lr") and has("ws1", "hparams", "opt") and has("ws1", "hparams", "warm")
    assert has("ws1", "metrics", "loss") and has("ws1", "tags", "note")
    assert not has("ws1", "metrics", "lr") and not has("ws1", "hparams", "loss") and not has("ws1", "tags", "lr")
    assert not has("ws1", "metrics", "los") and not has("ws2", "hparams", "lr")


def test_conditional_updates_never_move_a_run_backwards(stats_store):
    stats_store.insert_runs([run_doc("run1.1")])
    assert stats_store.update_run("ws1", "run1.1", {"status": "completed", "metrics": {"loss": 0.5}})
    assert not stats_store.update_run("ws1", "run1.1", {"status": "running"}, only_if_status_in=["queued"])
    run = stats_store.get_run("ws1", "run1.1")
    assert run["status"] == "completed" and run["metrics"] == {"loss": 0.5}
    with pytest.raises(NotFound, match="run run9.9 not found in workspace ws1"):
        stats_store.update_run("ws1", "run9.9", {"status": "error"})
    with pytest.raises(NotFound):
        stats_store.get_job("ws1", "job9")


def test_a_bulk_update_changes_only_runs_in_the_given_statuses_and_says_which(stats_store, monkeypatch):
    from xt_submit.adapters.stats import mongo, sqlite

    for store in (mongo, sqlite):
        monkeypatch.setattr(store, "_BULK_NAMES", 50)  # several batches, from a few runs
    stats_store.insert_runs([run_doc(f"run1.{k}") for k in range(1, 123)])
    stats_store.update_run("ws1", "run1.2", {"status": "completed"})
    stats_store.update_run("ws1", "run1.122", {"status": "running", "reason": "r" * 20_000})  # set aside on Mongo
    names = [f"run1.{k}" for k in range(1, 123)] + ["run9.9"]
    changed = stats_store.update_runs("ws1", names, {"status": "cancelled", "ended": 5.0, "reason": "by request"},
                                      only_if_status_in=["queued", "running"])
    assert changed == [n for n in names if n not in ("run1.2", "run9.9")]  # in order; unknown names skipped
    assert stats_store.get_run("ws1", "run1.2")["status"] == "completed"
    for name in ("run1.1", "run1.122"):
        run = stats_store.get_run("ws1", name)
        assert (run["status"], run["ended"], run["reason"]) == ("cancelled", 5.0, "by request")
    assert stats_store.job_rollup("ws1", "job1")["counts"] == {"cancelled": 121, "completed": 1}
    assert stats_store.update_runs("ws1", names, {"status": "error"}, only_if_status_in=["queued"]) == []


def test_metric_records_are_replaced_in_bulk(stats_store):
    stats_store.insert_runs([run_doc("run1.1")])
    rows = [MetricRow(step, "loss", 1 / step, 100.0 + step) for step in range(1, 401)]
    stats_store.replace_metrics("ws1", "run1.1", rows)
    stats_store.replace_metrics("ws1", "run1.1", rows)  # a redelivered finish
    got = stats_store.get_metrics("ws1", "run1.1")
    assert len(got) == 400 and got[0] == {"step": 1, "name": "loss", "value": 1.0, "time": 101.0}
    assert [g["step"] for g in got] == list(range(1, 401))


def test_metric_records_stream_from_a_one_pass_iterable(stats_store, monkeypatch):
    """run_finished hands over a generator over the log being read: consumed once, in batches, in order."""
    from xt_submit.adapters.stats import mongo

    monkeypatch.setattr(mongo, "METRIC_DOCS_PER_WRITE", 2)  # several writes of several documents of many rows
    stats_store.insert_runs([run_doc("run1.1")])
    stats_store.replace_metrics("ws1", "run1.1", [MetricRow(1, "stale", 9.0, 1.0)] * 3)
    count = 350
    stats_store.replace_metrics("ws1", "run1.1", (MetricRow(step, "loss", step / 2, None) for step in range(count)))
    got = stats_store.get_metrics("ws1", "run1.1")
    assert len(got) == count and {g["name"] for g in got} == {"loss"}  # the earlier records replaced
    assert [g["step"] for g in got] == list(range(count)) and got[-1]["value"] == (count - 1) / 2


def test_rollup_silent_runs_and_clearing(stats_store):
    stats_store.insert_runs([run_doc("run1.1", status="completed", started=10.0, ended=20.0),
                             run_doc("run1.2", status="running", started=12.0, heartbeat=50.0),
                             run_doc("run1.3", status="running", started=15.0),
                             run_doc("run1.4")])
    assert stats_store.job_rollup("ws1", "job1") == {"counts": {"completed": 1, "running": 2, "queued": 1},
                                                     "started": 10.0, "ended": 20.0}
    assert sorted(r["name"] for r in stats_store.silent_runs(before=40.0)) == ["run1.3"]
    assert sorted(r["name"] for r in stats_store.silent_runs(before=60.0)) == ["run1.2", "run1.3"]
    stats_store.clear_workspace("ws1")
    assert stats_store.list_runs("ws1") == []


def test_a_live_runs_latest_metrics_reach_this_store_and_its_filters(tmp_path, stats_store):
    """RunProgress on this store: the running run's record and the last-metrics index have the values."""
    from support.pipeline import live_metrics
    from xt_submit import handlers
    from xt_submit.domain.run_query import RunQuery, parse_filter

    base = embedded(tmp_path / "under-test")
    ports = Ports(storage=base.ports.storage, stats=stats_store, compute=base.ports.compute,
                  publisher=base.ports.publisher)
    parts = base._replace(ports=ports)
    run_steps(parts, lifecycle(parts)[:3])  # dispatched, two runs started
    handlers.run_progress(live_metrics("run1.2", {"loss": 0.75}), ports)
    handlers.run_progress(live_metrics("run1.2", {"acc": 0.5}, log_bytes=400), ports)  # merged with the earlier
    handlers.run_progress(live_metrics("run1.2", {"acc": 0.1}, log_bytes=350), ports)  # older: ignored
    record = stats_store.get_run("ws1", "run1.2")
    assert record["status"] == "running" and record["metrics"] == {"loss": 0.75, "acc": 0.5}
    live = stats_store.query_runs(RunQuery(workspace="ws1", filters=(parse_filter("metrics.loss<0.8"),)))
    assert [r["name"] for r in live] == ["run1.2"]


def test_the_whole_pipeline_records_the_same_on_every_store(tmp_path, stats_store):
    """The handlers' lifecycle (dispatch, starts, finishes, cancel) against this store, compared
    with the embedded store field by field."""
    reference = embedded(tmp_path / "reference")
    run_steps(reference, lifecycle(reference))

    base = embedded(tmp_path / "under-test")
    ports = Ports(storage=base.ports.storage, stats=stats_store, compute=base.ports.compute,
                  publisher=base.ports.publisher)
    parts = base._replace(ports=ports)
    run_steps(parts, lifecycle(parts))

    def normal(record):
        return {k: v for k, v in record.items() if k != "heartbeat"}

    assert [normal(r) for r in stats_store.list_runs("ws1")] == [normal(r) for r in reference.ports.stats.list_runs("ws1")]
    assert stats_store.get_job("ws1", "job1") == reference.ports.stats.get_job("ws1", "job1")
    for run in ("run1.1", "run1.2"):
        assert stats_store.get_metrics("ws1", run) == reference.ports.stats.get_metrics("ws1", run)


def test_a_jobs_counts_and_start_move_with_its_runs_once_per_move(stats_store):
    """The store keeps the job's counts with its runs (a run's event must not recount the job): a
    repeated insert, a refused or repeated move counts nothing; recount_job finds the same."""
    stats_store.insert_job({"workspace": "ws1", "name": "job1", "number": 1, "status": "queued", "run_count": 3,
                            "counts": {"queued": 3}})  # the dispatch's guess: the store counts for itself
    assert stats_store.get_job("ws1", "job1")["counts"] == {}
    stats_store.insert_runs([run_doc(f"run1.{k}") for k in (1, 2, 3)])
    stats_store.insert_runs([run_doc("run1.1")])  # redelivered dispatch
    assert stats_store.get_job("ws1", "job1")["counts"] == {"queued": 3}
    for _ in range(2):  # the second is a redelivered RunStarted: refused
        stats_store.update_run("ws1", "run1.1", {"status": "running", "started": 7.0}, only_if_status_in=["queued"])
    stats_store.update_run("ws1", "run1.2", {"status": "running", "started": 5.0})
    stats_store.update_run("ws1", "run1.2", {"status": "running", "started": 6.0})  # same status again: no move
    job = stats_store.get_job("ws1", "job1")
    assert (job["counts"], job["started"]) == ({"queued": 1, "running": 2}, 5.0)
    stats_store.update_run("ws1", "run1.1", {"status": "completed", "ended": 9.0})
    assert stats_store.update_runs("ws1", ["run1.1", "run1.2", "run1.3"], {"status": "cancelled", "ended": 9.0},
                                   only_if_status_in=["queued", "running"]) == ["run1.2", "run1.3"]
    assert stats_store.get_job("ws1", "job1")["counts"] == {"cancelled": 2, "completed": 1}
    assert stats_store.recount_job("ws1", "job1") == {"counts": {"cancelled": 2, "completed": 1}, "started": 6.0,
                                                      "ended": 9.0}
    job = stats_store.get_job("ws1", "job1")  # the recount's start: run1.2's start as it is now
    assert (job["counts"], job["started"]) == ({"cancelled": 2, "completed": 1}, 6.0)


def test_a_crash_between_a_runs_move_and_its_jobs_count_is_repaired_by_the_redelivery(tmp_path, stats_store,
                                                                                       monkeypatch, reliability):
    """MongoDB writes the run, then $incs its job: a crash in between, on the job's last run, must not
    leave the job running for ever (SQLite: one transaction, the crash undoes both)."""
    from support.pipeline import node_writes, finished, started
    from xt_submit import handlers
    from xt_submit.adapters.stats import sqlite

    def run_job(parts, crash_on_last_count):
        run_steps(parts, lifecycle(parts)[:3])  # dispatched, run1.1 and run1.2 started
        node_writes(parts.ports.storage, "run1.3", finished=True)
        handlers.run_started(started("run1.3"), parts.ports)
        for run in ("run1.1", "run1.2"):
            handlers.run_finished(finished(run), parts.ports)
        if crash_on_last_count:
            target = (sqlite, "_move_counts") if isinstance(parts.ports.stats, sqlite.SqliteStats) \
                else (parts.ports.stats, "_move_counts")
            with monkeypatch.context() as patched:
                patched.setattr(*target, lambda *a, **k: (_ for _ in ()).throw(RuntimeError("crash")))
                with pytest.raises(RuntimeError, match="crash"):
                    handlers.run_finished(finished("run1.3"), parts.ports)
        handlers.run_finished(finished("run1.3"), parts.ports)  # the (re)delivery
        return parts.ports.stats.get_job("ws1", "job1")

    reference = run_job(embedded(tmp_path / "reference"), crash_on_last_count=False)
    base = embedded(tmp_path / "under-test")
    parts = base._replace(ports=Ports(storage=base.ports.storage, stats=stats_store,
                                      compute=base.ports.compute, publisher=base.ports.publisher))
    job = run_job(parts, crash_on_last_count=True)
    assert (job["status"], job["counts"], job["ended"]) == ("completed", {"completed": 3}, 120.0)
    assert job == reference
    reliability.add("stats store (SQLite and MongoDB): crash between a run's move and its job's count, on the "
                    "job's last run, then redelivery", faults_injected=1, jobs_stuck=0)
