"""Queues on Azure Service Bus (azure-servicebus): the same peek-lock interface as SqliteQueue.

Sends go out in batches (split when one is full); receives are peek-lock; a message is settled
through the receiver that got it. `<queue>/$DeadLetterQueue` names the queue's dead-letter
sub-queue, as in the embedded queue.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from xt_submit.ports import LockLost, MessageQueue, ReceivedMessage

DEAD_LETTER_SUFFIX = "/$DeadLetterQueue"


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
        self._receivers: Dict[str, object] = {}
        self._held: Dict[str, Tuple[object, object]] = {}  # lock token -> (receiver, SDK message)

    def _sender(self, queue: str):
        if queue not in self._senders:
            self._senders[queue] = self.client.get_queue_sender(queue)
        return self._senders[queue]

    def _receiver(self, queue: str):
        from azure.servicebus import ServiceBusSubQueue

        if queue not in self._receivers:
            name, dead = (queue[: -len(DEAD_LETTER_SUFFIX)], True) if queue.endswith(DEAD_LETTER_SUFFIX) else (queue, False)
            self._receivers[queue] = self.client.get_queue_receiver(
                name, sub_queue=ServiceBusSubQueue.DEAD_LETTER if dead else None, max_wait_time=self.max_wait_time)
        return self._receivers[queue]

    def send(self, queue: str, bodies: Sequence[bytes]) -> None:
        from azure.servicebus import ServiceBusMessage
        from azure.servicebus.exceptions import MessageSizeExceededError

        sender = self._sender(queue)
        batch = sender.create_message_batch()
        for body in bodies:
            try:
                batch.add_message(ServiceBusMessage(body))
            except MessageSizeExceededError:
                sender.send_messages(batch)  # full: send it and start the next
                batch = sender.create_message_batch()
                batch.add_message(ServiceBusMessage(body))
        if len(batch):
            sender.send_messages(batch)

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

    def abandon(self, message: ReceivedMessage, error: str = "") -> None:
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
                 "reason": _reason(m.dead_letter_reason or "", m.dead_letter_error_description or "")}
                for m in self._receiver(queue).peek_messages(max_message_count=limit)]

    def close(self) -> None:
        for handler in list(self._senders.values()) + list(self._receivers.values()):
            handler.close()
        self.client.close()


def _reason(reason: str, description: str) -> str:
    """One line from Service Bus's pair: ours repeat the reason in full as the description."""
    if not description or description.startswith(reason):
        return description or reason
    return f"{reason}: {description}"
