"""One path from a message's bytes to its handler, shared by the local host and the Functions app:
decode strictly, route by type for the queue it came on, and describe the event for the audit line."""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from xt_submit.domain.messages import ContractError, JobSubmitted, decode_event
from xt_submit.ports import Ports


def route(event: Any, table: Dict[type, Callable]) -> Callable:
    """The handler `table` (a queue's) gives the event's type."""
    handler = table.get(type(event))
    if handler is None:
        raise ContractError(f"{type(event).__name__} does not belong on this queue")
    return handler


def handle(body: bytes, ports: Ports, table: Dict[type, Callable]) -> Tuple[Any, Any]:
    """Decode one message and apply its handler; returns (event, result)."""
    event = decode_event(body)
    return event, route(event, table)(event, ports)


def audit_fields(event: Any) -> Dict[str, Any]:
    """What an audit line says of an event: its type and the workspace, job and run it is about."""
    fields: Dict[str, Any] = {"event": type(event).__name__ if event is not None else None}
    for name in ("workspace", "job", "run"):
        if hasattr(event, name):
            fields[name] = getattr(event, name)
    if isinstance(event, JobSubmitted):
        fields["workspace"] = event.manifest.workspace
    return fields
