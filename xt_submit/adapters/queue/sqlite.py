"""A durable message queue in SQLite with Service Bus's peek-lock semantics.

receive() locks a message for `lock_seconds`; complete() removes it; abandon() makes it visible
again with its delivery count kept; a message received more than `max_delivery_count` times, or
dead-lettered explicitly, moves to `<queue>/$DeadLetterQueue` with a reason.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Callable, List, Optional, Sequence

from xt_submit.domain.delivery import RETRY_DELAYS_SECONDS
from xt_submit.domain.messages import check_message_sizes
from xt_submit.adapters.queue.wake import Followers, Wake
from xt_submit.adapters.sqlite_util import LocalDb, heals, transaction
from xt_submit.ports import LockLost, MessageQueue, ReceivedMessage

DEAD_LETTER_SUFFIX = "/$DeadLetterQueue"
# domain/delivery decides when to give up (its last retry is delivery len+1); this only backs it up,
# for a message that stops its host each time and so is never settled.
MAX_DELIVERIES = len(RETRY_DELAYS_SECONDS) + 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    enqueued_at REAL NOT NULL,
    visible_at REAL NOT NULL DEFAULT 0,
    lock_token TEXT,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    dead_letter_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at, id);
"""
# What a recreated queue.db lacks. Nothing a run logged: the runs' events are also in storage (the
# run logs, run_stats.json), which `xt admin reindex` reads; but a JobSubmitted not yet dispatched
# exists nowhere else (its job has no name, nothing in storage names it), so it is submitted again.
LOST = ("recreated empty: jobs submitted but not yet dispatched are lost (submit them again), and runs whose"
        " events were not yet handled may show a stale state until `xt admin reindex`")


@heals
class SqliteQueue(MessageQueue):
    def __init__(self, path: str, *, lock_seconds: float = 300.0, max_delivery_count: int = MAX_DELIVERIES,
                 notice: Optional[Callable[[str], Any]] = None) -> None:
        self.path = path
        self.lock_seconds = lock_seconds
        self.max_delivery_count = max_delivery_count
        self._file = LocalDb(path, _SCHEMA, lost=LOST, notice=notice)
        self._file.conn  # opened now: damage is found, and reported, before anything else
        self._wake = Wake(path + ".wake")
        self._followers = Followers(path + ".followers")

    @property
    def _db(self):
        return self._file.conn

    def send(self, queue: str, bodies: Sequence[bytes]) -> None:
        check_message_sizes(queue, bodies)  # Service Bus's limit here too, so the embedded default catches it
        now = time.time()
        with transaction(self._db):
            self._db.executemany(
                "INSERT INTO messages (queue, body, enqueued_at) VALUES (?, ?, ?)",
                [(queue, body, now) for body in bodies],
            )
        self._wake.poke()

    def listen(self) -> bool:
        """This process serves the queue: wait_for_send wakes at another process's send."""
        return self._wake.listen()

    @property
    def listening(self) -> bool:
        return self._wake.listening

    def wait_for_send(self, seconds: float) -> bool:
        """Up to `seconds`; True if another process sent meanwhile. Only once listening."""
        return self._wake.wait(seconds)

    def receive(self, queue: str, max_messages: int = 1) -> List[ReceivedMessage]:
        received: List[ReceivedMessage] = []
        now = time.time()
        # Most of a host's passes find nothing: a look (a read under WAL) before taking the write lock.
        if self._db.execute("SELECT 1 FROM messages WHERE queue = ? AND visible_at <= ? LIMIT 1",
                            (queue, now)).fetchone() is None:
            return received
        with transaction(self._db):
            rows = self._db.execute(
                "SELECT id, body, delivery_count, last_error FROM messages"
                " WHERE queue = ? AND visible_at <= ? ORDER BY id LIMIT ?",
                (queue, now, max_messages),
            ).fetchall()
            for message_id, body, count, last_error in rows:
                if count >= self.max_delivery_count:
                    reason = f"MaxDeliveryCountExceeded: delivered {count} times; last error: {last_error or 'none'}"
                    self._move_to_dead_letter(message_id, queue, reason)
                    continue
                token = uuid.uuid4().hex
                self._db.execute(
                    "UPDATE messages SET visible_at = ?, lock_token = ?, delivery_count = delivery_count + 1 WHERE id = ?",
                    (now + self.lock_seconds, token, message_id),
                )
                received.append(ReceivedMessage(message_id, queue, bytes(body), count + 1, token))
        return received

    def complete(self, message: ReceivedMessage) -> None:
        with transaction(self._db):
            self._settle(message, "DELETE FROM messages WHERE id = ? AND lock_token = ?", (message.id, message.lock_token))
        self._followers.poke_all()  # handled: what a follower reads next has changed

    def followed(self):
        """A follower's pause, cut short when this queue's host completes a message."""
        return self._followers.follow()

    def abandon(self, message: ReceivedMessage, error: str = "", delay_seconds: float = 0.0) -> None:
        visible_at = time.time() + delay_seconds if delay_seconds > 0 else 0
        with transaction(self._db):
            self._settle(
                message,
                "UPDATE messages SET visible_at = ?, lock_token = NULL, last_error = ? WHERE id = ? AND lock_token = ?",
                (visible_at, error[:2000], message.id, message.lock_token),
            )

    def dead_letter(self, message: ReceivedMessage, reason: str) -> None:
        with transaction(self._db):
            self._owned(message)
            self._move_to_dead_letter(message.id, message.queue, reason)

    def renew_lock(self, message: ReceivedMessage) -> None:
        with transaction(self._db):
            self._settle(
                message,
                "UPDATE messages SET visible_at = ? WHERE id = ? AND lock_token = ?",
                (time.time() + self.lock_seconds, message.id, message.lock_token),
            )

    def release_locks(self) -> int:
        """Make every locked message receivable again: for a new host after its only predecessor died."""
        with transaction(self._db):
            return self._db.execute("UPDATE messages SET visible_at = 0, lock_token = NULL"
                                    " WHERE lock_token IS NOT NULL AND queue NOT LIKE '%/$DeadLetterQueue'").rowcount

    def count(self, queue: str) -> int:
        return self._db.execute("SELECT count(*) FROM messages WHERE queue = ?", (queue,)).fetchone()[0]

    def seconds_until_receivable(self, queues: Sequence[str]) -> Optional[float]:
        """How long until the first message of `queues` can be received (0: one can now; a retry held
        back, or one locked, counts from when it is visible again); None when they hold no message.
        The local host sleeps this long rather than polling while a retry waits."""
        placeholders = ",".join("?" * len(queues))
        (first,) = self._db.execute(f"SELECT min(visible_at) FROM messages WHERE queue IN ({placeholders})",
                                    list(queues)).fetchone()
        return None if first is None else max(0.0, first - time.time())

    def peek(self, queue: str, limit: int = 100) -> List[dict]:
        rows = self._db.execute(
            "SELECT id, body, delivery_count, dead_letter_reason FROM messages WHERE queue = ? ORDER BY id LIMIT ?",
            (queue, limit),
        ).fetchall()
        return [{"id": r[0], "body": bytes(r[1]), "delivery_count": r[2], "reason": r[3]} for r in rows]

    def _owned(self, message: ReceivedMessage) -> None:
        row = self._db.execute("SELECT lock_token, visible_at FROM messages WHERE id = ?", (message.id,)).fetchone()
        if row is None or row[0] != message.lock_token or row[1] < time.time():
            raise LockLost(f"message {message.id} on {message.queue}: lock lost")

    def _settle(self, message: ReceivedMessage, sql: str, params: tuple) -> None:
        self._owned(message)
        self._db.execute(sql, params)

    def _move_to_dead_letter(self, message_id: int, queue: str, reason: str) -> None:
        self._db.execute(
            "UPDATE messages SET queue = ?, visible_at = 0, lock_token = NULL, dead_letter_reason = ? WHERE id = ?",
            (queue + DEAD_LETTER_SUFFIX, reason[:4000], message_id),
        )

