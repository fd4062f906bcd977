"""Runs this machine's queued tasks: a RunWrapper per run inside the host process (the run itself
is a separate session under a tiny reaper, so it outlives the host), at most `concurrent` per job
and MACHINE_MAX_RUNS in all; adopts the runs a dead host left behind. No task is launched twice."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Dict, Optional

from xt_submit.domain.messages import ERROR, FINISH_REASON_CHARS, RunFinished, RunTask, decode_task, encode
from xt_submit.ports import Node, Publisher, Storage, TaskTable
from xt_submit.runtime.wrapper import RunWrapper

# A task claimed but never started (its host died in between) is queued again after this long.
SPAWN_TIMEOUT_SECONDS = 30.0
# Runs at once on this machine, over all jobs (each job also has its own `concurrent`).
MACHINE_MAX_RUNS = int(os.environ.get("XT_LOCAL_MAX_RUNS", "0")) or max(2, 2 * (os.cpu_count() or 1))
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # the disk (or the user's quota) is full

log = logging.getLogger("xt.host")


class LocalExecutor:
    def __init__(self, compute: TaskTable, home: Path, storage: Storage, publisher: Publisher, node: Node) -> None:
        """node: this machine (its folder is home/nodes/local)."""
        self.compute = compute
        self.home = Path(home)
        self.storage = storage
        self.publisher = publisher
        self.node = node
        self.running: Dict[tuple, RunWrapper] = {}

    def node_dir(self, workspace: str, run: str) -> Path:
        return self.home / "nodes" / "local" / workspace / run

    def poll(self) -> bool:
        """One pass: supervise runs, forward cancels, launch into free slots, then finish the runs that
        ended. A run whose process ended frees its slot before it is reported (its last console and
        outputs shipped, RunFinished sent: this thread's longest step of a short run), so the next
        run starts first. True if anything changed."""
        changed = False
        ended = []
        for entry in self.compute.launched():
            if self._process_ended(entry):
                ended.append(entry)
            else:
                changed |= self._supervise(entry)
        freed = Counter((entry["workspace"], entry["job"]) for entry in ended)
        for task in self.compute.launchable(limit=MACHINE_MAX_RUNS, ended=freed):
            if self.compute.claim(task):
                self._launch(task)
                changed = True
        for entry in ended:
            changed |= self._supervise(entry)
        return changed

    def _process_ended(self, entry: dict) -> bool:
        """Whether a run this host started has no process left (its report is still to come)."""
        wrapper = self.running.get((entry["workspace"], entry["run"]))
        return wrapper is not None and entry["state"] == "launched" and wrapper.ended()

    def wait(self, timeout: float) -> None:
        """Until one of this machine's runs ends (the node awaits its reaper), or timeout seconds pass."""
        wait_for_exit = getattr(self.node, "wait_for_exit", None)  # a LocalNode's; any other node: a sleep
        if wait_for_exit is None or not self.running:
            time.sleep(timeout)
        else:
            wait_for_exit(timeout)

    def _launch(self, task: RunTask) -> None:
        node_dir = self.node_dir(task.workspace, task.run)
        wrapper = None
        try:
            node_dir.mkdir(parents=True, exist_ok=True)
            (node_dir / "task.json").write_bytes(encode(task))
            wrapper = RunWrapper(task, node_dir, self.storage, self.publisher, node=self.node)
            wrapper.start()
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            self._fail_for_disk(task, wrapper, "starting the run", exc)
            return
        self.running[(task.workspace, task.run)] = wrapper
        self.compute.set_launched(task.workspace, task.run)

    def _fail_for_disk(self, task: RunTask, wrapper: Optional[RunWrapper], doing: str, exc: OSError) -> None:
        """The disk is full: end the run with that reason rather than stop the host (and every other
        run) with it. Its process is killed, and what it logged so far is kept; the report goes by
        the wrapper's finish, or, when that needs the disk too, straight to the events queue."""
        reason = f"no space left on device while {doing}" + (f" ({exc.filename})" if exc.filename else "")
        log.warning("%s %s: %s", task.workspace, task.run, reason)
        if wrapper is not None and wrapper.state["pid"] is not None:
            with contextlib.suppress(OSError):
                self.node.kill_group(wrapper.state["pid"], signal.SIGKILL)
        try:
            if wrapper is None:
                raise exc
            wrapper.state["failure"] = wrapper.state["failure"] or reason
            wrapper.finish()
        except OSError as again:
            if again.errno not in DISK_FULL:
                raise
            now = time.time()
            self.publisher.send_events([RunFinished(
                workspace=task.workspace, job=task.job, run=task.run, node_id=self.node.name, status=ERROR,
                exit_code=None, started_at=(wrapper.state["started_at"] if wrapper else None) or now, ended_at=now,
                reason=reason[:FINISH_REASON_CHARS])])
        self.compute.mark(task.workspace, task.run, state="done")
        self.running.pop((task.workspace, task.run), None)

    def _wrapper_for(self, entry: dict) -> Optional[RunWrapper]:
        key = (entry["workspace"], entry["run"])
        if key in self.running:
            return self.running[key]
        node_dir = self.node_dir(*key)
        try:
            task = decode_task((node_dir / "task.json").read_bytes())
            wrapper = RunWrapper.resume(task, node_dir, self.storage, self.publisher, node=self.node)
        except (OSError, ValueError):
            return None  # a host died between claiming the task and starting it
        self.running[key] = wrapper
        return wrapper

    def _supervise(self, entry: dict) -> bool:
        wrapper = self._wrapper_for(entry)
        if wrapper is None:
            if time.time() - (entry["launched_at"] or 0) > SPAWN_TIMEOUT_SECONDS:
                self.compute.mark(entry["workspace"], entry["run"], state="queued")  # it never started: run it now
                return True
            return False
        try:
            if not wrapper.supervise(entry["cancel_requested"]):
                return False
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            self._fail_for_disk(wrapper.task, wrapper, "shipping its console, run log and outputs", exc)
            return True
        self.compute.mark(entry["workspace"], entry["run"], state="done")
        self.running.pop((entry["workspace"], entry["run"]), None)
        return True
