"""The queue (peek-lock) contract: one suite for the embedded SQLite queue and for Service Bus,
the latter through the real azure-servicebus SDK against the test AMQP broker."""
import itertools
import time

import pytest

from xt_submit.adapters.queue.servicebus import ServiceBusQueue
from xt_submit.adapters.queue.sqlite import SqliteQueue
from xt_submit.ports import LockLost

_names = itertools.count()


@pytest.fixture(params=["sqlite", "servicebus"])
def queue(request, tmp_path):
    if request.param == "sqlite":
        yield SqliteQueue(str(tmp_path / "queue.db"), lock_seconds=2, max_delivery_count=5)
        return
    bus = ServiceBusQueue(request.getfixturevalue("servicebus_connection_string"), max_wait_time=0.5)
    yield bus
    bus.close()


@pytest.fixture
def name():
    return f"q{next(_names)}"  # a fresh queue per test on the shared broker


def receive_all(queue, name, expected, rounds=10):
    got = []
    for _ in range(rounds):
        got += queue.receive(name, max_messages=expected - len(got))
        if len(got) >= expected:
            break
    return got


def test_send_batch_and_receive_in_order(queue, name):
    queue.send(name, [b"first"])
    queue.send(name, [f"batch {i}".encode() for i in range(50)])
    got = receive_all(queue, name, 51)
    assert [m.body for m in got] == [b"first"] + [f"batch {i}".encode() for i in range(50)]
    assert all(m.delivery_count == 1 for m in got)
    for message in got:
        queue.complete(message)
    assert queue.receive(name) == []


def test_peek_lock_hides_the_message_until_abandoned_then_counts_the_delivery(queue, name):
    queue.send(name, [b"job"])
    (first,) = receive_all(queue, name, 1)
    assert queue.receive(name) == []  # locked
    queue.abandon(first, "transient")
    (again,) = receive_all(queue, name, 1)
    assert again.body == b"job" and again.delivery_count == 2
    queue.complete(again)
    with pytest.raises(LockLost):
        queue.complete(again)


def test_dead_letter_keeps_the_reason(queue, name):
    queue.send(name, [b"poison"])
    (message,) = receive_all(queue, name, 1)
    queue.dead_letter(message, "manifest: workspace: required field missing")
    dead = queue.peek(name + "/$DeadLetterQueue")
    assert [(d["body"], d["reason"]) for d in dead] == [(b"poison", "manifest: workspace: required field missing")]
    assert queue.receive(name) == []


def test_a_message_abandoned_every_time_ends_in_the_dead_letter_queue(queue, name):
    queue.send(name, [b"always fails"])
    for attempt in range(1, 6):
        received = receive_all(queue, name, 1)
        if not received:
            break
        assert received[0].delivery_count == attempt
        queue.abandon(received[0], "boom")
    assert receive_all(queue, name, 1, rounds=2) == []
    (dead,) = queue.peek(name + "/$DeadLetterQueue")
    assert dead["body"] == b"always fails" and "MaxDeliveryCount" in dead["reason"]


def test_an_expired_lock_redelivers_and_renewal_keeps_it(queue, name):
    queue.send(name, [b"slow", b"renewed"])
    held = {m.body: m for m in receive_all(queue, name, 2)}
    slow, renewed = held[b"slow"], held[b"renewed"]
    for _ in range(4):
        time.sleep(0.9)
        queue.renew_lock(renewed)
    (back,) = receive_all(queue, name, 1)  # the unrenewed lock expired: the message is back
    assert back.body == b"slow" and back.delivery_count == 2
    with pytest.raises(LockLost):
        queue.complete(slow)
    queue.complete(renewed)
    queue.complete(back)


def test_a_wait_shorter_than_opening_a_link_still_receives(request, tmp_path):
    """The first receive on a queue opens its link; the SDK bounds that by the receive's wait, so
    a short wait on a loaded machine raised OperationTimeoutError instead of receiving."""
    bus = ServiceBusQueue(request.getfixturevalue("servicebus_connection_string"), max_wait_time=0.001)
    try:
        queue = f"q{next(_names)}"
        bus.send(queue, [b"job"])
        got = receive_all(bus, queue, 1, rounds=200)
        assert [m.body for m in got] == [b"job"]
    finally:
        bus.close()


def test_looking_at_an_empty_embedded_queue_does_not_wait_for_a_writer(tmp_path):
    """The local host looks at its queues on every pass: a look that finds nothing takes no write
    lock, so it neither waits for nor holds up a client writing to the same file."""
    import sqlite3
    import threading

    path = str(tmp_path / "queue.db")
    queue = SqliteQueue(path, lock_seconds=2, max_delivery_count=5)
    queue.send("jobs", [b"taken"])
    (message,) = queue.receive("jobs")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a client in the middle of a send
    looked = []
    look = threading.Thread(target=lambda: looked.append(queue.receive("jobs")), daemon=True)
    look.start()
    look.join(30)  # a bound, not a deadline: with the write lock taken first, the look waited out busy_timeout (60 s)
    writer.execute("ROLLBACK")
    writer.close()
    assert looked == [[]]
    queue.complete(message)
