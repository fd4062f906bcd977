"""A local run's slot is free once its process ended: the next queued run starts before the ended
one is reported (its console and outputs shipped, RunFinished sent), and never beside a live one."""
import time

from support.pipeline import make_code_zip, make_manifest
from xt_submit.domain.messages import JobSubmitted, RunFinished
from xt_submit.runtime.local_host import LocalHost

WS = "ws1"


def test_the_next_run_starts_before_the_ended_one_is_reported_and_never_beside_a_live_one(parts):
    key, sha = make_code_zip(parts, {"train.py": "import time; time.sleep(0.3)\n"})
    manifest = make_manifest(key, sha, hp_space={"i": [1, 2, 3]}, concurrent=1)
    compute, publisher = parts.compute, parts.ports.publisher
    launched_at_report = {}
    real_send = publisher.send_events

    def send_events(events):
        for event in events:
            if isinstance(event, RunFinished):  # which runs hold a slot as this one is reported
                launched_at_report[event.run] = sorted(e["run"] for e in compute.launched())
        return real_send(events)

    publisher.send_events = send_events
    publisher.send_job(JobSubmitted(submission_id="s1", manifest=manifest, submitted_at=1.0))
    host = LocalHost(parts)
    deadline = time.monotonic() + 120
    while len(launched_at_report) < 3 and time.monotonic() < deadline:
        host.step()
        host.executor.wait(0.05)
    assert launched_at_report == {"run1.1": ["run1.1", "run1.2"], "run1.2": ["run1.2", "run1.3"], "run1.3": ["run1.3"]}
    while host.step():  # the last reports into the stats
        pass
    records = sorted((parts.ports.stats.get_run(WS, f"run1.{i}") for i in (1, 2, 3)), key=lambda r: r["started"])
    assert [r["status"] for r in records] == ["completed"] * 3
    for before, after in zip(records, records[1:]):  # concurrent 1: one process at a time
        assert before["ended"] <= after["started"], (before, after)
