"""The Publisher port over a queue (the embedded SQLite queue, or Service Bus)."""
from __future__ import annotations

from typing import Any, Sequence

from xt_submit.domain.messages import EVENTS_QUEUE, JOBS_QUEUE, check_message_sizes, encode
from xt_submit.ports import MessageQueue, Publisher


class QueuePublisher(Publisher):
    """Each message encoded and held to the queues' size limit before any is sent: an oversize one is
    refused here (MessageTooLarge, naming the queue and the sizes), never failed later by the queue."""

    def __init__(self, queue: MessageQueue, jobs_queue: str = JOBS_QUEUE, events_queue: str = EVENTS_QUEUE) -> None:
        self.queue = queue
        self.jobs_queue = jobs_queue
        self.events_queue = events_queue

    def send_job(self, message: Any) -> None:
        self._send(self.jobs_queue, [encode(message)])

    def send_events(self, messages: Sequence[Any]) -> None:
        self._send(self.events_queue, [encode(m) for m in messages])

    def _send(self, queue: str, bodies: Sequence[bytes]) -> None:
        check_message_sizes(queue, bodies)
        self.queue.send(queue, bodies)
