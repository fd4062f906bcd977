"""Runs the tasks of `pool` targets on their boxes, from the local host (or the compute agent).

A box takes a run whenever it has a free slot (at most its max-runs at once), so a fast box does
more of a sweep. A box that cannot be reached is reported by name (host log, `xt view status`,
and the job's log) and its share goes to the others; it is tried again later. The run wrapper's
logic is the one local runs use, on the box's Node: the code goes over SFTP (or the box fetches it
with a read-only link), events come back through this process, and a dropped connection only
pauses the shipping of what the run wrote.

Each run on a box is driven by a thread of its own (start, supervise, finish), so the boxes, and
the slots of one box, wait on their round trips at the same time rather than in turn; a box gone
silent holds only its own runs' threads. The task table, the host's queue client and the box
health records belong to the thread that polls: the run threads hand it what to write there.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import msgspec

from xt_submit.domain import layout, run_log
from xt_submit.domain.boxes import BoxError
from xt_submit.domain.messages import ERROR, FINISH_REASON_CHARS, RunFinished, RunTask, SetupSpec, decode_task, encode
from xt_submit.ports import NodeFactory, NodeUnreachable, Publisher, Storage, TaskTable
from xt_submit.runtime.local_executor import SPAWN_TIMEOUT_SECONDS
from xt_submit.runtime.wrapper import RunWrapper, saved_state

# A run on a box is looked at (an SFTP read or two) soon after it starts, then less often: a short
# run's end is seen at once, a long run costs at most one look per TICK_SECONDS.
TICK_SECONDS = 0.5
FIRST_LOOK_SECONDS = 0.02
# The task table is read (for new tasks, cancels, runs to adopt) at once after a run ended or was
# placed, else at most this often: the host polls every few ms while runs are in flight.
SCAN_SECONDS = 0.1
# A surprise while looking at a run (not a dropped box: storage, say) is tried again after a
# growing pause (TICK_SECONDS, doubled each time, at most SURPRISE_MOST_SECONDS); after
# SURPRISE_LIMIT in a row (about a minute) the run ends as an error saying what failed.
SURPRISE_LIMIT = 8
SURPRISE_MOST_SECONDS = 30.0

log = logging.getLogger("xt.pool")


def surprise_pause(surprises: int) -> float:
    """The pause before the next look at a run after `surprises` failed looks in a row."""
    return min(SURPRISE_MOST_SECONDS, TICK_SECONDS * 2 ** (surprises - 1)) if surprises else 0.0


class Backoff:
    """When to try an unreachable box again: soon after a drop, then less and less often. Shared by
    a box's run threads: a drop that several of them see at once counts once."""

    def __init__(self, first: float = 1.0, most: float = 60.0) -> None:
        self.first, self.most = first, most
        self._delay: Dict[str, float] = {}
        self._until: Dict[str, float] = {}
        self._lock = threading.Lock()

    def ready(self, box: str) -> bool:
        return time.monotonic() >= self._until.get(box, 0.0)

    def failed(self, box: str) -> None:
        with self._lock:
            if not self.ready(box):
                return  # already waiting out this drop
            delay = min(self.most, self._delay.get(box, self.first / 2) * 2)
            self._delay[box] = delay
            self._until[box] = time.monotonic() + delay

    def succeeded(self, box: str) -> None:
        with self._lock:
            self._delay.pop(box, None)
            self._until.pop(box, None)


class MainThreadCalls:
    """Calls that run threads hand to the polling thread (the owner of the task table and the
    queue client: an embedded SQLite connection must not be shared mid-transaction)."""

    def __init__(self) -> None:
        self._pending: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()
        self._arrived = threading.Event()

    def later(self, call: Callable[[], Any]) -> None:
        self._pending.put((call, None))
        self._arrived.set()

    def wait(self, timeout: float) -> None:
        """Until a call is handed over, or timeout seconds pass (the polling thread's pause)."""
        self._arrived.clear()
        if self._pending.empty():  # one handed over before the clear is in the queue
            self._arrived.wait(timeout)

    def wait_for(self, call: Callable[[], Any]) -> Any:
        """Run `call` on the polling thread and return its result (or raise its error) here."""
        done: Dict[str, Any] = {"event": threading.Event()}
        self._pending.put((call, done))
        self._arrived.set()
        done["event"].wait()
        if "error" in done:
            raise done["error"]
        return done.get("result")

    def run_pending(self) -> bool:
        ran = False
        while True:
            try:
                call, done = self._pending.get_nowait()
            except queue.Empty:
                return ran
            ran = True
            try:
                result = call()
                if done is not None:
                    done["result"] = result
            except Exception as exc:
                if done is None:
                    log.exception("pool executor")
                else:
                    done["error"] = exc
            finally:
                if done is not None:
                    done["event"].set()


class EventsThroughMainThread(Publisher):
    """The run threads' publisher: each send happens on the polling thread, and the run's thread
    waits until it did, as on a direct send (a run's state says it finished only once its RunFinished is out)."""

    def __init__(self, publisher: Publisher, calls: MainThreadCalls) -> None:
        self.publisher = publisher
        self.calls = calls
        self.jobs_queue = publisher.jobs_queue
        self.events_queue = publisher.events_queue

    def send_job(self, message: Any) -> None:
        self.calls.wait_for(lambda: self.publisher.send_job(message))

    def send_events(self, messages: Sequence[Any]) -> None:
        messages = list(messages)
        self.calls.wait_for(lambda: self.publisher.send_events(messages))


class BoxRun:
    """A run in flight on a box, as its thread and the polling thread share it."""

    def __init__(self, key: tuple, box: str, node) -> None:
        self.key = key
        self.box = box
        self.node = node
        self.cancel_requested = False
        self.wake = threading.Event()  # a cancel is passed on at once, not at the next look
        # its process ended, its finish (shipping, RunFinished) under way: its slot is free for the
        # box's next run (a run's process is what max-runs counts). Set and cleared by the polling thread.
        self.process_ended = False


class PoolExecutor:
    def __init__(self, compute: TaskTable, home: Path, storage: Storage, publisher: Publisher,
                 make_node: NodeFactory) -> None:
        """make_node(box, settings, runs_folder): the box's Node (bootstrap knows which kind)."""
        self.compute = compute
        self.make_node = make_node
        self.home = Path(home)
        self.storage = storage
        self.publisher = publisher
        self.calls = MainThreadCalls()
        self.events = EventsThroughMainThread(publisher, self.calls)
        self.nodes: Dict[str, tuple] = {}  # box -> ((address, key, host key), node)
        self.running: Dict[tuple, BoxRun] = {}  # the runs with a thread driving them
        self.backoff = Backoff()
        self._answered: Dict[str, bool] = {}  # box -> connected since its last drop (runs may go there)
        self._connecting: set = set()  # boxes a thread is connecting to
        self._health: Dict[str, str] = {}  # box -> "" (reachable) or the error last recorded
        self._reported: set = set()  # (workspace, job, box) already told in a job log
        self._scanned = 0.0  # when the task table was last read
        # two hosts (or two XT homes) using one box account keep their runs apart
        self._runs_folder = "runs/" + hashlib.sha256(f"{socket.gethostname()}:{self.home}".encode()).hexdigest()[:12]

    def wait(self, timeout: float) -> None:
        """The polling thread's pause: cut short by what a run's thread hands it (its events, its
        end), so a run's start and end, and the next run on its slot, wait for no pause."""
        self.calls.wait(timeout)

    def poll(self) -> bool:
        changed = self.calls.run_pending()
        if not changed and time.monotonic() - self._scanned < SCAN_SECONDS:
            return False
        self._scanned = time.monotonic()
        for entry in self.compute.launched(pooled=True):
            changed |= self._watch(entry)
        for pool in self.compute.pools_with_queued():
            changed |= self._place(pool)
        return changed | self.calls.run_pending()

    # --- placing runs on boxes ---------------------------------------------------------------
    def _place(self, pool: str) -> bool:
        definition = self.compute.target(pool)
        if definition is None or definition.get("service") != "pool":
            return self._refuse(pool)
        busy = self.compute.runs_per_node()
        for run in self.running.values():
            if run.process_ended:
                busy[run.box] = busy.get(run.box, 0) - 1
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
                if self._health.get(box):
                    self._report_unreachable(box, tasks)
                continue
            for task in tasks:
                if self.compute.claim(task, node=box):
                    self._launch(task, box, settings, node)
                    placed = True
        return placed

    def connect_ahead(self, pool: str) -> None:
        """Connect to a registered pool's boxes now, each on its own thread, before its runs arrive (a
        host started for a job there): the handshakes overlap the client's upload and submit."""
        definition = self.compute.target(pool)
        if definition is not None and definition.get("service") == "pool":
            for box, settings in definition["boxes"].items():
                self._reachable(box, settings)

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
            self._answered.pop(box, None)
            self.nodes[box] = (how, self.make_node(box, settings, self._runs_folder))
        return self.nodes[box][1]

    def _reachable(self, box: str, settings: dict):
        """The box's node if it answered since its last drop; else None, and (when due) a thread
        connects to it meanwhile: the polling thread never waits on a box."""
        node = self._node(box, settings)
        if self._answered.get(box):
            return node
        if box not in self._connecting and self.backoff.ready(box):
            self._connecting.add(box)
            threading.Thread(target=self._connect, args=(box, node), name=f"xt-connect-{box}", daemon=True).start()
        return None

    def _connect(self, box: str, node) -> None:
        try:
            node.connect()
        except BoxError as exc:
            self.backoff.failed(box)
            error = str(exc)
            self.calls.later(lambda: self._box_down(box, error))
        except Exception:
            log.exception("connecting to box %s", box)
            self.backoff.failed(box)
        else:
            self.backoff.succeeded(box)
            self.calls.later(lambda: self._box_up(box, node))
        finally:
            self.calls.later(lambda: self._connecting.discard(box))

    def _box_up(self, box: str, node) -> None:
        if self.nodes.get(box, (None, None))[1] is node:  # not a node since replaced by a config change
            self._answered[box] = True
        self._set_health(box, "")

    def _box_down(self, box: str, error: str) -> None:
        self._answered[box] = False
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

    def _launch(self, task: RunTask, box: str, settings: dict, node) -> None:
        if settings.get("setup") is not None:  # a box's own setup (its paths, its environment) wins
            task = msgspec.structs.replace(task, setup=msgspec.convert(settings["setup"], SetupSpec))
        run = BoxRun((task.workspace, task.run), box, node)
        self.running[run.key] = run
        self._start_thread(run, lambda: self._start(run, task, settings))

    # --- a run's thread ----------------------------------------------------------------------
    def _start_thread(self, run: BoxRun, first: Callable[[], Optional[RunWrapper]]) -> None:
        threading.Thread(target=self._drive, args=(run, first), name=f"xt-run-{run.box}-{run.key[1]}",
                         daemon=True).start()

    def _drive(self, run: BoxRun, first: Callable[[], Optional[RunWrapper]]) -> None:
        """Start (or adopt) the run, then look at it until it has ended and is reported."""
        try:
            wrapper = first()
            if wrapper is not None:
                self._supervise(run, wrapper)
        except Exception:
            log.exception("pool run %s on box %s", run.key[1], run.box)
        finally:  # whatever happened, the polling thread may adopt the run again (if it is not done)
            self.calls.later(lambda: self._forget(run))

    def _forget(self, run: BoxRun) -> None:
        if self.running.get(run.key) is run:  # not a later start of the same run (requeued, placed again)
            del self.running[run.key]

    def _process_ended(self, run: BoxRun) -> None:
        run.process_ended = True

    def _done(self, run: BoxRun) -> None:
        """The run is reported: done in the task table and its slot no longer counted free by its
        flag, in one call (a slot must never count free twice between the two)."""
        self.compute.mark(*run.key, state="done")
        run.process_ended = False

    def _start(self, run: BoxRun, task: RunTask, settings: dict) -> Optional[RunWrapper]:
        box, node = run.box, run.node
        node_dir = self.home / "nodes" / box / task.workspace / task.run
        node_dir.mkdir(parents=True, exist_ok=True)
        try:
            work_dir = node.work_dir(str(node_dir), task.workspace, task.run)
        except NodeUnreachable as exc:
            self._unreachable(box, str(exc))
            self.calls.later(lambda: self.compute.requeue(*run.key))
            return None
        (node_dir / "task.json").write_bytes(encode(task))
        (node_dir / "placement.json").write_text(json.dumps({"box": box, "settings": settings, "work_dir": work_dir}))
        wrapper = RunWrapper(task, node_dir, self.storage, self.events, node_id=box, node=node, work_dir=work_dir)
        try:
            wrapper.start()
        except NodeUnreachable as exc:
            self._unreachable(box, str(exc))
            if wrapper.state["pid"] is None:  # nothing runs on the box: the run goes back in line
                shutil.rmtree(node_dir, ignore_errors=True)
                self.calls.later(lambda: self.compute.requeue(*run.key))
                return None
        self.calls.later(lambda: self.compute.set_launched(*run.key))
        return wrapper

    def _supervise(self, run: BoxRun, wrapper: RunWrapper) -> None:
        if wrapper.state["pid"] is not None:  # a node told of the end wakes the look at once
            run.node.when_ended(wrapper.state["pid"], wrapper.state["pid_start"], run.wake.set)
        first_seen = time.monotonic()
        surprises = 0  # in a row
        while True:
            age = time.monotonic() - first_seen
            run.wake.wait(max(min(TICK_SECONDS, max(FIRST_LOOK_SECONDS, age / 4)), surprise_pause(surprises)))
            run.wake.clear()
            if not self.backoff.ready(run.box):
                continue  # a box that just dropped is not hammered (a connect can take CONNECT_TIMEOUT_SECONDS)
            try:
                ended = wrapper.supervise(run.cancel_requested,
                                          process_ended=lambda: self.calls.later(lambda: self._process_ended(run)))
            except NodeUnreachable as exc:
                self._unreachable(run.box, str(exc))
                continue
            except Exception as exc:  # a surprise (storage, say): looked at again later, up to a limit
                surprises += 1
                what = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}".rstrip(": ")
                if surprises == 1:  # the traceback once, then a line per try: host.log is not flooded
                    log.exception("pool run %s on box %s", run.key[1], run.box)
                else:
                    log.warning("pool run %s on box %s: %s (%d in a row)", run.key[1], run.box, what, surprises)
                if surprises >= SURPRISE_LIMIT:
                    self._end_as_error(run, wrapper, f"supervising the run on box {run.box} failed "
                                                     f"{surprises} times in a row: {what}")
                    return
                continue
            surprises = 0
            self.backoff.succeeded(run.box)
            if self._health.get(run.box) != "":
                self.calls.later(lambda: self._set_health(run.box, ""))
            if ended:
                self.calls.later(lambda: self._done(run))
                return

    def _end_as_error(self, run: BoxRun, wrapper: RunWrapper, reason: str) -> None:
        """A run that cannot be supervised ends as an error with `reason`, as a local run on a full
        disk does: its process is killed, and the report goes by the wrapper's finish or, when that
        fails too, straight out. If even that fails, the run stays launched and is adopted again."""
        log.warning("%s %s: %s", run.key[0], run.key[1], reason)
        pid = wrapper.state["pid"]
        if pid is not None:
            with contextlib.suppress(Exception):  # the box may be part of the fault
                run.node.kill_group(pid, signal.SIGKILL)
        wrapper.state["failure"] = wrapper.state["failure"] or reason
        try:
            wrapper.finish()
        except Exception:
            task, now = wrapper.task, time.time()
            self.events.send_events([RunFinished(
                workspace=task.workspace, job=task.job, run=task.run, node_id=run.box, status=ERROR, exit_code=None,
                started_at=wrapper.state["started_at"] or now, ended_at=now, reason=reason[:FINISH_REASON_CHARS])])
        self.calls.later(lambda: self._done(run))

    def _unreachable(self, box: str, error: str) -> None:
        self.backoff.failed(box)
        self.calls.later(lambda: self._box_down(box, error))

    # --- the runs in flight, as the task table has them --------------------------------------
    def _watch(self, entry: dict) -> bool:
        """Pass a cancel on to the run's thread; adopt a run no thread drives (a previous host's)."""
        key = (entry["workspace"], entry["run"])
        run = self.running.get(key)
        if run is not None:
            if entry["cancel_requested"] and not run.cancel_requested:
                run.cancel_requested = True
                run.wake.set()
            return False
        return self._adopt(entry)

    def _adopt(self, entry: dict) -> bool:
        """A run a previous host started (its state is in the node dir, on this machine) gets a thread."""
        box = entry["node"]
        node_dir = self.home / "nodes" / box / entry["workspace"] / entry["run"]
        try:
            task = decode_task((node_dir / "task.json").read_bytes())
            placement = json.loads((node_dir / "placement.json").read_text())
            saved_state(node_dir)
        except (OSError, ValueError):
            if time.time() - (entry["launched_at"] or 0) > SPAWN_TIMEOUT_SECONDS:
                self.compute.requeue(entry["workspace"], entry["run"])  # a host died between claiming the task and starting it
                return True
            return False
        node = self._node(box, placement["settings"])
        run = BoxRun((entry["workspace"], entry["run"]), box, node)
        run.cancel_requested = bool(entry["cancel_requested"])
        self.running[run.key] = run
        self._start_thread(run, lambda: RunWrapper.resume(task, node_dir, self.storage, self.events, node_id=box,
                                                          node=node, work_dir=placement["work_dir"]))
        return True
