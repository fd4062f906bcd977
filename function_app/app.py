"""The functions: two Service Bus triggers (jobs, run events), an Event Grid blob trigger on the
uploads area, and the heartbeat timer."""
from __future__ import annotations

import json
import logging
import os
import time

import azure.functions as func

from xt_submit import handlers
from xt_submit.domain.messages import UploadReceived, decode_event
from xt_submit.handlers.routing import audit_fields, route

from function_app import settings

app = func.FunctionApp()
log = logging.getLogger("xt.functions")

HEARTBEAT_TIMEOUT_SECONDS = float(os.environ.get("XT_HEARTBEAT_TIMEOUT", "300"))


def _audit(function: str, event, started: float, outcome: str, **extra) -> None:
    """One structured line per invocation: function, event, job, run, outcome, duration."""
    fields = {"function": function, **audit_fields(event)}
    fields.update(outcome=outcome, duration_ms=round((time.monotonic() - started) * 1000, 1), **extra)
    log.info(json.dumps(fields, default=str))


def handle_message(function: str, body: bytes, table: dict):
    """Decode, call the one handler for it, audit. A failure is re-raised: the message is retried
    and, past the queue's max delivery count, dead-lettered by Service Bus."""
    started, event = time.monotonic(), None
    try:
        event = decode_event(body)
        result = route(event, table)(event, settings.ports())
    except Exception as exc:
        _audit(function, event, started, "failed", reason=f"{function}: {type(exc).__name__}: {exc}")
        raise
    _audit(function, event, started, "ok")
    return result


@app.function_name("dispatch")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="%XT_JOBS_QUEUE%", connection="XT_SERVICEBUS")
def dispatch(msg: func.ServiceBusMessage) -> None:
    handle_message("dispatch", msg.get_body(), handlers.ON_JOBS_QUEUE)


@app.function_name("run_events")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="%XT_EVENTS_QUEUE%", connection="XT_SERVICEBUS")
def run_events(msg: func.ServiceBusMessage) -> None:
    handle_message("run_events", msg.get_body(), handlers.ON_EVENTS_QUEUE)


@app.function_name("upload_received")
@app.blob_trigger(arg_name="blob", path="%XT_STORAGE_CONTAINER%/uploads/{name}", connection="XT_STORAGE",
                  source=func.BlobSource.EVENT_GRID)
def upload_received(blob: func.InputStream) -> None:
    started = time.monotonic()
    key = (blob.name or "").split("/", 1)[-1]  # "<container>/uploads/x.zip" -> "uploads/x.zip"
    event = UploadReceived(upload_key=key, received_at=time.time())
    try:
        handlers.accept_upload(event, settings.ports())
    except Exception as exc:
        _audit("upload_received", event, started, "failed", reason=f"{type(exc).__name__}: {exc}", upload=key)
        raise
    _audit("upload_received", event, started, "ok", upload=key)


@app.function_name("heartbeat_timer")
@app.timer_trigger(arg_name="timer", schedule="0 */1 * * * *")
def heartbeat_timer(timer: func.TimerRequest) -> None:
    started = time.monotonic()
    ports = settings.ports()
    # Batch preemptions first: a preempted run's node went silent, but it is requeued, not lost.
    # They travel through the events queue like any node report (retried, dead-lettered).
    preempted = ports.compute.check_tasks()
    if preempted:
        ports.publisher.send_events(preempted)
    marked = handlers.mark_silent_runs(time.time(), HEARTBEAT_TIMEOUT_SECONDS, ports)
    _audit("heartbeat_timer", None, started, "ok", runs_marked=marked, runs_preempted=[e.run for e in preempted])
