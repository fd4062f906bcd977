"""Queues on Azure Service Bus (azure-servicebus): the same peek-lock interface as SqliteQueue.

Sends go out in batches (split when one is full); receives are peek-lock; a message is settled
through the receiver that got it. `<queue>/$DeadLetterQueue` names the queue's dead-letter
sub-queue, as in the embedded queue.

Every message gets a message id derived from its body (a queue with duplicate detection on drops
a re-sent duplicate). One client is shared by the Functions worker's threads (maxConcurrentCalls):
the SDK's senders are not thread-safe, so each queue's sender is used under its own lock.
"""
from __future__ import annotations

import datetime
import hashlib
import threading
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from xt_submit.domain.delivery import DEAD_LETTER_REASON_PROPERTY
from xt_submit.domain.messages import check_message_sizes
from xt_submit.ports import LockLost, MessageQueue, ReceivedMessage

DEAD_LETTER_SUFFIX = "/$DeadLetterQueue"


def message_id_for(body: bytes) -> str:
    """The same body, the same id: Service Bus's duplicate detection keys on it (at most 128 chars)."""
    return hashlib.sha256(body).hexdigest()[:32]


class ServiceBusQueue(MessageQueue):
    def __init__(self, connection_string: str = "", *, namespace: str = "", credential=None,
                 max_wait_time: float = 1.0) -> None:
        from azure.servicebus import ServiceBusClient

        if connection_string:
            self.client = ServiceBusClient.from_connection_string(connection_string)
        elif namespace and credential is not None:
            self.client = ServiceBusClient(namespace, credential)  # an azure-identity credential
        else:
            raise ValueError("service bus: expected a connection string, or a namespace with a credential")
        self.max_wait_time = max_wait_time
        self._senders: Dict[str, object] = {}
        self._sender_locks: Dict[str, threading.Lock] = {}
        self._senders_lock = threading.Lock()
        self._receivers: Dict[str, object] = {}
        self._held: Dict[str, Tuple[object, object]] = {}  # lock token -> (receiver, SDK message)

    def _sender(self, queue: str):
        """The queue's sender and the lock to hold while using it."""
        with self._senders_lock:
            if queue not in self._senders:
                self._senders[queue] = self.client.get_queue_sender(queue)
                self._sender_locks[queue] = threading.Lock()
            return self._senders[queue], self._sender_locks[queue]

    def _receiver(self, queue: str):
        from azure.servicebus import ServiceBusSubQueue

        if queue not in self._receivers:
            name, dead = (queue[: -len(DEAD_LETTER_SUFFIX)], True) if queue.endswith(DEAD_LETTER_SUFFIX) else (queue, False)
            receiver = self.client.get_queue_receiver(
                name, sub_queue=ServiceBusSubQueue.DEAD_LETTER if dead else None, max_wait_time=self.max_wait_time)
            # Open the link now, under the client's retry policy: a first receive would open it within
            # its own wait (newer SDKs bound it so), and a wait shorter than a link's opening would fail.
            receiver.__enter__()
            self._receivers[queue] = receiver
        return self._receivers[queue]

    def send(self, queue: str, bodies: Sequence[bytes]) -> None:
        from azure.servicebus import ServiceBusMessage
        from azure.servicebus.exceptions import MessageSizeExceededError

        check_message_sizes(queue, bodies)  # the standard tier's limit, said before the SDK fails a batch on it
        sender, lock = self._sender(queue)
        with lock:
            batch = sender.create_message_batch()
            for body in bodies:
                message = ServiceBusMessage(body, message_id=message_id_for(body))
                try:
                    batch.add_message(message)
                except MessageSizeExceededError:
                    sender.send_messages(batch)  # full: send it and start the next
                    batch = sender.create_message_batch()
                    batch.add_message(message)
            if len(batch):
                sender.send_messages(batch)

    def send_later(self, queue: str, body: bytes, *, delay_seconds: float, message_id: str,
                   properties: Optional[Mapping[str, object]] = None) -> None:
        """One message, invisible until `delay_seconds` from now (Service Bus's scheduled enqueue
        time), with application properties: how the Functions app backs off a failed message."""
        from azure.servicebus import ServiceBusMessage

        message = ServiceBusMessage(body, message_id=message_id[:128], application_properties=dict(properties or {}))
        if delay_seconds > 0:
            message.scheduled_enqueue_time_utc = (datetime.datetime.now(datetime.timezone.utc)
                                                  + datetime.timedelta(seconds=delay_seconds))
        sender, lock = self._sender(queue)
        with lock:
            sender.send_messages(message)

    def receive(self, queue: str, max_messages: int = 1) -> List[ReceivedMessage]:
        receiver = self._receiver(queue)
        received = []
        for message in receiver.receive_messages(max_message_count=max_messages, max_wait_time=self.max_wait_time):
            token = str(message.lock_token)
            self._held[token] = (receiver, message)
            received.append(ReceivedMessage(message.sequence_number, queue, b"".join(message.body),
                                            message.delivery_count or 1, token))
        return received

    def _settle(self, message: ReceivedMessage, action) -> None:
        from azure.servicebus.exceptions import MessageLockLostError, ServiceBusError

        try:
            receiver, sdk_message = self._held.pop(message.lock_token)
        except KeyError:
            raise LockLost(f"message {message.id} on {message.queue}: not held here") from None
        try:
            action(receiver, sdk_message)
        except MessageLockLostError:
            raise LockLost(f"message {message.id} on {message.queue}: lock lost") from None
        except ServiceBusError as exc:
            if "lock" in str(exc).lower():
                raise LockLost(f"message {message.id} on {message.queue}: {exc}") from None
            raise

    def complete(self, message: ReceivedMessage) -> None:
        self._settle(message, lambda receiver, m: receiver.complete_message(m))

    def abandon(self, message: ReceivedMessage, error: str = "", delay_seconds: float = 0.0) -> None:
        self._settle(message, lambda receiver, m: receiver.abandon_message(m))

    def dead_letter(self, message: ReceivedMessage, reason: str) -> None:
        reason = reason[:4000]
        self._settle(message, lambda receiver, m: receiver.dead_letter_message(m, reason=reason[:200],
                                                                                 error_description=reason))

    def renew_lock(self, message: ReceivedMessage) -> None:
        from azure.servicebus.exceptions import MessageLockLostError

        held = self._held.get(message.lock_token)
        if held is None:
            raise LockLost(f"message {message.id} on {message.queue}: not held here")
        receiver, sdk_message = held
        try:
            receiver.renew_message_lock(sdk_message)
        except MessageLockLostError:
            raise LockLost(f"message {message.id} on {message.queue}: lock lost") from None

    def peek(self, queue: str, limit: int = 100) -> List[dict]:
        return [{"id": m.sequence_number, "body": b"".join(m.body), "delivery_count": m.delivery_count,
                 "reason": _reason(m.dead_letter_reason or "", m.dead_letter_error_description or "",
                                   _property(m, DEAD_LETTER_REASON_PROPERTY))}
                # from the first message each time: the SDK's receiver would go on after its last peek
                for m in self._receiver(queue).peek_messages(max_message_count=limit, sequence_number=1)]

    def close(self) -> None:
        for handler in list(self._senders.values()) + list(self._receivers.values()):
            handler.close()
        self.client.close()


def _property(message, name: str) -> str:
    value = (message.application_properties or {}).get(name.encode()) or (message.application_properties or {}).get(name)
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _reason(reason: str, description: str, requested: str = "") -> str:
    """One line from Service Bus's pair (ours repeat the reason in full as the description), or
    the reason a sender put in the message when it had to leave the dead-lettering to Service Bus."""
    if requested:
        return requested
    if not description or description.startswith(reason):
        return description or reason
    return f"{reason}: {description}"
