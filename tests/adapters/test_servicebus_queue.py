"""What the Service Bus queue adds to the queue contract, on the real SDK against the test broker:
message ids for duplicate detection, scheduled re-sends, the reason a sender asked for, and one
client shared by the Functions worker's threads."""
import itertools
import threading
import time

import pytest

_queues = itertools.count()


@pytest.fixture
def bus(servicebus_connection_string):
    from xt_submit.adapters.queue.servicebus import ServiceBusQueue

    queue = ServiceBusQueue(servicebus_connection_string, max_wait_time=1.0)
    yield queue
    queue.close()


def _sdk_messages(connection_string, queue, count, wait=5.0):
    """The SDK's own view of what arrived (ids, properties), received and completed."""
    from azure.servicebus import ServiceBusClient

    got, deadline = [], time.monotonic() + 60
    with ServiceBusClient.from_connection_string(connection_string) as client, \
            client.get_queue_receiver(queue, max_wait_time=wait) as receiver:
        while len(got) < count and time.monotonic() < deadline:
            for message in receiver.receive_messages(max_message_count=count - len(got), max_wait_time=wait):
                got.append(message)
                receiver.complete_message(message)
    return got


def test_each_message_id_is_derived_from_its_body(bus, servicebus_connection_string):
    from xt_submit.adapters.queue.servicebus import message_id_for

    queue = f"ids-{next(_queues)}"
    bus.send(queue, [b"a", b"b", b"a"])
    ids = [m.message_id for m in _sdk_messages(servicebus_connection_string, queue, 3)]
    assert ids == [message_id_for(b"a"), message_id_for(b"b"), message_id_for(b"a")]
    assert ids[0] != ids[1] and len(ids[0]) == 32  # Service Bus allows 128


def test_a_message_sent_later_stays_invisible_until_then_and_keeps_its_properties(bus, servicebus_connection_string):
    queue = f"later-{next(_queues)}"
    sent = time.time()
    bus.send_later(queue, b"retry me", delay_seconds=2.0, message_id="m1:1", properties={"xt-attempt": 1})
    assert bus.receive(queue, max_messages=1) == []  # waited max_wait_time (1 s): still scheduled
    (message,) = _sdk_messages(servicebus_connection_string, queue, 1)
    assert time.time() - sent >= 1.9
    assert (b"".join(message.body), message.message_id) == (b"retry me", "m1:1")
    assert message.application_properties[b"xt-attempt"] == 1


def test_peek_reports_the_reason_a_sender_put_in_the_message(bus):
    from xt_submit.domain.delivery import DEAD_LETTER_REASON_PROPERTY

    queue = f"flagged-{next(_queues)}"
    bus.send_later(queue, b"poison", delay_seconds=0, message_id="p1",
                   properties={DEAD_LETTER_REASON_PROPERTY: "dispatch: manifest: script: expected a path"})
    for _ in range(5):  # refused until the broker dead-letters it (MaxDeliveryCountExceeded)
        (message,) = bus.receive(queue, max_messages=1)
        bus.abandon(message)
    (dead,) = bus.peek(queue + "/$DeadLetterQueue")
    assert dead["body"] == b"poison" and dead["reason"] == "dispatch: manifest: script: expected a path"
    assert bus.peek(queue + "/$DeadLetterQueue") == [dead]  # a peek does not use messages up


def test_threads_sharing_one_client_each_send_every_message_once(bus, servicebus_connection_string):
    queue, threads, per_thread = f"shared-{next(_queues)}", 16, 25  # the worker's maxConcurrentCalls
    errors = []

    def send(n):
        try:
            for i in range(per_thread):
                bus.send(queue, [f"{n}:{i}".encode()])
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(repr(exc))

    workers = [threading.Thread(target=send, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    bodies = [b"".join(m.body).decode() for m in _sdk_messages(servicebus_connection_string, queue, threads * per_thread)]
    assert sorted(bodies) == sorted(f"{n}:{i}" for n in range(threads) for i in range(per_thread))
