"""The functions: Service Bus triggers for the jobs, run-events and uploads queues (Event Grid
delivers the storage's BlobCreated events for uploads/ to the last), and the heartbeat timer.

A Service Bus trigger redelivers a failed message at once, and a Python function cannot settle
its own message, so failures are handled here, by the rule the local host follows
(xt_submit.domain.delivery.outcome_of): a transient failure re-sends the message scheduled later with its
attempt count and completes this delivery; a permanent one (or the last attempt) re-sends it
flagged with the reason, and that copy is refused on every delivery until Service Bus
dead-letters it (MaxDeliveryCountExceeded, the reason in its properties for `xt admin`)."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Dict

import azure.functions as func

from xt_submit import handlers
from xt_submit.domain.blob_events import upload_from_blob_event
from xt_submit.domain.delivery import ATTEMPT_PROPERTY, DEAD_LETTER_REASON_PROPERTY, outcome_of
from xt_submit.domain.messages import UploadReceived, decode_event
from xt_submit.handlers.routing import audit_fields, route

from function_app import settings

app = func.FunctionApp()
log = logging.getLogger("xt.functions")

HEARTBEAT_TIMEOUT_SECONDS = float(os.environ.get("XT_HEARTBEAT_TIMEOUT", "300"))


class DeadLetterRequested(RuntimeError):
    """A flagged copy: refused until Service Bus dead-letters it."""


def _audit(function: str, event: Any, started: float, outcome: str, **extra: Any) -> None:
    """One structured line per invocation: function, event, job, run, outcome, duration (ERROR
    when it failed, so a failure is never sampled away or filtered out by level)."""
    fields = {"function": function, **audit_fields(event)}
    fields.update(outcome=outcome, duration_ms=round((time.monotonic() - started) * 1000, 1), **extra)
    log.log(logging.INFO if outcome == "ok" else logging.ERROR, json.dumps(fields, default=str))


def _property(msg: func.ServiceBusMessage, name: str) -> Any:
    return (msg.application_properties or {}).get(name)


def handle_message(function: str, msg: func.ServiceBusMessage, decode: Callable[[bytes], Any], table: Dict) -> None:
    """Decode, call the one handler for it, audit; on failure back off or dead-letter (see above)."""
    started, body, event = time.monotonic(), msg.get_body(), None
    requested = _property(msg, DEAD_LETTER_REASON_PROPERTY)
    if requested:
        _audit(function, None, started, "dead-lettering", reason=requested, delivery=msg.delivery_count)
        raise DeadLetterRequested(requested)
    attempts_before = int(_property(msg, ATTEMPT_PROPERTY) or 0)
    queues, error = settings.queues(), None
    try:
        event = decode(body)
        ports = settings.ports()  # building the ports may fail too: a store is down
        route(event, table)(event, ports)
    except Exception as exc:
        error = exc
    else:
        _publish_report(function, event, ports, started)
    outcome = outcome_of(error, attempts_before)
    queue, message_id = queues.names[function], msg.message_id or ""
    if outcome.action == "retry":
        queues.bus.send_later(queue, body, delay_seconds=outcome.delay_seconds,
                             message_id=f"{message_id}:{attempts_before + 1}",
                             properties={ATTEMPT_PROPERTY: attempts_before + 1})
        _audit(function, event, started, "retrying", reason=outcome.reason, attempt=attempts_before + 1,
               retry_in_s=outcome.delay_seconds)
    elif outcome.action == "dead-letter":
        queues.bus.send_later(queue, body, delay_seconds=0, message_id=f"{message_id}:dead",
                             properties={DEAD_LETTER_REASON_PROPERTY: f"{function}: {outcome.reason}"[:4000],
                                         ATTEMPT_PROPERTY: attempts_before + 1})
        _audit(function, event, started, "dead-lettered", reason=outcome.reason, attempt=attempts_before + 1)
    else:
        _audit(function, event, started, "ok")


def _publish_report(function: str, event: Any, ports: Any, started: float) -> None:
    """A job that just ended gets its report page in storage (`xt report --link` prints its link).
    The event was handled: a page that fails to render is audited, never retried or dead-lettered."""
    from xt_submit.services import html_report  # only once a job ends is the page needed

    try:
        key = html_report.publish_if_ended(ports.stats, ports.storage, event)
    except Exception as exc:  # noqa: BLE001 (any failure of the page is the page's, not the event's)
        _audit(function, event, started, "report failed", reason=f"{type(exc).__name__}: {exc}"[:500])
        return
    if key:
        _audit(function, event, started, "report published", key=key)


@app.function_name("dispatch")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="%XT_JOBS_QUEUE%", connection="XT_SERVICEBUS")
def dispatch(msg: func.ServiceBusMessage) -> None:
    handle_message("dispatch", msg, decode_event, handlers.ON_JOBS_QUEUE)


@app.function_name("run_events")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="%XT_EVENTS_QUEUE%", connection="XT_SERVICEBUS")
def run_events(msg: func.ServiceBusMessage) -> None:
    handle_message("run_events", msg, decode_event, handlers.ON_EVENTS_QUEUE)


@app.function_name("upload_received")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="%XT_UPLOADS_QUEUE%", connection="XT_SERVICEBUS")
def upload_received(msg: func.ServiceBusMessage) -> None:
    """The blob's name from its BlobCreated event; the handler reads the zip from storage itself."""
    handle_message("upload_received", msg, lambda body: upload_from_blob_event(body, settings.queues().container),
                   {UploadReceived: handlers.accept_upload})


@app.function_name("heartbeat_timer")
@app.timer_trigger(arg_name="timer", schedule="0 */1 * * * *")
def heartbeat_timer(timer: func.TimerRequest) -> None:
    started = time.monotonic()
    ports = settings.ports()
    # Batch preemptions first: a preempted run's node went silent, but it is requeued, not lost.
    # They travel through the events queue like any node report (retried, dead-lettered). One
    # target's failing check is logged by the router and the others are still checked; whatever
    # fails here, the silent-run sweep still runs.
    preempted, check_error = [], None
    try:
        preempted = ports.compute.check_tasks()
        if preempted:
            ports.publisher.send_events(preempted)
    except Exception as exc:
        check_error = exc
    marked = handlers.mark_silent_runs(time.time(), HEARTBEAT_TIMEOUT_SECONDS, ports)
    if check_error is not None:
        _audit("heartbeat_timer", None, started, "failed", runs_marked=marked,
               reason=f"check_tasks: {type(check_error).__name__}: {check_error}")
        raise check_error
    _audit("heartbeat_timer", None, started, "ok", runs_marked=marked, runs_preempted=[e.run for e in preempted])
