"""The compute agent: `xt serve` with a team's services. It runs the tasks the Functions app puts
on the tasks queue — on this machine (local targets) or on the boxes of this config's pool
targets — with the team's storage (a box fetches its code with a read-only link) and reports run
events to the events queue, exactly as the local host does for the embedded default.

One agent per tasks queue: a cancel is a message, and it must reach the machine running the run.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

from xt_submit.domain import layout
from xt_submit.services import targets
from xt_submit.domain.messages import CANCELLED, ContractError, RunFinished, TasksQueued, decode_task_message
from xt_submit.runtime.executors import executors_for
from xt_submit.runtime.host_control import HostLock
from xt_submit.ports import AgentParts

log = logging.getLogger("xt.agent")


class Agent:
    """Two loops: a thread takes tasks off the queue into this machine's task table (it waits on
    the queue, with its own queue client and database connection), and the main loop runs them."""

    def __init__(self, agent: AgentParts, cfg) -> None:
        parts = agent.parts
        self.parts = parts
        self.compute = parts.compute
        self.executors = executors_for(parts)
        for name, target in cfg.compute_targets.items():  # the boxes come from this machine's config
            if targets.KINDS[target.service].runs_here and not list(targets.problems(cfg, name)):
                targets.register(self.compute, cfg, name)
        self.tasks_queue = agent.tasks_queue
        self.queue = agent.tasks
        self._taker_compute = agent.taker_compute
        self._taker_publisher = agent.taker_publisher
        self._stopping = threading.Event()

    # --- taking tasks (the receiving thread) -------------------------------------------------
    def take(self) -> bool:
        try:
            received = self.queue.receive(self.tasks_queue, max_messages=32)
        except Exception:  # the queue is away for a moment (a network blip, a link that timed out): go on
            log.exception("receiving tasks")
            self._stopping.wait(1.0)
            return False
        for message in received:
            self._apply(message)
        return bool(received)

    def _apply(self, message) -> None:
        try:
            task_message = decode_task_message(message.body)
        except ContractError as exc:
            self.queue.dead_letter(message, str(exc))
            return
        if isinstance(task_message, TasksQueued):
            self._taker_compute.submit(task_message.tasks)
            outcome = {"event": "TasksQueued", "runs": len(task_message.tasks)}
        else:
            not_started = self._taker_compute.cancel(task_message.workspace, task_message.runs)
            now = time.time()
            self._taker_publisher.send_events([
                RunFinished(workspace=task_message.workspace, job=layout.job_of_run(run), run=run, node_id="",
                            status=CANCELLED, exit_code=None, started_at=now, ended_at=now,
                            reason="cancelled by request") for run in not_started])
            outcome = {"event": "TasksCancelled", "runs": len(task_message.runs), "never_started": len(not_started)}
        self.queue.complete(message)
        log.info(json.dumps(outcome))

    # --- running them (the main loop) --------------------------------------------------------
    def step(self) -> bool:
        busy = False
        for executor in self.executors:
            try:
                busy |= executor.poll()
            except Exception:  # one box's surprise must not stop the agent
                log.exception("executor")
        return busy

    def serve(self, should_stop: Callable[[], bool] = lambda: False, busy_poll_seconds: float = 0.01,
              idle_poll_seconds: float = 0.2) -> None:
        taker = threading.Thread(target=self._take_until_stopped, name="xt-tasks", daemon=True)
        taker.start()
        try:
            while not should_stop():
                if not self.step():
                    time.sleep(busy_poll_seconds if self.compute.active_count() else idle_poll_seconds)
        finally:
            self._stopping.set()
            taker.join(timeout=10)

    def _take_until_stopped(self) -> None:
        while not self._stopping.is_set():
            self.take()


def run_agent(home: Path, build: Callable[[], AgentParts], cfg) -> int:
    """Serve the team's tasks queue until stopped. Returns 1 if a host or agent already holds XT_HOME.
    build: makes the agent's parts (after the lock is held, so a second agent signs in for nothing)."""
    lock = HostLock(home)
    if not lock.acquire():
        return 1
    logging.basicConfig(filename=str(home / "agent.log"), level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs' per-request lines would drown the agent's own
    Agent(build(), cfg).serve()
    return 0
