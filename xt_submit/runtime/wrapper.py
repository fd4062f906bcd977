"""The run wrapper: executes one run on a compute node.

It fetches and safely unpacks the code, starts the setup and the command under a tiny reaper
process (node_kit/reaper.py: the run's parent, which records its exit code), reports RunStarted
(after the launch: a freed slot is filled first), ships console output and the script's run log
to storage while it runs, syncs the output dir live, captures the after-dirs at the end, and
reports RunFinished.

The run's files and process live on a Node (the port): this machine, or a pool's box over
SSH. The supervisor's state lives in the node dir on this machine, so a supervisor that dies can
be replaced mid-run (`resume`): the local host drives RunWrappers in-process; a remote node can
run `python -m xt_submit.entrypoints.node TASK_JSON`, which drives one until it ends.
"""
from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
import shlex
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple


from xt_submit.node_kit import code_archive, reaper
from xt_submit.runtime import shares
from xt_submit.domain import layout, run_log
from xt_submit.domain.messages import (CANCELLED, COMPLETED, ERROR, FINAL_METRICS_FILE, FINISH_METRICS_BYTES,
                                       FINISH_REASON_CHARS, RunFinished, RunHeartbeat, RunStarted, RunTask, encode)
from xt_submit.ports import Node, NotFound, Publisher, Storage
from xt_submit.domain.setup_script import with_setup
from xt_submit.runtime.run_progress import ProgressReporter

SYNC_SECONDS = float(os.environ.get("XT_SYNC_SECONDS", "1.0"))
HEARTBEAT_SECONDS = float(os.environ.get("XT_HEARTBEAT_SECONDS", "60"))
KILL_GRACE_SECONDS = reaper.GRACE_SECONDS  # XT_KILL_GRACE_SECONDS, default 10: the reaper's too
# Names of this process's own variables that every run gets as well (comma-separated), as the host's
# operator decides (a license server, a proxy); nothing else of this process's environment reaches a run.
PASS_ENV = "XT_RUN_PASS_ENV"
CODE_LINK_SECONDS = 600  # a box fetches its code at once: the link need not outlive that
# The supervisor's state: one JSON line appended per save, the last whole line the state. An append
# makes no file (a new file and a rename per save were the host's costliest steps of a short run on
# ext4); past STATE_LOG_BYTES the log is written anew with the last state alone.
STATE_LOG = "wrapper_state.jsonl"
STATE_LOG_BYTES = 64 * 1024
LEGACY_STATE_FILE = "wrapper_state.json"  # a host before the log kept the state here, and
LEGACY_FINISHED_MARKER = "finished"  # ... this marker once RunFinished was sent (now the state's "finished")
EXIT_FILE = "exit_code"
# Console and run log go to storage at most this much per read, so a burst never sits in memory whole.
SHIP_CHUNK_BYTES = int(os.environ.get("XT_SHIP_CHUNK_BYTES", str(4 * 1024 * 1024)))
# The console stored per run; past it the rest is not stored (the run log, metrics, is never capped).
CONSOLE_MAX_BYTES = int(os.environ.get("XT_CONSOLE_MAX_BYTES", str(100 * 1024 * 1024)))
CONSOLE_TRUNCATED = "console_truncated"  # in the wrapper's state: the note is written, console no longer shipped
CONSOLE_TRUNCATED_NOTE = "\n[xt] console truncated at {limit} bytes (XT_CONSOLE_MAX_BYTES); the rest was not stored\n"


class RunEnd(NamedTuple):
    """What finish reads of an ended run, read at once (RunWrapper._look_at_end)."""

    exit_file: bytes  # the reaper's: b"" when it wrote none
    outputs: List[Tuple[str, tuple]]  # the output folder's files
    tails: Dict[Tuple[str, int, int], bytes]  # the next read_from(path, offset, limit) of the console and run log
    has_checkpoint: bool


class Upload(NamedTuple):
    """A file of the run's (below its code folder) to store under key; live: (its name below the
    output folder, its signature) when this is its live copy."""

    rel: str
    key: str
    live: Optional[Tuple[str, tuple]] = None


class RunWrapper:
    def __init__(self, task: RunTask, node_dir: Path, storage: Storage, publisher: Publisher, *, node: Node,
                 node_id: str = "local", work_dir: Optional[str] = None) -> None:
        """node_dir: the supervisor's state, on this machine. work_dir: the run's folder on `node`
        (by default node_dir itself: the node is this machine)."""
        self.task = task
        self.node_dir = Path(node_dir)
        self.storage = storage
        self.publisher = publisher
        self.node_id = node_id
        self.node = node
        self.work_dir = work = work_dir or str(self.node_dir)
        self.code_dir = posixpath.join(work, "code")
        self.output_dir = posixpath.join(self.code_dir, "output")
        self.local_log = posixpath.join(work, "xt_run_log.jsonl")
        self.console = posixpath.join(work, "console.log")
        self.checkpoint = posixpath.join(work, "xt_checkpoint.json")
        self.exit_file = posixpath.join(work, EXIT_FILE)
        self.state: Dict = {"started_at": None, "pid": None, "pid_start": None, "console_offset": 0, "log_offset": 0,
                            "stopping": None, "stop_sent_at": None, "failure": ""}
        self.state["progress"] = {}  # the progress reporter's counters, saved with the log offset
        self._live_seen: Dict[str, tuple] = {}
        self._progress = ProgressReporter(task, self.state["progress"])
        self._whole_log_observed = True  # every line of the run log goes through self._progress (not so once resumed)
        # a resumed run is synced at once (whatever the monotonic clock reads: a machine booted a moment
        # ago has it near 0); a started one SYNC_SECONDS after its start
        self._last_sync = float("-inf")
        self._last_heartbeat = time.monotonic()  # RunStarted counts as the first sign of life
        self._dirty = False
        self._state_log_bytes: Optional[int] = None  # the state log's size; None: written anew at the next save

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Prepare the code and launch the command (returns at once), then report the start. The
        report (the run log's opening, RunStarted) comes after the launch: a slot that just freed is
        filled sooner, and the run's own lines are shipped later, behind its opening, all the same."""
        self.node_dir.mkdir(parents=True, exist_ok=True)
        # nothing to ship yet: a run that ends sooner is shipped whole by its finish alone (a box's
        # live sync costs the host three agent requests and a millisecond of its CPU)
        self._last_sync = time.monotonic()
        self.state["started_at"] = time.time()
        self.state["announced"] = False  # saved so with the pid: a successor that finds it so reports the start
        try:
            self._prepare()
            self.state["share_env"] = self._share_environment()
            self._restore_checkpoint()
            self._launch()
        except (code_archive.ArchiveError, shares.ShareError, NotFound, OSError) as exc:
            self.state["failure"] = f"run wrapper: {exc}"
            try:
                self.node.append(self.console, f"[xt] {self.state['failure']}\n".encode())
            except OSError:
                pass  # the node could not even make the run's folder: the reason still reaches RunFinished
            self._save_state()
        self._announce()

    def _announce(self) -> None:
        """The run log's opening (created, hparams, queued, started) and RunStarted, once per start."""
        task, ws = self.task, self.task.workspace
        started_at = self.state["started_at"]
        log_key = layout.run_log_key(ws, task.run)
        opening = (run_log.record(task.created_at, "created", {"job": task.job, "command": task.command,
                                                              "step_name": task.step_name})
                   + run_log.record(task.created_at, "hparams", task.hparams)
                   + run_log.record(task.created_at, "queued", {"target": task.target}))
        started = run_log.record(started_at, "started", {"node": self.node_id})
        if not self.storage.create_log(log_key, opening + started):  # already there if this run is started again
            self.storage.append(log_key, started)
        self.publisher.send_events([RunStarted(workspace=ws, job=task.job, run=task.run, node_id=self.node_id,
                                               started_at=started_at)])
        self.state["announced"] = True
        self._save_state()

    @classmethod
    def resume(cls, task: RunTask, node_dir: Path, storage: Storage, publisher: Publisher, *, node: Node,
               node_id: str = "local", work_dir: Optional[str] = None) -> "RunWrapper":
        """Take over a run started by a supervisor that died, from the state it left in the node dir."""
        wrapper = cls(task, node_dir, storage, publisher, node=node, node_id=node_id, work_dir=work_dir)
        wrapper.state.update(saved_state(wrapper.node_dir))
        wrapper._progress = ProgressReporter(task, wrapper.state.setdefault("progress", {}))
        wrapper._whole_log_observed = wrapper.state["log_offset"] == 0
        return wrapper

    def ended(self) -> bool:
        pid = self.state["pid"]
        return pid is None or self.node.ended(pid, self.state["pid_start"], self.exit_file)

    def stop(self, why: str) -> None:
        """Ask the run to end (why: 'cancelled' or 'max-time'); SIGKILL follows if it lingers."""
        if self.state["stopping"] is None:
            self.state.update(stopping=why, stop_sent_at=time.time())
            self._save_state()
            self._signal(signal.SIGTERM)
        elif time.time() - self.state["stop_sent_at"] > KILL_GRACE_SECONDS:
            self._signal(signal.SIGKILL)

    def tick(self) -> None:
        """Supervise: enforce max-time and ship what the run wrote, at most every SYNC_SECONDS."""
        started = self.state["started_at"] or time.time()
        if self.task.max_time is not None and time.time() - started > self.task.max_time:
            self.stop("max-time")
        elif self.state["stopping"] is not None:
            self.stop(self.state["stopping"])
        if time.monotonic() - self._last_sync >= SYNC_SECONDS:
            self.sync()
        if time.monotonic() - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self._last_heartbeat = time.monotonic()
            task = self.task
            self.publisher.send_events([RunHeartbeat(workspace=task.workspace, job=task.job, run=task.run,
                                                     node_id=self.node_id, at=time.time())])

    def supervise(self, cancel_requested: bool = False, process_ended: Optional[Callable[[], None]] = None) -> bool:
        """One look at the run: pass on a cancel, ship what it wrote, and finish it once it ended.
        True when it has ended and its RunFinished is out (a successor that finds the marker does not repeat it).
        process_ended: told when the run's process is seen ended, before its finish (what frees its slot;
        told again if a finish that failed is tried again)."""
        if not self.state.get("announced", True):  # its supervisor died between the launch and the report
            self._announce()
        if cancel_requested:
            self.stop("cancelled")
        if not self.ended():
            self.tick()
            return False
        if not self.state.get("finished"):
            if process_ended is not None:
                process_ended()
            end = self._look_at_end()
            self._end_orphans(reaper_wrote_exit=bool(end.exit_file))
            # what was read is the run's last word, unless orphans were left writing until now
            self.finish(end if end.exit_file else None)
        return True

    def _look_at_end(self) -> RunEnd:
        """Everything finish reads of an ended run, asked of the node at once (a box: one round trip)."""
        tails = [(path, *read) for path, read in ((self.console, self._next_read("console_offset")),
                                                  (self.local_log, self._next_read("log_offset"))) if read]
        look = self.node.look(reads=[(self.exit_file, 0, None), *tails], walks=[self.output_dir],
                              exists=[self.checkpoint])
        return RunEnd(look.reads[0], look.walks[0], dict(zip(tails, look.reads[1:])), look.exists[0])

    def run_to_end(self) -> None:
        """Start the run and supervise it until it ends (a node that runs one wrapper per process)."""
        signal.signal(signal.SIGTERM, lambda signum, frame: self.stop("cancelled"))
        self.start()
        while not self.supervise():
            time.sleep(min(SYNC_SECONDS, 0.2))

    def sync(self) -> None:
        """Ship what the run wrote so far: console, run log, its latest metrics when due, live outputs."""
        self._ship_logs()
        if self._progress.due(time.monotonic()):
            self._send_progress()
        self._upload(self._live_uploads(self.node.walk(self.output_dir)))

    def _ship_logs(self, read: Optional[Dict[Tuple[str, int, int], bytes]] = None) -> None:
        """The console's and run log's new bytes. read: reads (path, offset, limit) the caller has just made."""
        self._last_sync = time.monotonic()
        self._ship_tail(self.console, layout.console_key(self.task.workspace, self.task.run), "console_offset",
                        whole_lines=False, read=read)
        self._ship_tail(self.local_log, layout.run_log_key(self.task.workspace, self.task.run), "log_offset",
                        whole_lines=True, observe=self._progress.observe, read=read)
        if self._dirty:  # offsets persist right after the appends: a successor resumes where this left off
            self._save_state()
            self._dirty = False

    def finish(self, end: Optional[RunEnd] = None) -> RunFinished:
        """After the command ended: final sync, capture outputs, report RunFinished.
        end: what the caller has just read of the run (_look_at_end), else it is read now."""
        task, ws = self.task, self.task.workspace
        now = time.time()
        end = end or self._look_at_end()
        exit_code, exited_at = self._exit_record(end.exit_file)
        # when the command ended, if the reaper says (kept within the run's start and now: a box's
        # clock may differ from this one's); a run adopted after its host's downtime ended back then
        ended_at = min(now, max(self.state["started_at"] or now, exited_at)) if exited_at is not None else now
        stopping, failure = self.state["stopping"], self.state["failure"]
        if stopping == "cancelled":
            status, reason = CANCELLED, "cancelled by request"
        elif stopping == "max-time":
            status, reason = ERROR, f"max-time of {task.max_time:g}s exceeded"
        elif failure:
            status, reason = ERROR, failure
        elif exit_code == 0:
            status, reason = COMPLETED, ""
        else:
            status = ERROR
            reason = f"exit code {exit_code}" if exit_code is not None else "the run ended without an exit code"
        # one listing for the last live sync and the capture, and each file fetched once for both
        # (a box's 1 GB checkpoint crosses the network once); RunFinished carries the last metrics
        self._ship_logs(read=end.tails)
        self._upload(self._live_uploads(end.outputs) + self._captures(end.outputs))
        self._ship_checkpoint(end.has_checkpoint)
        last_metrics = self._last_metrics()
        started_at = self.state["started_at"] or ended_at
        self.storage.append(layout.run_log_key(ws, task.run), run_log.record(ended_at, "ended", {
            "status": status, "exit_code": exit_code, "duration": round(ended_at - started_at, 3), "reason": reason}))
        metrics, metrics_key = self._final_metrics(last_metrics)
        finished = RunFinished(workspace=ws, job=task.job, run=task.run, node_id=self.node_id, status=status,
                               exit_code=exit_code, started_at=started_at, ended_at=ended_at,
                               reason=reason[:FINISH_REASON_CHARS], metrics=metrics, metrics_key=metrics_key)
        self.publisher.send_events([finished])
        self.state["finished"] = True
        self._save_state()
        self.node.release(self.work_dir)  # RunFinished is out: the node's copy of the run is no longer needed
        return finished

    def _final_metrics(self, last_metrics: Dict) -> tuple:
        """(metrics, metrics_key) for RunFinished: inline up to FINISH_METRICS_BYTES; more are stored
        beside the run and the message names them, so it stays under its queue's limit whatever was logged."""
        body = encode(last_metrics)
        if len(body) <= FINISH_METRICS_BYTES:
            return last_metrics, ""
        key = layout.run_prefix(self.task.workspace, self.task.run) + FINAL_METRICS_FILE
        self.storage.write(key, body)
        return {}, key

    # --- the command -------------------------------------------------------------------------
    def _prepare(self) -> None:
        """The code unpacked on the node, with the run's folders and empty log. A box fetches the zip
        itself where storage can give it a read-only link to that one blob; otherwise it goes from here."""
        layout_args = (self.code_dir, self.output_dir, [self.local_log])
        code_url = self.storage.read_url(self.task.code_key, CODE_LINK_SECONDS) if self.node.fetches_code else None
        if code_url is not None:
            self.node.prepare(None, code_url, *layout_args, source=self.task.code_key)
            return
        stored = self.storage.local_path(self.task.code_key)
        if stored is not None and os.path.isfile(stored):  # a folder here, or a Batch node's fetched file
            self.node.prepare(stored, None, *layout_args, source=self.task.code_key)  # no copy to make first
            return
        with tempfile.TemporaryDirectory(dir=self.node_dir) as scratch:
            zip_path = os.path.join(scratch, "code.zip")
            self.storage.download_file(self.task.code_key, zip_path)
            self.node.prepare(zip_path, None, *layout_args, source=self.task.code_key)

    def _environment(self) -> Dict[str, str]:
        """The run's own variables: XT's, the names PASS_ENV passes on, then the setup's `environment`.
        The node adds only its base (node_kit/reaper.BASE_ENV, read on the node) and XT_REAPER_PID:
        this is all the run sees of any environment (never the host's or the node's credentials)."""
        task = self.task
        env = {
            "XT_WORKSPACE": task.workspace, "XT_EXPERIMENT": task.experiment, "XT_JOB_ID": task.job,
            "XT_RUN_NAME": task.run, "XT_NODE_ID": self.node_id, "XT_OUTPUT_DIR": self.output_dir,
            "XT_RUN_LOG": self.local_log, "XT_CHECKPOINT": self.checkpoint, "XT_STEP_NAME": task.step_name,
            "PYTHONUNBUFFERED": "1",  # console lines reach the log as they are printed
        }
        env.update(self.state.get("share_env") or {})  # XT_DATA_DIR, XT_MODEL_DIR: paths, never a credential
        passed = (name.strip() for name in os.environ.get(PASS_ENV, "").split(","))
        env.update({name: os.environ[name] for name in passed if name in os.environ})
        if task.setup:
            env.update(task.setup.environment)
        return env

    def _share_environment(self) -> Dict[str, str]:
        """XT_DATA_DIR / XT_MODEL_DIR, once the shares are in place (noted in the run's console)."""
        placement = shares.SharePlacement(
            self.storage, self.node, self.node_id, self.node_dir,
            on_this_machine=self.work_dir == str(self.node_dir),  # a box's run folder is on the box
            note=lambda line: self.node.append(self.console, f"[xt] {line}\n".encode()))
        return placement.environment(self.task)

    def _argv(self) -> List[str]:
        """The command as argv (no shell needed), or a bash script when a setup must run first."""
        command, setup = self.task.command, self.task.setup
        if setup and (setup.activate or setup.pip_packages or setup.conda_packages):
            return ["/bin/bash", "-c", with_setup(command, setup, posixpath.join(self.node.home, "setups"))]
        return self.node.python_argv(shlex.split(command))

    def _launch(self) -> None:
        pid, pid_start = self.node.launch(self._argv(), self.code_dir, self._environment(), self.console, self.exit_file)
        self.state.update(pid=pid, pid_start=pid_start)
        self._save_state()  # at once: a supervisor that dies now must find this run, not start it again

    def _exit_code(self) -> Optional[int]:
        return self._exit_record()[0]

    def _exit_record(self, exit_file: Optional[bytes] = None) -> Tuple[Optional[int], Optional[float]]:
        """(exit code, when the command ended) from the reaper's exit file; (None, None) if it wrote none
        (the reaper itself was killed, or the command never started)."""
        lines = (self.node.read_from(self.exit_file) if exit_file is None else exit_file).split(b"\n")
        try:
            code = int(lines[0])
        except ValueError:
            return None, None
        try:
            return code, float(lines[1])
        except (IndexError, ValueError):
            return code, None  # written by an older reaper: its code only

    def _signal(self, sig: int) -> None:
        pid = self.state["pid"]
        if pid is None or self.ended():
            return  # a reaper that ended ended its run's whole tree first
        self.node.kill_group(pid, sig)  # the reaper passes it on to the run's tree; SIGKILL reaches all of it

    def _end_orphans(self, reaper_wrote_exit: bool) -> None:
        """A reaper gone without writing the exit code was killed: its command died with it (Linux's
        death signal), but what the command started may not have. Kill what is left of the run's
        tree (its process group, and the processes marked with the reaper's pid), and say why."""
        pid = self.state["pid"]
        if pid is None or reaper_wrote_exit:  # (written whole, by a rename: never there but empty)
            return
        self.node.kill_group(pid, signal.SIGKILL)
        if self.state["stopping"] is None and not self.state["failure"]:
            self.state["failure"] = (f"the run's reaper (pid {pid}) was killed before the run ended; "
                                     "XT killed the run's remaining processes")
            self._save_state()

    # --- shipping files to storage -----------------------------------------------------------
    def _send_progress(self) -> None:
        """The latest metrics for the run's record (and reports for the early-stopping policy)."""
        message = self._progress.message(self.node_id, self.state["log_offset"], now=time.monotonic(), at=time.time())
        self.publisher.send_events([message])

    def _next_read(self, offset_name: str) -> Optional[Tuple[int, int]]:
        """(offset, limit) of the next read of a shipped file; None once the console was cut. The
        limit is at least 1 byte: is there more than the console's cap?"""
        if offset_name == "console_offset":
            if self.state.get(CONSOLE_TRUNCATED):
                return None
            offset = self.state[offset_name]
            return offset, max(min(SHIP_CHUNK_BYTES, CONSOLE_MAX_BYTES - offset), 1)
        return self.state[offset_name], SHIP_CHUNK_BYTES

    def _ship_tail(self, path: str, key: str, offset_name: str, whole_lines: bool,
                   observe: Optional[Callable[[bytes], None]] = None,
                   read: Optional[Dict[Tuple[str, int, int], bytes]] = None) -> None:
        """Append what the node's file gained since the last pass, SHIP_CHUNK_BYTES at a time, until
        caught up: memory stays bounded whatever a run prints. The console stops at CONSOLE_MAX_BYTES
        (noted once in it); the run log (whole_lines) is never cut, and goes only in whole lines.
        read: reads (path, offset, limit) already made, not asked again."""
        capped = offset_name == "console_offset"
        while True:
            asked = self._next_read(offset_name)
            if asked is None:
                return
            offset, limit = asked
            data = (read or {}).pop((path, offset, limit), None)
            if data is None:
                data = self.node.read_from(path, offset, limit)
            if not data:
                return
            if capped and offset >= CONSOLE_MAX_BYTES:
                self.storage.append(key, CONSOLE_TRUNCATED_NOTE.format(limit=CONSOLE_MAX_BYTES).encode())
                self.state[CONSOLE_TRUNCATED] = True
                self._dirty = True
                return
            caught_up = len(data) < limit
            if whole_lines:
                data, caught_up = self._whole_lines(path, offset, data, caught_up)
            if data:
                self.storage.append(key, data)
                self.state[offset_name] = offset + len(data)
                self._dirty = True
                if observe is not None:
                    observe(data)
            if caught_up or not data:
                return

    def _whole_lines(self, path: str, offset: int, data: bytes, caught_up: bool) -> tuple:
        """(the whole lines at the start of data, caught up). A line longer than a chunk is read on
        to its end (the run log is never cut); a last line not yet ended waits for the next pass."""
        pieces = [data]
        while b"\n" not in pieces[-1] and not caught_up:
            more = self.node.read_from(path, offset + sum(map(len, pieces)), SHIP_CHUNK_BYTES)
            caught_up = len(more) < SHIP_CHUNK_BYTES
            pieces.append(more)
        data = b"".join(pieces)
        return data[: data.rfind(b"\n") + 1], caught_up

    def _last_metrics(self) -> Dict[str, Any]:
        """Each metric's last value: what the shipped lines said, as they went; a resumed supervisor,
        which saw only the lines after its predecessor's, reads the node's log again, a piece at a time."""
        if self._whole_log_observed:
            return dict(self._progress.latest)
        summary = run_log.LogSummary(run_log.iter_records_from_chunks(self._log_pieces()))
        for _ in summary.metric_rows():
            pass
        return summary.last_metrics

    def _log_pieces(self) -> Iterator[bytes]:
        offset = 0
        while True:
            piece = self.node.read_from(self.local_log, offset, SHIP_CHUNK_BYTES)
            if not piece:
                return
            yield piece
            offset += len(piece)

    def _live_uploads(self, outputs: Iterable[Tuple[str, tuple]]) -> List[Upload]:
        """Each output file changed since its live copy was made."""
        prefix = layout.live_prefix(self.task.workspace, self.task.run)
        return [Upload(f"output/{rel}", prefix + rel, (rel, signature)) for rel, signature in outputs
                if self._live_seen.get(rel) != signature]

    def _captures(self, outputs: List[Tuple[str, tuple]]) -> List[Upload]:
        """The files after-dirs names, found in the folders its patterns can match in (the output
        folder's listing given: most runs keep only output/**), not in the whole code tree."""
        prefix, captures = layout.output_prefix(self.task.workspace, self.task.run), []
        for rel in self._after_candidates(outputs):
            if any(_glob_match(rel, pattern) for pattern in self.task.after_dirs) and \
                    not any(_glob_match(rel, pattern) for pattern in self.task.after_omit):
                captures.append(Upload(rel, prefix + (rel[len("output/"):] if rel.startswith("output/") else rel)))
        return captures

    def _upload(self, uploads: List[Upload]) -> None:
        """Each file fetched from the node once, to every key it goes to; a live copy is noted as made
        only once it is (a failed upload is tried again by the next sync)."""
        by_file: Dict[str, List[Upload]] = {}
        for upload in uploads:
            by_file.setdefault(upload.rel, []).append(upload)
        for rel, targets in by_file.items():
            with self.node.local_copy(posixpath.join(self.code_dir, rel)) as path:
                for upload in targets:
                    self.storage.upload_file(upload.key, path)
                    if upload.live is not None:
                        self._live_seen[upload.live[0]] = upload.live[1]

    def _restore_checkpoint(self) -> None:
        """The run's own last checkpoint (a run started again), else the one it resumes from."""
        task = self.task
        keys = [layout.checkpoint_key(task.workspace, run) for run in filter(None, (task.run, task.resume_from))]
        keys = [key for key in keys if self.storage.exists(key)]  # most runs have none: no scratch folder
        if not keys:
            return
        with tempfile.TemporaryDirectory(dir=self.node_dir) as scratch:
            local = os.path.join(scratch, "checkpoint.json")
            for key in keys:
                try:
                    self.storage.download_file(key, local)
                except NotFound:
                    continue  # deleted since
                self.node.put(local, self.checkpoint)
                return

    def _ship_checkpoint(self, exists: bool) -> None:
        if exists:
            with self.node.local_copy(self.checkpoint) as path:
                self.storage.upload_file(layout.checkpoint_key(self.task.workspace, self.task.run), path)

    def _save_state(self) -> None:
        """One line appended to the state log. The log is written anew (aside, then renamed) once it has
        grown past STATE_LOG_BYTES, and where this supervisor did not write all of it: a log it took
        over, or one whose last save failed (a line cut short must not run into the next one)."""
        line = (json.dumps(self.state) + "\n").encode()
        path = self.node_dir / STATE_LOG
        size, self._state_log_bytes = self._state_log_bytes, None  # until this save is whole
        if size is not None and size + len(line) <= STATE_LOG_BYTES:
            with path.open("ab") as f:
                f.write(line)
        else:
            size = 0
            try:
                with path.open("xb") as f:  # a new run's first save (a line cut short here: no state, as no file)
                    f.write(line)
            except FileExistsError:
                tmp = self.node_dir / (STATE_LOG + ".tmp")
                with tmp.open("wb") as f:
                    f.write(line)
                os.replace(tmp, path)
        self._state_log_bytes = size + len(line)

    def _after_candidates(self, outputs: List[Tuple[str, tuple]]) -> Iterator[str]:
        for root in walk_roots(self.task.after_dirs):
            if root == "output" or root.startswith("output/"):
                yield from (rel for rel in (f"output/{name}" for name, _ in outputs) if _below(rel, root))
            else:
                base = posixpath.join(self.code_dir, root) if root else self.code_dir
                yield from (f"{root}/{rel}" if root else rel for rel, _ in self.node.walk(base))


def saved_state(node_dir: Path) -> Dict[str, Any]:
    """The supervisor's last saved state in node_dir: the state log's last whole line (a crash can cut
    the last one short), else what a host before the log left. OSError or ValueError if there is none."""
    node_dir = Path(node_dir)
    try:
        lines = (node_dir / STATE_LOG).read_bytes().splitlines()
    except FileNotFoundError:
        state = json.loads((node_dir / LEGACY_STATE_FILE).read_text())
        if (node_dir / LEGACY_FINISHED_MARKER).exists():
            state["finished"] = True
        return state
    for line in reversed(lines):
        try:
            state = json.loads(line)
        except ValueError:
            continue
        if isinstance(state, dict):
            return state
    raise ValueError(f"{node_dir / STATE_LOG}: no whole state in it")


def walk_roots(patterns: Sequence[str]) -> List[str]:
    """The folders (relative to the code, "" for all of it) below which `patterns` can match: each
    pattern's part before its first wildcard, up to its last '/'; none below another."""
    roots = set()
    for pattern in patterns:
        literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        roots.add(literal.rsplit("/", 1)[0] if "/" in literal else "")
    if "" in roots:
        return [""]
    return sorted(root for root in roots if not any(_below(root, other) and root != other for other in roots))


def _below(rel: str, folder: str) -> bool:
    return rel == folder or rel.startswith(folder + "/")


def _glob_match(rel: str, pattern: str) -> bool:
    """after-dirs patterns: `output/**` is everything below output/; otherwise fnmatch."""
    if pattern.endswith("/**"):
        return rel.startswith(pattern[:-2])
    return fnmatch.fnmatchcase(rel, pattern)
