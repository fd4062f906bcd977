"""What happens to a message whose handler failed: the one rule the local host and the Functions
app follow, and the message properties that carry a retry's state through a queue."""
from __future__ import annotations

from typing import Optional

import msgspec

from xt_submit.domain.errors import NotFound, OneLineError

# Errors no redelivery can fix (bad contracts, unsafe zips, unknown runs): dead-letter at once, with the reason.
PERMANENT_ERRORS = (OneLineError, NotFound)
# Waits between the attempts of a message that failed for a reason that may pass (a store throttled,
# Batch or the network away): about 18 minutes in all, then it is dead-lettered with the last reason.
# (A Service Bus trigger redelivers at once, and host.json's retry block does not apply to it.)
RETRY_DELAYS_SECONDS = (5.0, 15.0, 45.0, 120.0, 300.0, 600.0)

ATTEMPT_PROPERTY = "xt-attempt"  # earlier attempts of a re-sent message
# Set by a sender that could not dead-letter a message itself (a Python function cannot settle its
# trigger's message): the reason travels in the message, and the queue's peek reports it.
DEAD_LETTER_REASON_PROPERTY = "xt-dead-letter-reason"


class Outcome(msgspec.Struct, frozen=True):  # not a dataclass: a struct's class costs start-up far less
    """What to do with a message after its handler ran: "ok", "retry" after a delay, or "dead-letter"."""

    action: str
    reason: str = ""
    delay_seconds: float = 0.0


def outcome_of(error: Optional[BaseException], attempts_before: int) -> Outcome:
    """Permanent errors dead-letter at once; others are retried with backoff until
    RETRY_DELAYS_SECONDS runs out."""
    if error is None:
        return Outcome("ok")
    if isinstance(error, PERMANENT_ERRORS):
        return Outcome("dead-letter", str(error))
    reason = f"{type(error).__name__}: {error}"
    if attempts_before < len(RETRY_DELAYS_SECONDS):
        return Outcome("retry", reason, RETRY_DELAYS_SECONDS[attempts_before])
    return Outcome("dead-letter", f"gave up after {attempts_before + 1} attempts: {reason}")
