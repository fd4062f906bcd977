"""Crash at every step, duplicated and reordered events, poison messages, a stats-store outage:
the final state never depends on what failed or how often a message came."""
import random
import sqlite3

import pytest

from xt_submit import handlers
from support.pipeline import WS, finish_node, finished, lifecycle, run_steps, started, state_of
from xt_submit.handlers.reindex import rebuild_workspace
from xt_submit.domain import layout
from xt_submit.bootstrap import embedded
from xt_submit.runtime.local_host import LocalHost
from xt_submit.domain.messages import (UploadReceived, encode)
from xt_submit.ports import Ports



def fresh(tmp_path, name):
    return embedded(tmp_path / name)


def comparable(state):
    """Queued messages compare as a set: a redelivered handler may send its message again (at-least-once)."""
    state = dict(state)
    state["tables"] = dict(state["tables"], queue=sorted(set(state["tables"]["queue"])))
    return state


def test_crash_after_every_side_effect_then_redelivery_reaches_the_same_state(tmp_path, reliability):
    baseline = fresh(tmp_path, "baseline")
    effects = run_steps(baseline, lifecycle(baseline))
    expected = comparable(state_of(baseline))
    injected = 0
    for i, count in enumerate(effects):
        for k in range(1, count + 1):
            parts = fresh(tmp_path, f"fault-{i}-{k}")
            run_steps(parts, lifecycle(parts), fail_at=(i, k))
            assert comparable(state_of(parts)) == expected, f"crash in step {i} after side effect {k}"
            injected += 1
    assert injected == sum(effects) >= 20
    reliability.add("crash after every side effect of every handler, then redelivery", faults_injected=injected,
                    data_lost=0)


def test_upload_crash_at_every_step(tmp_path, reliability):
    import json

    from support.zips import zip_bytes

    def steps(parts):
        # the same bytes in every run (a zip's entries carry the time they were written)
        upload = zip_bytes({"xt_manifest.json": json.dumps({"workspace": WS, "experiment": "e", "script": "t.py",
                                                            "command": "python t.py", "hp_space": {"lr": [1, 2]}}),
                            "t.py": "print(1)"})
        parts.ports.storage.write("uploads/a.zip", upload)
        return [("upload", None, handlers.accept_upload, UploadReceived(upload_key="uploads/a.zip", received_at=50.0))]

    baseline = fresh(tmp_path, "baseline")
    (count,) = run_steps(baseline, steps(baseline))
    expected = comparable(state_of(baseline))
    for k in range(1, count + 1):
        parts = fresh(tmp_path, f"fault-{k}")
        run_steps(parts, steps(parts), fail_at=(0, k))
        assert comparable(state_of(parts)) == expected
    reliability.add("crash after every side effect of every handler, then redelivery", faults_injected=count)


def test_duplicated_and_reordered_run_events_reach_the_same_state(tmp_path, reliability):
    baseline = fresh(tmp_path, "baseline")
    run_steps(baseline, lifecycle(baseline))
    expected = state_of(baseline)
    rng = random.Random(42)
    duplicated = 0
    for trial in range(25):
        parts = fresh(tmp_path, f"order-{trial}")
        steps = lifecycle(parts)
        dispatch, run_events, cancel = steps[0], steps[1:-1], steps[-1]
        for _, node, _, _ in run_events:  # the nodes did their work; only the messages are shuffled
            if node:
                node(parts.ports.storage)
        deliveries = run_events + [rng.choice(run_events) for _ in range(rng.randint(1, 6))]  # duplicates
        duplicated += len(deliveries) - len(run_events)
        rng.shuffle(deliveries)  # finish before start, finish twice, heartbeat after finish, ...
        handlers.dispatch_job(dispatch[3], parts.ports)
        for _, _, handler, event in deliveries:
            handler(event, parts.ports)
        for _ in range(rng.randint(1, 3)):  # cancel after finish, possibly twice
            handlers.cancel_runs(cancel[3], parts.ports)
            duplicated += 1
        duplicated -= 1
        assert state_of(parts) == expected, f"order {[s[0] for s in deliveries]}"
    reliability.add("duplicated and reordered events (finish before start, finish twice, cancel after finish)",
                    orders_tried=25, messages_duplicated=duplicated, data_lost=0)


def test_poison_message_is_dead_lettered_with_its_reason_and_others_still_served(tmp_path, monkeypatch, reliability):
    from types import SimpleNamespace

    from xt_submit.adapters.queue import sqlite as sqlite_queue

    clock = SimpleNamespace(now=1_000_000.0)
    monkeypatch.setattr(sqlite_queue, "time", SimpleNamespace(time=lambda: clock.now))  # retries wait: skip ahead
    parts = fresh(tmp_path, "home")
    steps = lifecycle(parts)
    handlers.dispatch_job(steps[0][3], parts.ports)

    class BrokenStats:
        """A stats store that always fails for run1.2 (a bug, or a record it cannot take)."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            attr = getattr(self.inner, name)
            if name != "update_run":
                return attr
            return lambda ws, run, *a, **k: (_ for _ in ()).throw(RuntimeError("stats rejected the record")) \
                if run == "run1.2" else attr(ws, run, *a, **k)

    ports = Ports(storage=parts.ports.storage, stats=BrokenStats(parts.ports.stats), compute=parts.ports.compute,
                  publisher=parts.ports.publisher)
    host = LocalHost(parts._replace(ports=ports))
    parts.queue.send("events", [encode(started("run1.2")), encode(started("run1.1")), b'{"not": "an event"}'])
    for _ in range(10):
        for message in parts.queue.receive("events", max_messages=10):
            host.process(message)
        clock.now += 601  # past the longest retry delay
    dead = parts.queue.peek("events/$DeadLetterQueue")
    reasons = sorted(d["reason"] for d in dead)
    assert len(dead) == 2 and parts.queue.count("events") == 0
    assert reasons[0].startswith("gave up after 7 attempts: RuntimeError: stats rejected")
    assert reasons[1].startswith("message: ")  # not a contract: dead-lettered at once, never retried
    assert parts.ports.stats.get_run(WS, "run1.1")["status"] == "running"  # the healthy message was served
    reliability.add("poison messages go to the dead-letter queue with a reason", poison_messages=2,
                    healthy_messages_served=1)


def stats_content(path):
    with sqlite3.connect(path) as db:
        return {table: sorted(map(repr, db.execute(f"SELECT * FROM {table}").fetchall()))
                for table in ("jobs", "runs", "last_metrics", "metrics", "submissions", "job_counters")}


def test_stats_outage_loses_nothing_and_reindex_rebuilds_the_same_content(tmp_path, reliability):
    live = fresh(tmp_path, "live")
    run_steps(live, lifecycle(live))

    outage = fresh(tmp_path, "outage")
    steps = lifecycle(outage)
    run_steps(outage, steps[:4])

    class StatsDown:
        def __getattr__(self, name):
            raise sqlite3.OperationalError("unable to open database file")

    down = Ports(storage=outage.ports.storage, stats=StatsDown(), compute=outage.ports.compute,
                 publisher=outage.ports.publisher)
    finishes = [step for step in steps if step[0].startswith("finish")]
    for _, node, handler, event in finishes:  # both runs finish while the stats store is down
        node(outage.ports.storage)
        with pytest.raises(sqlite3.OperationalError):
            handler(event, down)
    # storage already holds everything the runs did
    for run in ("run1.1", "run1.2"):
        assert b'"event":"ended"' in outage.ports.storage.read(layout.run_log_key(WS, run))
        assert outage.ports.storage.exists(layout.output_prefix(WS, run) + "model.txt")
    steps[-1][2](steps[-1][3], outage.ports)  # the cancel, once the store is back
    # those finish messages were dead-lettered meanwhile; the index is rebuilt from storage
    rebuild_workspace(outage.ports, WS)
    assert stats_content(outage.home / "stats.db") == stats_content(live.home / "stats.db")

    # and reindexing a healthy store changes nothing
    before = stats_content(live.home / "stats.db")
    counts = rebuild_workspace(live.ports, WS)
    assert counts == {"jobs": 1, "runs": 3, "metric_records": 6, "skipped": []}
    assert stats_content(live.home / "stats.db") == before
    reliability.add("stats store down at run finish; xt admin reindex", runs_finished_during_outage=2,
                    reindex_differences=0)


def test_silent_node_marks_the_run_error_and_a_late_report_still_wins(tmp_path, reliability):
    parts = fresh(tmp_path, "home")
    steps = lifecycle(parts)
    run_steps(parts, steps[:4])  # run1.2 heartbeat at 115, run1.1 only started at 110
    assert handlers.mark_silent_runs(now=175.0, timeout=60.0, ports=parts.ports) == ["run1.1"]
    run = parts.ports.stats.get_run(WS, "run1.1")
    assert run["status"] == "error" and "stopped sending heartbeats" in run["reason"]
    assert parts.ports.stats.get_run(WS, "run1.2")["status"] == "running"
    assert handlers.mark_silent_runs(now=175.0, timeout=60.0, ports=parts.ports) == []
    finish_node(parts.ports.storage, "run1.1")
    handlers.run_finished(finished("run1.1"), parts.ports)  # the node was alive after all
    assert parts.ports.stats.get_run(WS, "run1.1")["status"] == "completed"
    reliability.add("run faults: node stops sending heartbeats", runs_marked=1)
