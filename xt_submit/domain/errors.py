"""The base of every error shown to a person: always one line, whatever the input held."""
from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class OneLineError(ValueError):
    """A ValueError whose message has its control characters escaped (a key with a newline in
    it, a name with a NUL) so it stays one readable line."""

    def __init__(self, message: str = "") -> None:
        super().__init__(_CONTROL.sub(lambda m: repr(m.group())[1:-1], str(message)))


class NotFound(KeyError):
    """A storage key, job or run that does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; a message reads better plain
        return str(self.args[0]) if self.args else "not found"
