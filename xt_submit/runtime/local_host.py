"""The local host: the embedded default's stand-in for Azure Functions.

Drains the jobs and events queues into the handlers, watches the uploads area, and drives the
local executor. One host per XT_HOME (an flock guards it); `xt run` starts one on demand and it
exits after a while with nothing to do; `xt serve` runs it in the foreground.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from xt_submit import handlers
from xt_submit.domain import layout
from xt_submit.domain.messages import EVENTS_QUEUE, JOBS_QUEUE, UploadReceived
from xt_submit.domain.delivery import outcome_of
from xt_submit.handlers.routing import audit_fields, handle
from xt_submit.ports import ReceivedMessage
from xt_submit.runtime.executors import executors_for
from xt_submit.ports import Parts
from xt_submit.runtime.host_control import (LOCK_FILE, HostLock, ensure_host,  # noqa: F401 (their old home)
                                            ensure_host_for_unfinished_work, host_running, unfinished_work)

HEARTBEAT_TIMEOUT_SECONDS = float(os.environ.get("XT_HEARTBEAT_TIMEOUT", "300"))
HEARTBEAT_CHECK_SECONDS = min(30.0, HEARTBEAT_TIMEOUT_SECONDS / 4)
HANDLERS: Dict[type, Callable] = {**handlers.ON_JOBS_QUEUE, **handlers.ON_EVENTS_QUEUE}

log = logging.getLogger("xt.host")


class LocalHost:
    def __init__(self, parts: Parts, *, idle_exit_seconds: Optional[float] = None, poll_seconds: float = 0.2,
                 busy_poll_seconds: float = 0.01, busy_wait_seconds: float = 0.05) -> None:
        """busy_poll_seconds: between passes while pool runs (supervised by polling) are in flight;
        busy_wait_seconds: the longest wait while only local runs are (their exits wake the host at once)."""
        self.parts = parts
        self.ports = parts.ports
        self.queue = parts.queue
        self.executor, self.pools = executors_for(parts)
        self.idle_exit_seconds = idle_exit_seconds
        self.poll_seconds = poll_seconds
        self.busy_poll_seconds = busy_poll_seconds
        self.busy_wait_seconds = busy_wait_seconds
        self._uploads_checked = 0.0
        self._heartbeats_checked = 0.0
        self._seen_uploads_path = parts.home / "uploads_seen.json"
        self.passes = 0  # of serve's loop (a test counts them: a waiting retry must not make them many)

    def process(self, message: ReceivedMessage) -> None:
        started = time.monotonic()
        audit: Dict[str, Any] = {"queue": message.queue, "delivery": message.delivery_count}
        try:
            event, _ = handle(message.body, self.ports, HANDLERS)
            audit.update(audit_fields(event), outcome="ok")
            self.queue.complete(message)
        except Exception as exc:  # the Functions app's rule: permanent or out of retries -> dead letter
            outcome = outcome_of(exc, message.delivery_count - 1)
            if outcome.action == "dead-letter":
                audit.update(outcome="dead-lettered", reason=outcome.reason)
                self.queue.dead_letter(message, outcome.reason)
            else:  # transient until proven otherwise: tried again after its delay, not at once
                audit.update(outcome="abandoned", reason=outcome.reason, retry_in_seconds=outcome.delay_seconds)
                self.queue.abandon(message, outcome.reason, delay_seconds=outcome.delay_seconds)
        audit["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        log.info(json.dumps(audit, default=str))

    def step(self) -> bool:
        """One pass over everything; True if anything happened."""
        busy = False
        for queue_name in (JOBS_QUEUE, EVENTS_QUEUE):
            for message in self.queue.receive(queue_name, max_messages=32):
                self.process(message)
                busy = True
        busy |= self._watch_uploads()
        busy |= self.executor.poll()
        try:
            busy |= self.pools.poll()
        except Exception:  # one box's surprise must not stop the host (and every local run) with it
            log.exception("pool executor")
        busy |= self._check_heartbeats()
        return busy

    def _check_heartbeats(self) -> bool:
        """The heartbeat timer (a timer trigger on Azure)."""
        now = time.time()
        if now - self._heartbeats_checked < HEARTBEAT_CHECK_SECONDS:
            return False
        self._heartbeats_checked = now
        marked = handlers.mark_silent_runs(now, HEARTBEAT_TIMEOUT_SECONDS, self.ports)
        for run in marked:
            log.info(json.dumps({"event": "HeartbeatTimer", "run": run, "outcome": "marked error"}))
        return bool(marked)

    def _watch_uploads(self) -> bool:
        """The embedded Event Grid: each new zip under uploads/ becomes an UploadReceived (zips only,
        as the team's subscription filters: the uploads/<name>.result.json written back is no upload)."""
        now = time.time()
        if now - self._uploads_checked < 1.0:
            return False
        self._uploads_checked = now
        keys = [k for k in self.ports.storage.list(layout.UPLOADS_PREFIX) if k.endswith(".zip")]
        if not keys:
            return False
        try:
            seen = set(json.loads(self._seen_uploads_path.read_text()))
        except (OSError, ValueError):
            seen = set()
        new = [k for k in keys if k not in seen]
        for key in new:
            self.ports.publisher.send_job(UploadReceived(upload_key=key, received_at=now))
        if new:
            tmp = self._seen_uploads_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(sorted(seen | set(new))))
            os.replace(tmp, self._seen_uploads_path)
        return bool(new)

    def has_work(self) -> bool:
        return unfinished_work(self.parts)

    def serve(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        idle_since = time.monotonic()
        while not should_stop():
            self.passes += 1
            if self.step():
                idle_since = time.monotonic()
                continue
            if self.parts.compute.active_count() > 0:
                # runs in flight: their events and exits want a prompt answer (the next run starts then)
                idle_since = time.monotonic()
                if not self.executor.running:
                    # woken by what the pool's threads hand over: a run's events and end, and a box that
                    # just answered (the first runs of a pool job wait for that, not for a pause)
                    self.pools.wait(self.busy_poll_seconds if self.pools.running else self.busy_wait_seconds)
                else:
                    self.executor.wait(self.busy_poll_seconds if self.pools.running else self.busy_wait_seconds)
                continue
            waiting = self._seconds_until_a_message()
            if waiting is not None:
                # a retry held back (or a message just sent): not idle, but nothing to do before it is due,
                # except what a client may send meanwhile, looked for at the idle pace
                idle_since = time.monotonic()
                self._idle(min(waiting, self.poll_seconds))
                continue
            if self.idle_exit_seconds is not None and time.monotonic() - idle_since > self.idle_exit_seconds:
                return
            self._idle(self.poll_seconds)

    def _idle(self, seconds: float) -> None:
        """Sleep, woken by a client's send where the queue can tell (the embedded one, listened to)."""
        if getattr(self.queue, "listening", False):
            self.queue.wait_for_send(seconds)  # type: ignore[attr-defined]
        else:
            time.sleep(seconds)

    def _seconds_until_a_message(self) -> Optional[float]:
        until = getattr(self.queue, "seconds_until_receivable", None)  # the embedded queue's (the one a host serves)
        if until is None:  # a queue that cannot say: look again soon
            return self.busy_wait_seconds if self.queue.count(JOBS_QUEUE) + self.queue.count(EVENTS_QUEUE) else None
        return until((JOBS_QUEUE, EVENTS_QUEUE))


def run_host(home: Path, build: Callable[[], Parts], *, idle_exit_seconds: Optional[float],
             connect_ahead: Sequence[str] = ()) -> int:
    """Serve until idle (or forever). Returns 0, or 1 if another host holds the lock.
    build: makes the embedded default's parts for home (once the lock is held); connect_ahead: pools
    whose boxes to connect to before the first pass (the job on its way runs there)."""
    lock = HostLock(home)
    if not lock.acquire():
        return 1
    logging.basicConfig(filename=str(home / "host.log"), level=logging.INFO, format="%(asctime)s %(message)s")
    parts = build()
    parts.queue.release_locks()  # we hold the host lock: any message still locked was held by a host that died
    listen = getattr(parts.queue, "listen", None)  # the embedded queue's: a client's send wakes the idle host
    if listen is not None:
        listen()
    host = LocalHost(parts, idle_exit_seconds=idle_exit_seconds)
    # what is loaded by now lives as long as the host: its full collections need not walk it again
    gc.freeze()
    for pool in connect_ahead:
        host.pools.connect_ahead(pool)
    while True:
        host.serve()
        # Close the race with a client that enqueued while we decided to stop: it saw the lock held
        # and started nobody, so look once more after letting go.
        lock.release()
        if not host.has_work() or not lock.acquire():
            return 0
