"""An in-memory AMQP 1.0 broker that the real azure-servicebus SDK can use, for tests on loopback.

    python tests/peers/servicebus_broker.py    # prints its port on the first line, serves until killed

It implements what the SDK needs from Service Bus: the $cbs put-token handshake, queues with
peek-lock (16-byte delivery tags are the lock tokens), settlement by disposition (complete,
abandon with delivery count + 1, dead-letter into `<queue>/$DeadLetterQueue` with its reason),
drain, batches (one transfer whose data sections are whole messages) and the $management
operations renew-lock, peek-message, update-disposition and schedule-message. A message sent with
a scheduled enqueue time (annotation x-opt-scheduled-enqueue-time) stays invisible until then, as
on Service Bus. Not a product part.
"""
from __future__ import annotations

import collections
import itertools
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional

import proton
from proton.handlers import MessagingHandler
from proton.reactor import Container

LOCK_SECONDS = float(os.environ.get("XT_BROKER_LOCK_SECONDS", "30"))
MAX_DELIVERY_COUNT = int(os.environ.get("XT_BROKER_MAX_DELIVERY_COUNT", "5"))
DEAD_LETTER = "/$DeadLetterQueue"
SECTION_DATA = 0x75


@dataclass
class Entry:
    sequence: int
    raw: bytes  # one encoded message, as the client sent it
    enqueued: float
    delivery_count: int = 0
    locked_until: float = 0.0
    token: Optional[uuid.UUID] = None
    annotations: Dict = field(default_factory=dict)
    visible_at: float = 0.0  # a scheduled message's enqueue time


SCHEDULED_ENQUEUE_TIME = "x-opt-scheduled-enqueue-time"


def scheduled_time(raw: bytes) -> float:
    """The scheduled enqueue time a sender set (epoch seconds), or 0."""
    message = proton.Message()
    message.decode(raw)
    value = (message.annotations or {}).get(proton.symbol(SCHEDULED_ENQUEUE_TIME))
    if value is None:
        return 0.0
    return value.timestamp() if hasattr(value, "timestamp") else float(value) / 1000


def split_sections(raw: bytes) -> List[tuple]:
    """[(descriptor, encoded section, value)] of an encoded AMQP message."""
    sections, pos = [], 0
    while pos < len(raw):
        data = proton.Data()
        consumed = data.decode(bytes(raw[pos:]))
        data.rewind()
        data.next()
        described = data.get_object()
        value = described.value
        if isinstance(value, memoryview):
            value = bytes(value)  # a view into proton's buffer, freed with `data`: copy it now
        sections.append((int(described.descriptor), raw[pos:pos + consumed], value))
        pos += consumed
    return sections


def unbatch(raw: bytes) -> List[bytes]:
    """A batch transfer carries whole messages in its data sections; a plain message is itself."""
    sections = split_sections(raw)
    payloads = [bytes(value) for descriptor, _, value in sections if descriptor == SECTION_DATA]
    if payloads and all(len(p) > 2 and p[:2] == b"\x00\x53" and 0x70 <= p[2] <= 0x78 for p in payloads):
        return payloads
    return [bytes(raw)]


def with_header(raw: bytes, delivery_count: int) -> bytes:
    """The message with a header that states its delivery count (proton omits a default header)."""
    header = proton.Data()
    header.put_described()
    header.enter()
    header.put_ulong(0x70)
    header.put_list()
    header.enter()
    for put, value in ((header.put_bool, False), (header.put_ubyte, 4), (header.put_null, None),
                       (header.put_bool, False), (header.put_uint, delivery_count)):
        put() if value is None else put(value)
    header.exit()
    header.exit()
    return bytes(header.encode()) + b"".join(bytes(enc) for d, enc, _ in split_sections(raw) if d != 0x70)


def raw_tag(delivery) -> bytes:
    """The delivery tag's bytes (proton-python would decode the 16 random bytes as UTF-8)."""
    import cproton

    tag = cproton.lib.pn_delivery_tag(delivery._impl)
    return bytes(cproton.ffi.unpack(tag.start, tag.size))


def address_of(raw_address: Optional[str]) -> str:
    """'amqps://host/queue' or 'sb://host/queue' -> 'queue'."""
    address = raw_address or ""
    if "://" in address:
        address = address.split("://", 1)[1].split("/", 1)[1] if "/" in address.split("://", 1)[1] else ""
    return address


class Broker(MessagingHandler):
    def __init__(self, listen_url: str) -> None:
        super().__init__(auto_accept=False, auto_settle=False, prefetch=0)
        self.listen_url = listen_url
        self.queues: Dict[str, Deque[Entry]] = collections.defaultdict(collections.deque)
        self.locked: Dict[uuid.UUID, tuple] = {}  # token -> (queue, entry)
        self.sequence = itertools.count(1)
        self.senders: List[proton.Link] = []

    # --- plumbing ----------------------------------------------------------------------------
    def on_start(self, event):
        self.acceptor = event.container.listen(self.listen_url)
        event.container.schedule(1.0, self)

    def on_timer_task(self, event):
        now = time.time()
        for token, (queue, entry) in list(self.locked.items()):
            if entry.locked_until < now:  # an expired lock: receivable again, and that delivery counts
                self._unlock(token, count_delivery=True)
        self._pump()
        event.container.schedule(0.25, self)  # also how soon a scheduled message becomes visible

    def on_link_opening(self, event):
        link = event.link
        if link.is_sender:
            link.source.copy(link.remote_source)
            self.senders.append(link)
        else:
            link.target.copy(link.remote_target)
            link.flow(1000)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode

    def on_link_closing(self, event):
        if event.link in self.senders:
            self.senders.remove(event.link)

    def on_connection_closing(self, event):
        self.senders = [s for s in self.senders if s.connection != event.connection]

    # --- messages from clients ---------------------------------------------------------------
    def on_delivery(self, event):
        delivery, link = event.delivery, event.link
        if link.is_receiver:
            if delivery.partial or not delivery.readable:
                return
            raw = link.recv(delivery.pending)
            link.advance()
            self._received(link, delivery, raw)
        elif delivery.remote_state or delivery.remote.settled:
            self._settled_by_client(delivery)

    def _received(self, link, delivery, raw: bytes) -> None:
        target = address_of(link.remote_target.address)
        if target == "$cbs" or target.endswith("$management"):
            request = proton.Message()
            request.decode(raw)
            delivery.update(proton.Delivery.ACCEPTED)
            delivery.settle()
            reply = self._cbs(request) if target == "$cbs" else self._management(target.rsplit("/", 1)[0], request)
            reply.correlation_id = request.id
            reply_link = next((s for s in self.senders if s.connection == link.connection
                               and address_of(s.remote_source.address) == target), None)
            if reply_link is not None:
                reply_link.send(reply)
            return
        messages = unbatch(raw)
        for message in messages:
            self._enqueue(target, message)
        delivery.update(proton.Delivery.ACCEPTED)
        delivery.settle()
        link.flow(1)
        self._pump()

    def _cbs(self, request: proton.Message) -> proton.Message:
        return proton.Message(properties={"status-code": 202, "status-description": "Accepted"})

    def _enqueue(self, queue: str, raw: bytes, delivery_count: int = 0, annotations: Optional[Dict] = None) -> int:
        visible_at = scheduled_time(raw)
        entry = Entry(next(self.sequence), raw, max(time.time(), visible_at), delivery_count,
                      annotations=dict(annotations or {}), visible_at=visible_at)
        self.queues[queue].append(entry)
        return entry.sequence

    # --- messages to clients -----------------------------------------------------------------
    def on_sendable(self, event):
        self._pump()

    def on_link_flow(self, event):
        self._pump()
        link = event.link
        if link.is_sender and link.drain_mode and link.credit > 0:
            link.drained()

    def _pump(self) -> None:
        now = time.time()
        for link in list(self.senders):
            queue = address_of(link.remote_source.address)
            if queue in ("$cbs",) or queue.endswith("$management"):
                continue
            waiting = self.queues.get(queue)
            while link.credit > 0 and waiting:
                entry = next((e for e in waiting if e.token is None and e.visible_at <= now), None)
                if entry is None:
                    break
                settled_mode = link.remote_snd_settle_mode == proton.Link.SND_SETTLED
                token = uuid.uuid4()
                message = proton.Message()
                message.decode(entry.raw)
                message.annotations = dict(message.annotations or {}, **entry.annotations, **{
                    proton.symbol("x-opt-sequence-number"): int(entry.sequence),
                    proton.symbol("x-opt-enqueued-time"): proton.timestamp(int(entry.enqueued * 1000)),
                    proton.symbol("x-opt-locked-until"): proton.timestamp(int((now + LOCK_SECONDS) * 1000)),
                })
                delivery = link.delivery(token.bytes_le)
                link.send(with_header(bytes(message.encode()), entry.delivery_count + 1))
                link.advance()
                if settled_mode:  # receive-and-delete
                    delivery.settle()
                    waiting.remove(entry)
                else:
                    entry.token, entry.locked_until = token, now + LOCK_SECONDS
                    self.locked[token] = (queue, entry)
            if link.drain_mode and link.credit > 0:
                link.drained()

    # --- settlement --------------------------------------------------------------------------
    def _settled_by_client(self, delivery) -> None:
        token = uuid.UUID(bytes_le=raw_tag(delivery))
        state = delivery.remote_state
        if token in self.locked:
            if state == proton.Delivery.ACCEPTED:
                self._complete(token)
            elif state == proton.Delivery.REJECTED:
                condition = delivery.remote.condition
                info = {str(k): v for k, v in dict(condition.info or {}).items()} if condition else {}
                self._dead_letter(token, str(info.get("DeadLetterReason", "")),
                                  str(info.get("DeadLetterErrorDescription", "")))
            elif state == proton.Delivery.MODIFIED:  # abandon: counts as a delivery
                self._unlock(token, count_delivery=bool(delivery.remote.failed))
            elif state == proton.Delivery.RELEASED:  # handed back unseen (e.g. prefetched at close)
                self._unlock(token, count_delivery=False)
        if state:
            delivery.update(state)  # echo the outcome, settled
        delivery.settle()
        self._pump()

    def _complete(self, token: uuid.UUID) -> None:
        queue, entry = self.locked.pop(token)
        self.queues[queue].remove(entry)

    def _unlock(self, token: uuid.UUID, count_delivery: bool) -> None:
        queue, entry = self.locked[token]
        if count_delivery and entry.delivery_count + 1 >= MAX_DELIVERY_COUNT:
            self._dead_letter(token, "MaxDeliveryCountExceeded",
                              f"the message was delivered {entry.delivery_count + 1} times")
            return
        del self.locked[token]
        entry.token, entry.locked_until = None, 0.0
        if count_delivery:
            entry.delivery_count += 1

    def _dead_letter(self, token: uuid.UUID, reason: str, description: str) -> None:
        queue, entry = self.locked.pop(token)
        self.queues[queue].remove(entry)
        message = proton.Message()
        message.decode(entry.raw)
        # Service Bus puts the reason in the dead-lettered message's application properties
        message.properties = dict(message.properties or {}, DeadLetterReason=reason,
                                  DeadLetterErrorDescription=description)
        self._enqueue(queue + DEAD_LETTER, bytes(message.encode()), entry.delivery_count)

    # --- $management -------------------------------------------------------------------------
    def _management(self, entity: str, request: proton.Message) -> proton.Message:
        operation = (request.properties or {}).get("operation")
        body = request.body or {}
        now = time.time()
        if operation == "com.microsoft:renew-lock":
            expirations = []
            for token in body.get("lock-tokens", []):
                if token not in self.locked:
                    return self._status(410, "MessageLockLostError: the lock was lost")
                self.locked[token][1].locked_until = now + LOCK_SECONDS
                expirations.append(proton.timestamp(int((now + LOCK_SECONDS) * 1000)))
            return self._status(200, "OK", {"expirations": expirations})
        if operation == "com.microsoft:peek-message":
            start = int(body.get("from-sequence-number", 0))
            count = int(body.get("message-count", 1))
            found = [e for e in self.queues.get(entity, ()) if e.sequence >= start][:count]
            if not found:
                return self._status(204, "No messages")
            return self._status(200, "OK", {"messages": [{"message": self._annotated(e)} for e in found]})
        if operation == "com.microsoft:update-disposition":
            status = body.get("disposition-status")
            for token in body.get("lock-tokens", []):
                if token not in self.locked:
                    return self._status(410, "MessageLockLostError: the lock was lost")
                if status == "completed":
                    self._complete(token)
                elif status == "abandoned":
                    self._unlock(token, count_delivery=True)
                elif status == "suspended":
                    self._dead_letter(token, str(body.get("deadletter-reason", "")),
                                      str(body.get("deadletter-description", "")))
            self._pump()
            return self._status(200, "OK", {})
        if operation == "com.microsoft:schedule-message":
            numbers = [int(self._enqueue(entity, bytes(item["message"]))) for item in body.get("messages", [])]
            self._pump()
            return self._status(200, "OK", {"sequence-numbers": numbers})
        return self._status(501, f"operation {operation!r} is not supported by the test broker")

    def _annotated(self, entry: Entry) -> bytes:
        message = proton.Message()
        message.decode(entry.raw)
        message.annotations = dict(message.annotations or {}, **{
            proton.symbol("x-opt-sequence-number"): int(entry.sequence),
            proton.symbol("x-opt-enqueued-time"): proton.timestamp(int(entry.enqueued * 1000))})
        return bytes(message.encode())

    @staticmethod
    def _status(code: int, description: str, body: Optional[Dict] = None) -> proton.Message:
        return proton.Message(body=body, properties={"statusCode": code, "statusDescription": description})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    port = free_port()
    broker = Broker(f"127.0.0.1:{port}")
    container = Container(broker)
    print(port, flush=True)
    container.run()


if __name__ == "__main__":
    sys.exit(main())
