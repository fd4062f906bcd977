"""The failure rule both hosts follow, the blob events the upload trigger reads, and the timer's
compute check that one failing target cannot stop."""
import json

import pytest

from xt_submit.domain.blob_events import upload_from_blob_event
from xt_submit.domain.delivery import RETRY_DELAYS_SECONDS, Outcome, outcome_of
from xt_submit.domain.errors import NotFound
from xt_submit.domain.messages import ContractError


def test_permanent_errors_dead_letter_at_once_with_their_own_words():
    assert outcome_of(ContractError("manifest: script: expected a path"), 0) == \
        Outcome("dead-letter", "manifest: script: expected a path", 0.0)
    assert outcome_of(NotFound("run9.1"), 3).action == "dead-letter"


def test_transient_errors_back_off_then_give_up():
    delays = [outcome_of(ConnectionError("store away"), n).delay_seconds for n in range(len(RETRY_DELAYS_SECONDS))]
    assert delays == list(RETRY_DELAYS_SECONDS) and delays == sorted(delays) and delays[0] >= 5
    assert sum(delays) >= 15 * 60  # a quarter hour of outage survives
    last = outcome_of(ConnectionError("store away"), len(RETRY_DELAYS_SECONDS))
    assert last.action == "dead-letter"
    assert last.reason == f"gave up after {len(RETRY_DELAYS_SECONDS) + 1} attempts: ConnectionError: store away"
    assert outcome_of(None, 2).action == "ok"


@pytest.mark.parametrize("failure", ["transient", "permanent"])
def test_the_local_host_follows_the_same_rule_on_the_real_sqlite_queue(parts, monkeypatch, failure):
    """A transient failure is tried again only after each of RETRY_DELAYS_SECONDS (never at once),
    then dead-lettered saying it gave up; a permanent one is dead-lettered at the first failure."""
    from types import SimpleNamespace

    from xt_submit.adapters.queue import sqlite as sqlite_queue
    from xt_submit.domain.messages import EVENTS_QUEUE, RunStarted, encode
    from xt_submit.runtime import local_host

    clock = SimpleNamespace(now=1_000_000.0)
    monkeypatch.setattr(sqlite_queue, "time", SimpleNamespace(time=lambda: clock.now))
    attempts = []

    def handler(event, ports):
        attempts.append(clock.now)
        raise ConnectionError("store away") if failure == "transient" else NotFound("storage: no such key x")

    monkeypatch.setitem(local_host.HANDLERS, RunStarted, handler)
    host = local_host.LocalHost(parts)
    parts.queue.send(EVENTS_QUEUE, [encode(RunStarted(workspace="ws1", job="job1", run="run1.1", node_id="local",
                                                      started_at=1.0))])
    waited = []
    for delay in (0.0, *RETRY_DELAYS_SECONDS):
        if delay:  # just before the delay is up the message is not there; at it, it is
            clock.now += delay - 0.5
            assert parts.queue.receive(EVENTS_QUEUE) == []
            clock.now += 0.5
            waited.append(delay)
        received = parts.queue.receive(EVENTS_QUEUE)
        if not received:
            break
        host.process(received[0])
    (dead,) = parts.queue.peek(EVENTS_QUEUE + "/$DeadLetterQueue")
    if failure == "transient":
        assert [b - a for a, b in zip(attempts, attempts[1:])] == list(RETRY_DELAYS_SECONDS)
        assert dead["reason"] == f"gave up after {len(RETRY_DELAYS_SECONDS) + 1} attempts: ConnectionError: store away"
    else:
        assert len(attempts) == 1 and dead["reason"] == "storage: no such key x"
    assert parts.queue.count(EVENTS_QUEUE) == 0


def _event(subject, event_type="Microsoft.Storage.BlobCreated"):
    return {"topic": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/a",
            "subject": subject, "eventType": event_type, "eventTime": "2026-12-01T10:00:00Z", "id": "e1",
            "data": {"url": "https://a.blob.core.windows.net/xtdata/uploads/drop.zip", "contentLength": 10},
            "dataVersion": "", "metadataVersion": "1"}


@pytest.mark.parametrize("wrap", [lambda e: e, lambda e: [e]], ids=["one event", "an array of one"])
def test_a_blob_created_event_names_the_upload(wrap):
    body = json.dumps(wrap(_event("/blobServices/default/containers/xtdata/blobs/uploads/team/drop.zip"))).encode()
    assert upload_from_blob_event(body, "xtdata").upload_key == "uploads/team/drop.zip"


@pytest.mark.parametrize("body, expected", [
    (json.dumps(_event("/blobServices/default/containers/other/blobs/uploads/drop.zip")), "in container 'xtdata'"),
    (json.dumps(_event("/blobServices/default/containers/xtdata/blobs/runs/x.zip")), "under uploads/"),
    (json.dumps(_event("/blobServices/default/containers/xtdata/blobs/uploads/")), "under uploads/"),
    (json.dumps(_event("/blobServices/default/containers/xtdata/blobs/uploads/a.zip",
                       "Microsoft.Storage.BlobDeleted")), "eventType: expected Microsoft.Storage.BlobCreated"),
    (json.dumps([_event("/x"), _event("/y")]), "one event per message, got 2"),
    ("not json", "expected an Event Grid"),
    (json.dumps({"subject": "/blobServices/default/containers/xtdata/blobs/uploads/a.zip"}), "expected an Event Grid"),
])
def test_other_events_are_contract_errors_naming_what_was_expected(body, expected):
    with pytest.raises(ContractError, match="blob event") as caught:
        upload_from_blob_event(body.encode(), "xtdata")
    assert expected in str(caught.value)


class _Target:
    """A compute target whose check answers `events` or raises `error` (the router's view of a Batch target)."""

    def __init__(self, events=(), error=None):
        self.events, self.error = list(events), error

    def submit(self, tasks):
        pass

    def cancel(self, workspace, runs):
        return []

    def check_tasks(self):
        if self.error:
            raise self.error
        return self.events


def test_one_failing_batch_target_does_not_hide_the_others_preemptions(caplog):
    from xt_submit.adapters.compute.router import ComputeRouter

    router = ComputeRouter(_Target(), {"a": _Target(["pre-a"]), "broken": _Target(error=TimeoutError("batch away")),
                                       "c": _Target(["pre-c"])})
    assert router.check_tasks() == ["pre-a", "pre-c"]
    assert router.check_failures == {"broken": "TimeoutError: batch away"}
    assert [r.levelname for r in caplog.records if "broken" in r.getMessage()] == ["ERROR"]
