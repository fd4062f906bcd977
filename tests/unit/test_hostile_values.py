"""Values the message contracts cannot carry (issue 16, class 1), through the handlers on the embedded
ports: whole numbers outside int64 and non-finite floats from a script, more metrics than a message
holds, numbers out of range in a manifest or a config, a reindex over what it cannot read, and a
forked script. Each scenario ends with nothing lost and every message under its queue's limit."""
import math
import subprocess
import sys
import textwrap
import time

import msgspec
import pytest

from support.pipeline import make_code_zip, make_manifest
from xt_submit import handlers
from xt_submit.adapters.compute.queue import QueueCompute
from xt_submit.adapters.queue.publisher import QueuePublisher
from xt_submit.cli.main import main
from xt_submit.config import ConfigError, load_config
from xt_submit.domain import layout, run_log
from xt_submit.domain.manifest import check_manifest
from xt_submit.domain.messages import (MAX_MESSAGE_BYTES, CancelRequested, ContractError, JobSubmitted, RunFinished,
                                       RunTask, TasksCancelled, decode_event, decode_manifest, decode_task_message)
from xt_submit.handlers.reindex import rebuild_workspace
from xt_submit.node_kit.run_api import Run
from xt_submit.runtime.local_host import LocalHost

WS = "ws1"
HOSTILE = {"big": 2**64, "low": -2**63 - 1, "inf": 1e308 * 10, "nan": float("nan"), "fine": 3, "top": 2**63 - 1}
# what every store keeps of them: the nearest float outside int64, null for what JSON cannot spell
KEPT = {"big": float(2**64), "low": float(-2**63 - 1), "inf": None, "nan": None, "fine": 3, "top": 2**63 - 1}


class Uint64Max:
    """A numpy.uint64-like scalar (found by duck typing): its item() is beyond int64."""

    def item(self):
        return 2**64 - 1


def one_run_job(parts, ports):
    key, sha = make_code_zip(parts)
    manifest = make_manifest(key, sha, hp_space={})
    return handlers.dispatch_job(JobSubmitted(submission_id="s1", manifest=manifest, submitted_at=1.0), ports).runs[0]


def finished(run, **extra):
    return RunFinished(workspace=WS, job=layout.job_of_run(run), run=run, node_id="n1", status="completed",
                       exit_code=0, started_at=10.0, ended_at=12.0, **extra)


def test_numbers_no_store_holds_logged_by_the_run_api_end_the_run_with_each_kept(parts, tmp_path, capsys, reliability):
    run = one_run_job(parts, parts.ports)
    log = tmp_path / "xt_run_log.jsonl"
    with Run(log_path=str(log)) as script_run:
        script_run.log_hparams({"seed": 2**64, "layers": [2**70, 1]})
        script_run.log_metrics({**HOSTILE, "u64": Uint64Max(), "step": 1})
    warned = capsys.readouterr().err.splitlines()  # hparams and numpy-like scalars are narrowed as they are logged
    assert len(warned) == 3 and "'seed'" in warned[0] and "'layers'" in warned[1] and "Uint64Max" in warned[2]
    parts.ports.storage.append(layout.run_log_key(WS, run), log.read_bytes())  # the node ships the log

    handlers.run_finished(finished(run, metrics={"big": 2**64}), parts.ports)  # an older node's report

    kept = {**KEPT, "u64": float(2**64 - 1)}
    record = parts.ports.stats.get_run(WS, run)
    assert record["status"] == "completed"
    assert record["metrics"] == kept
    assert record["hparams"] == {"seed": float(2**64), "layers": [float(2**70), 1]}
    rows = {row["name"]: row["value"] for row in parts.ports.stats.get_metrics(WS, run)}
    assert rows == kept
    stats = msgspec.json.decode(parts.ports.storage.read(layout.run_stats_key(WS, run)))
    assert stats["metrics"] == kept
    rebuild_workspace(parts.ports, WS)  # the index rebuilt from storage says the same
    assert parts.ports.stats.get_run(WS, run)["metrics"] == kept
    reliability.add("hostile values: 2**64, -2**63-1, inf, nan, a uint64 logged by a script (handlers, SQLite and MongoDB)",
                    values_tried=len(kept), runs_stuck=0, values_lost=0)


def test_numbers_no_store_holds_in_a_foreign_log_and_a_node_report_are_kept_alike_on_every_store(
        parts, stats_store, reliability):
    ports = parts.ports._replace(stats=stats_store)
    run = one_run_job(parts, ports)
    key = layout.run_log_key(WS, run)
    # a log another writer made (an older Run API, a script of its own): raw JSON whole numbers
    ports.storage.append(key, b'{"time":11,"event":"hparams","data":{"wide":[18446744073709551616]}}\n')
    ports.storage.append(key, b'{"time":18446744073709551616,"event":"metrics","data":{"step":18446744073709551616,'
                              b'"big":18446744073709551616,"low":-9223372036854775809,"__index__":1}}\n')
    handlers.run_finished(finished(run, metrics={"inf": math.inf, "nan": math.nan, "top": 2**63 - 1}), ports)

    record = stats_store.get_run(WS, run)
    assert record["metrics"] == {"big": float(2**64), "low": float(-2**63 - 1), "inf": None, "nan": None,
                                 "top": 2**63 - 1}
    assert record["hparams"] == {"wide": [float(2**64)]}
    assert [(r["step"], r["name"], r["value"], r["time"]) for r in stats_store.get_metrics(WS, run)] == [
        (None, "big", float(2**64), None), (None, "low", float(-2**63 - 1), None)]
    reliability.add("hostile values: 2**64, -2**63-1, inf, nan, a uint64 logged by a script (handlers, SQLite and MongoDB)",
                    values_tried=5, runs_stuck=0, values_lost=0)


MANY_NAMES = textwrap.dedent('''
    from xt_submit import Run
    run = Run()
    run.log_metrics({f"metric-{i:05d}-" + "x" * 60: i / 7 for i in range(20_000)})
    run.close()
''')


def job_ended(parts):
    jobs = parts.ports.stats.list_jobs(WS)
    return bool(jobs) and jobs[0]["status"] in ("completed", "error", "cancelled")


def test_a_finish_with_more_metrics_than_a_message_holds_goes_by_reference(parts, monkeypatch, reliability):
    key, sha = make_code_zip(parts, {"many.py": MANY_NAMES})
    manifest = make_manifest(key, sha, hp_space={}, script="many.py", command="python many.py")
    sent = []
    send = parts.queue.send
    monkeypatch.setattr(parts.queue, "send", lambda queue, bodies: (sent.extend(bodies), send(queue, bodies)))
    parts.ports.publisher.send_job(JobSubmitted(submission_id="s1", manifest=manifest, submitted_at=1.0))
    host = LocalHost(parts)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not job_ended(parts):
        host.step()
        time.sleep(0.02)

    (run,) = parts.ports.stats.list_runs(WS, job="job1")
    assert run["status"] == "completed", run["reason"]
    assert len(run["metrics"]) == 20_000
    assert len(parts.ports.stats.get_metrics(WS, run["name"])) == 20_000
    largest = max(map(len, sent))
    assert largest <= MAX_MESSAGE_BYTES
    assert parts.queue.peek("events/$DeadLetterQueue") == [] and parts.queue.peek("jobs/$DeadLetterQueue") == []
    (report,) = [event for event in map(decode_event, sent) if isinstance(event, RunFinished)]
    assert report.metrics == {} and report.metrics_key == layout.run_prefix(WS, run["name"]) + "final_metrics.json"

    # the file it names stands in for a run log that was lost, and only a file of the run's own is read
    parts.ports.storage.write(layout.run_log_key(WS, run["name"]), b"")
    handlers.run_finished(report, parts.ports)
    assert len(parts.ports.stats.get_run(WS, run["name"])["metrics"]) == 20_000
    elsewhere = msgspec.structs.replace(report, metrics_key=layout.run_prefix(WS, "run9.9") + "final_metrics.json")
    parts.ports.storage.write(elsewhere.metrics_key, b'{"planted": 1}')
    handlers.run_finished(elsewhere, parts.ports)
    assert parts.ports.stats.get_run(WS, run["name"])["metrics"] == {}
    reliability.add("hostile values: 20,000 long metric names (a 1.7 MB finish) go by reference (handlers)",
                    runs=1, metrics=20_000, largest_message_bytes=largest, dead_lettered=0)


def test_a_message_over_its_queues_limit_is_refused_by_the_sender_saying_so(parts, reliability):
    huge = {f"m{i}-" + "x" * 60: 1.0 for i in range(20_000)}
    with pytest.raises(ContractError, match=r"events: run_finished message of \d+ bytes, more than the queue's limit"):
        parts.ports.publisher.send_events([finished("run1.1", metrics=huge)])
    key, sha = make_code_zip(parts)
    submitted = JobSubmitted(submission_id="s1", submitted_at=1.0,
                             manifest=make_manifest(key, sha, hp_space={"x": list(range(100_000))}))
    with pytest.raises(ContractError, match=r"jobs: job_submitted message of \d+ bytes"):
        QueuePublisher(parts.queue).send_job(submitted)
    with pytest.raises(ContractError, match="more than the queue's limit"):
        QueueCompute(parts.queue).submit([RunTask(workspace=WS, experiment="e", job="job1", run="run1.1",
                                                  command="python t.py " + "y" * MAX_MESSAGE_BYTES, code_key="k")])
    assert parts.queue.count("events") == parts.queue.count("jobs") == parts.queue.count("tasks") == 0
    from xt_submit.adapters.queue.servicebus import ServiceBusQueue

    bus = ServiceBusQueue("Endpoint=sb://bus.example/;SharedAccessKeyName=k;SharedAccessKey=a2V5")  # never connects
    with pytest.raises(ContractError, match="more than the queue's limit"):
        bus.send("xt-events", [b"x" * (MAX_MESSAGE_BYTES + 1)])
    reliability.add("hostile values: oversize messages refused by the sender with the reason (publisher, tasks queue, Service Bus)",
                    messages_tried=4, sent=0)


def test_cancelling_a_job_of_100k_runs_on_the_tasks_queue_is_messages_under_the_limit(parts, reliability):
    runs = [f"run1.{i}" for i in range(1, 100_001)]
    QueueCompute(parts.queue).cancel(WS, runs)
    bodies = [m["body"] for m in parts.queue.peek("tasks", limit=1000)]
    assert len(bodies) > 1 and max(map(len, bodies)) <= MAX_MESSAGE_BYTES
    cancelled = [decode_task_message(body) for body in bodies]
    assert all(isinstance(m, TasksCancelled) for m in cancelled)
    assert [run for m in cancelled for run in m.runs] == runs
    reliability.add("hostile values: cancel of a 100,000-run job on the tasks queue, split under the size limit",
                    runs=len(runs), messages=len(bodies), lost=0)


OUT_OF_RANGE_MANIFESTS = [
    ({"concurrent": 99999999999999999999}, "concurrent"), ({"concurrent": 10**6}, "concurrent"),
    ({"runs": 10**7}, "runs"), ({"max_runs": 2**64}, "max_runs"), ({"seed": 2**64}, "seed"),
    ({"seed": -2**63 - 1}, "seed"), ({"max_time": 1e300}, "max_time"),
    ({"hp_space": {"lr": [0.1, 2**64]}}, "hp_space.lr"), ({"hp_space": {"n": -2**63 - 1}}, "hp_space.n"),
]


@pytest.mark.parametrize("fields,named", OUT_OF_RANGE_MANIFESTS, ids=[n for _, n in OUT_OF_RANGE_MANIFESTS])
def test_numbers_out_of_range_in_a_manifest_are_refused_naming_the_field(fields, named, reliability):
    body = msgspec.json.encode({"workspace": "ws1", "experiment": "e", "script": "t.py", "command": "python t.py",
                                **fields})
    with pytest.raises(ContractError) as info:
        check_manifest(decode_manifest(body))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"xt_manifest.json: {named}:"), message
    reliability.add("hostile values: numbers out of range in manifest fields, config keys, CLI options (one-line error)", inputs_tried=1)


OUT_OF_RANGE_CONFIGS = [
    ("compute-targets: {local: {service: local, concurrent: 99999999999999999999}}", "compute-targets.local.concurrent"),
    ("compute-targets: {gpu: {service: batch, nodes: 100000000}}", "compute-targets.gpu.nodes"),
    ("compute-targets: {gpu: {service: batch, preemption-retries: 99999999999999999999}}",
     "compute-targets.gpu.preemption-retries"),
    ("compute-targets: {local: {service: local, max-time: .inf}}", "compute-targets.local.max-time"),
    ("compute-targets: {local: {service: local, max-time: .nan}}", "compute-targets.local.max-time"),
    ("hyperparameter-search: {max-runs: 99999999999999999999}", "hyperparameter-search.max-runs"),
    ("hyperparameter-search: {runs: 10000000}", "hyperparameter-search.runs"),
    ("hyperparameter-search: {seed: 18446744073709551616}", "hyperparameter-search.seed"),
    ("code: {max-size-mb: 99999999999999999999}", "code.max-size-mb"),
    ("run-reports: {precision: 1000000000}", "run-reports.precision"),
    ("run-reports: {max-width: 99999999999999999999}", "run-reports.max-width"),
    ("job-reports: {last: 99999999999999999999}", "job-reports.last"),
    ("boxes: {b1: {address: a@b, max-runs: 99999999999999999999}}", "boxes.b1.max-runs"),
]


@pytest.mark.parametrize("text,named", OUT_OF_RANGE_CONFIGS, ids=[n for _, n in OUT_OF_RANGE_CONFIGS])
def test_numbers_out_of_range_in_a_config_are_refused_naming_the_key(tmp_path, text, named, reliability):
    path = tmp_path / "xt_config.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and f": {named}: expected" in message, message
    reliability.add("hostile values: numbers out of range in manifest fields, config keys, CLI options (one-line error)", inputs_tried=1)


BIG = "99999999999999999999"
OUT_OF_RANGE_OPTIONS = [
    ("run --concurrent " + BIG, "--concurrent"), ("run --concurrent 0", "--concurrent"),
    ("run --concurrent 10001", "--concurrent"), ("run --runs 0", "--runs"), ("run --runs 100001", "--runs"),
    ("run --max-runs " + BIG, "--max-runs"), (f"run --seed {2**64}", "--seed"), (f"run --seed {-2**63 - 1}", "--seed"),
    ("run --max-time nan", "--max-time"), ("run --max-time inf", "--max-time"), ("run --max-time 0", "--max-time"),
    ("run --max-time 1e300", "--max-time"), ("run --max-time 1" + "0" * 5000, "--max-time"),
    ("list runs --first 0", "--first"), ("list jobs --last " + BIG, "--last"), ("serve --idle-exit -1", "--idle-exit"),
    ("serve --idle-exit inf", "--idle-exit"), ("monitor run1.1 --poll nan", "--poll"),
]


@pytest.mark.parametrize("line,option", OUT_OF_RANGE_OPTIONS, ids=[line[:40] for line, _ in OUT_OF_RANGE_OPTIONS])
def test_numbers_out_of_range_on_the_command_line_are_refused_naming_the_option(line, option, capsys, reliability):
    args = line.split()
    if args[0] == "run":
        args += ["--dry-run", "train.py"]
    with pytest.raises(SystemExit) as info:
        main(args)
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and f"argument {option}: expected " in error, error
    assert len(error) < 200  # a 5000-digit number is not echoed
    reliability.add("hostile values: numbers out of range in manifest fields, config keys, CLI options (one-line error)", inputs_tried=1)


def reindex_fixture(parts):
    """job1: run1.1 completed (its log's last line torn mid-write), run1.2 cancelled before it started
    (its run_stats.json corrupt), run1.3 completed; job2: a corrupt manifest; job3: a corrupt job log."""
    ports, storage = parts.ports, parts.ports.storage
    key, sha = make_code_zip(parts)
    for n in (1, 2, 3):
        handlers.dispatch_job(JobSubmitted(submission_id=f"s{n}", submitted_at=1.0,
                                           manifest=make_manifest(key, sha, hp_space={"lr": [0.1, 0.2, 0.3]})), ports)
    for run in ("run1.1", "run1.3"):
        log = layout.run_log_key(WS, run)
        storage.append(log, run_log.record(11.0, "started", {"node": "n1"}))
        for step in (1, 2):
            storage.append(log, run_log.record(11.0 + step, "metrics", {"step": step, "loss": 1 / step}))
        storage.append(log, run_log.record(14.0, "ended", {"status": "completed", "exit_code": 0, "reason": ""}))
        handlers.run_finished(finished(run), ports)
    handlers.cancel_runs(CancelRequested(workspace=WS, job="job1", runs=["run1.2"], requested_at=20.0), ports)
    torn = storage.read(layout.run_log_key(WS, "run1.1"))
    storage.write(layout.run_log_key(WS, "run1.1"), torn[: torn.rindex(b'"status"')])  # the "ended" line cut short
    storage.write(layout.run_stats_key(WS, "run1.2"), b'{"status": "cancel')
    storage.write(layout.run_tags_key(WS, "run1.3"), b"{not json")
    storage.write(layout.manifest_key(WS, "job2"), b'{"workspace": "ws1", "experiment": ')
    storage.write(layout.job_log_key(WS, "job3"), b'{"time": 1, "event": "crea')


def test_reindex_skips_and_reports_what_it_cannot_read_and_keeps_the_rest(parts, reliability):
    reindex_fixture(parts)
    counts = rebuild_workspace(parts.ports, WS)

    skipped = dict(counts["skipped"])
    assert set(skipped) == {"run1.2", "run1.3 tags", "job2", "job3"}, skipped
    assert "run_stats.json" in skipped["run1.2"] and "xt_manifest.json" in skipped["job2"]
    assert all("\n" not in reason for reason in skipped.values())
    assert counts["jobs"] == 1 and counts["runs"] == 3
    stats = parts.ports.stats
    torn = stats.get_run(WS, "run1.1")
    assert torn["status"] == "completed" and torn["metrics"] == {"loss": 0.5}  # a torn last line drops nothing intact
    assert [r["value"] for r in stats.get_metrics(WS, "run1.1")] == [1.0, 0.5]
    unreadable = stats.get_run(WS, "run1.2")
    assert unreadable["status"] == "error" and "run_stats.json" in unreadable["reason"]
    assert stats.get_run(WS, "run1.3")["metrics"] == {"loss": 0.5}
    assert stats.get_job(WS, "job1")["status"] == "error"  # every run ended: the job is closed
    reliability.add("hostile values: xt admin reindex over a corrupt run_stats.json, a torn run log, a corrupt "
                    "manifest, job log and tags file (handlers)", items_corrupted=5, skipped_and_reported=4, intact_runs_lost=0)


def test_a_line_torn_mid_log_does_not_take_the_next_record_with_it():
    good = run_log.record(2.0, "metrics", {"loss": 0.5, "__index__": 2})
    blob = run_log.record(1.0, "metrics", {"loss": 1.0, "__index__": 1}) + b'{"time":1.5,"event":"metr' + good
    assert [r["data"]["loss"] for r in run_log.iter_records(blob)] == [1.0, 0.5]


FORKER = textwrap.dedent('''
    import os, sys
    from xt_submit import Run
    run = Run(log_path=sys.argv[1], flush_seconds=3600)
    run.log_metrics({"loss": 0.5})          # buffered, not yet written
    pid = os.fork()
    if pid == 0:                            # the child: its own metric, then an ordinary exit (atexit flushes)
        run.log_metrics({"child": 1.0})
        sys.exit(0)
    os.waitpid(pid, 0)
    run.log_metrics({"loss": 0.25})
''')


def test_a_forked_child_does_not_flush_the_parents_buffered_metrics(tmp_path, reliability):
    log = tmp_path / "log.jsonl"
    subprocess.run([sys.executable, "-c", FORKER, str(log)], check=True, timeout=30)
    logged = [list(r["data"].items())[0] for r in run_log.iter_records(log.read_bytes())]
    assert sorted(logged) == sorted([("loss", 0.5), ("child", 1.0), ("loss", 0.25)])
    reliability.add("processes: a script forks after logging: the parent's buffered metrics are written once", forks=1,
                    duplicated=0)
