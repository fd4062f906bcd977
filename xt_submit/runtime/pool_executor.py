"""Runs the tasks of `pool` targets on their boxes, from the local host (or the compute agent).

A box takes a run whenever it has a free slot (at most its max-runs at once), so a fast box does
more of a sweep. A box that cannot be reached is reported by name (host log, `xt view status`,
and the job's log) and its share goes to the others; it is tried again later. The run wrapper's
logic is the one local runs use, on the box's Node: the code goes over SFTP (or the box fetches it
with a read-only link), events come back through this process, and a dropped connection only
pauses the shipping of what the run wrote.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
import time
from pathlib import Path
from typing import Dict, Optional

import msgspec

from xt_submit.domain import layout, run_log
from xt_submit.domain.boxes import BoxError
from xt_submit.domain.messages import ERROR, RunFinished, RunTask, SetupSpec, decode_task, encode
from xt_submit.ports import Node, NodeFactory, NodeUnreachable, Publisher, Storage, TaskTable
from xt_submit.runtime.local_executor import SPAWN_TIMEOUT_SECONDS
from xt_submit.runtime.wrapper import RunWrapper

# A run on a box is looked at (a few round trips) soon after it starts, then less often: a short
# run's end is seen at once, a long run costs at most one look per TICK_SECONDS.
TICK_SECONDS = 0.5
FIRST_LOOK_SECONDS = 0.02

log = logging.getLogger("xt.pool")


class Backoff:
    """When to try an unreachable box again: soon after a drop, then less and less often."""

    def __init__(self, first: float = 1.0, most: float = 60.0) -> None:
        self.first, self.most = first, most
        self._delay: Dict[str, float] = {}
        self._until: Dict[str, float] = {}

    def ready(self, box: str) -> bool:
        return time.monotonic() >= self._until.get(box, 0.0)

    def failed(self, box: str) -> None:
        delay = min(self.most, self._delay.get(box, self.first / 2) * 2)
        self._delay[box] = delay
        self._until[box] = time.monotonic() + delay

    def succeeded(self, box: str) -> None:
        self._delay.pop(box, None)
        self._until.pop(box, None)


class PoolExecutor:
    def __init__(self, compute: TaskTable, home: Path, storage: Storage, publisher: Publisher,
                 make_node: NodeFactory) -> None:
        """make_node(box, settings, runs_folder): the box's Node (bootstrap knows which kind)."""
        self.compute = compute
        self.make_node = make_node
        self.home = Path(home)
        self.storage = storage
        self.publisher = publisher
        self.nodes: Dict[str, tuple] = {}  # box -> ((address, key, host key), node)
        self.running: Dict[tuple, RunWrapper] = {}
        self.backoff = Backoff()
        self._next_look: Dict[tuple, float] = {}
        self._first_seen: Dict[tuple, float] = {}
        self._health: Dict[str, str] = {}  # box -> "" (reachable) or the error last recorded
        self._reported: set = set()  # (workspace, job, box) already told in a job log
        # two hosts (or two XT homes) using one box account keep their runs apart
        self._runs_folder = "runs/" + hashlib.sha256(f"{socket.gethostname()}:{self.home}".encode()).hexdigest()[:12]

    def poll(self) -> bool:
        changed = False
        for entry in self.compute.launched(pooled=True):
            changed |= self._supervise(entry)
        for pool in self.compute.pools_with_queued():
            changed |= self._place(pool)
        return changed

    # --- placing runs on boxes ---------------------------------------------------------------
    def _place(self, pool: str) -> bool:
        definition = self.compute.target(pool)
        if definition is None or definition.get("service") != "pool":
            return self._refuse(pool)
        busy = self.compute.runs_per_node()
        placed = False
        for box, settings in definition["boxes"].items():
            free = settings["max_runs"] - busy.get(box, 0)
            if free <= 0:
                continue
            tasks = self.compute.queued_in_pool(pool, free)
            if not tasks:
                break
            node = self._reachable(box, settings)
            if node is None:
                self._report_unreachable(box, tasks)
                continue
            for task in tasks:
                if self.compute.claim(task, node=box):
                    self._launch(task, box, settings, node)
                    placed = True
        return placed

    def _refuse(self, pool: str) -> bool:
        """Runs for a target this machine was never told about end at once, saying so (never silently run here)."""
        now = time.time()
        for task in self.compute.queued_in_pool(pool, 1000):
            if self.compute.claim(task):
                reason = f"target {pool!r} is not one this machine runs (its config has no local or pool target of that name)"
                self.publisher.send_events([RunFinished(workspace=task.workspace, job=task.job, run=task.run,
                                                        node_id="", status=ERROR, exit_code=None, started_at=now,
                                                        ended_at=now, reason=reason)])
                self.compute.mark(task.workspace, task.run, state="done")
        return True

    def _node(self, box: str, settings: dict):
        """The box's node, made afresh when its address, key or host key changed in the config."""
        how = (settings["address"], settings.get("key"), settings.get("host_key"))
        known = self.nodes.get(box)
        if known is None or known[0] != how:
            if known is not None:
                known[1].close()
            self.nodes[box] = (how, self.make_node(box, settings, self._runs_folder))
        return self.nodes[box][1]

    def _reachable(self, box: str, settings: dict):
        if not self.backoff.ready(box):
            return None
        node = self._node(box, settings)
        try:
            node.connect()
        except BoxError as exc:
            self._box_down(box, str(exc))
            return None
        self._back(box)
        return node

    def _back(self, box: str) -> None:
        """The box answered: it is tried at once after its next drop again."""
        self.backoff.succeeded(box)
        self._set_health(box, "")

    def _box_down(self, box: str, error: str) -> None:
        self.backoff.failed(box)
        if self._health.get(box) != error:
            log.warning(json.dumps({"event": "BoxUnreachable", "box": box, "error": error}))
        self._set_health(box, error)

    def _set_health(self, box: str, error: str) -> None:
        if self._health.get(box) != error:
            self._health[box] = error
            self.compute.record_box(box, not error, error)

    def _report_unreachable(self, box: str, tasks) -> None:
        error = self._health.get(box) or f"box {box} is not reachable"
        for task in tasks:
            if (task.workspace, task.job, box) not in self._reported:
                self._reported.add((task.workspace, task.job, box))
                self.storage.append(layout.job_log_key(task.workspace, task.job), run_log.record(
                    time.time(), "box-unreachable", {"box": box, "error": error, "runs go to": "the other boxes"}))

    def _launch(self, task: RunTask, box: str, settings: dict, node: Node) -> None:
        if settings.get("setup") is not None:  # a box's own setup (its paths, its environment) wins
            task = msgspec.structs.replace(task, setup=msgspec.convert(settings["setup"], SetupSpec))
        node_dir = self.home / "nodes" / box / task.workspace / task.run
        node_dir.mkdir(parents=True, exist_ok=True)
        try:
            work_dir = node.work_dir(str(node_dir), task.workspace, task.run)
        except NodeUnreachable as exc:
            self._box_down(box, str(exc))
            self.compute.requeue(task.workspace, task.run)
            return
        (node_dir / "task.json").write_bytes(encode(task))
        (node_dir / "placement.json").write_text(json.dumps({"box": box, "settings": settings, "work_dir": work_dir}))
        wrapper = RunWrapper(task, node_dir, self.storage, self.publisher, node_id=box, node=node, work_dir=work_dir)
        try:
            wrapper.start()
        except NodeUnreachable as exc:
            self._box_down(box, str(exc))
            if wrapper.state["pid"] is None:  # nothing runs on the box: the run goes back in line
                shutil.rmtree(node_dir, ignore_errors=True)
                self.compute.requeue(task.workspace, task.run)
                return
        self.running[(task.workspace, task.run)] = wrapper
        self.compute.set_launched(task.workspace, task.run)

    # --- supervising runs on boxes -----------------------------------------------------------
    def _supervise(self, entry: dict) -> bool:
        key = (entry["workspace"], entry["run"])
        now = time.monotonic()
        if now < self._next_look.get(key, 0.0):
            return False
        age = now - self._first_seen.setdefault(key, now)
        self._next_look[key] = now + min(TICK_SECONDS, max(FIRST_LOOK_SECONDS, age / 4))
        box = entry["node"]
        if not self.backoff.ready(box):
            return False  # a box that just dropped is not hammered (a connect can take CONNECT_TIMEOUT_SECONDS)
        try:
            wrapper = self.running.get(key) or self._resume(entry, box)
            if wrapper is None:
                if time.time() - (entry["launched_at"] or 0) > SPAWN_TIMEOUT_SECONDS:
                    self.compute.requeue(*key)  # a host died between claiming the task and starting it
                    return True
                return False
            ended = wrapper.supervise(entry["cancel_requested"])
            self._back(box)
            if not ended:
                return False
        except NodeUnreachable as exc:
            self._box_down(box, str(exc))
            return False
        self.compute.mark(*key, state="done")
        self.running.pop(key, None)
        self._next_look.pop(key, None)
        self._first_seen.pop(key, None)
        return True

    def _resume(self, entry: dict, box: str) -> Optional[RunWrapper]:
        """Adopt a run a previous host started (its state is in the node dir, on this machine)."""
        node_dir = self.home / "nodes" / box / entry["workspace"] / entry["run"]
        try:
            task = decode_task((node_dir / "task.json").read_bytes())
            placement = json.loads((node_dir / "placement.json").read_text())
            json.loads((node_dir / "wrapper_state.json").read_text())
        except (OSError, ValueError):
            return None
        node = self._reachable(box, placement["settings"])
        if node is None:
            raise NodeUnreachable(self._health.get(box) or f"box {box} is not reachable")
        wrapper = RunWrapper.resume(task, node_dir, self.storage, self.publisher, node_id=box, node=node,
                                    work_dir=placement["work_dir"])
        self.running[(entry["workspace"], entry["run"])] = wrapper
        return wrapper
