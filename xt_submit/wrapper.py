"""The run wrapper: executes one run on a compute node.

It fetches and safely unpacks the code, reports RunStarted, starts the setup and the command
under a tiny reaper process (xt_submit/reaper.py: the run's parent, which records its exit
code), ships console output and the script's run log to storage while it runs, syncs the output
dir live, captures the after-dirs at the end, and reports RunFinished.

Its state lives in the node dir, so a supervisor that dies can be replaced mid-run (`resume`):
the local host drives RunWrappers in-process; a remote node runs `python -m xt_submit.wrapper
TASK_JSON`, which drives one until it ends.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from xt_submit import code_archive, layout, run_log
from xt_submit.messages import (CANCELLED, COMPLETED, ERROR, RunFinished, RunHeartbeat, RunStarted, RunTask,
                                decode_task)
from xt_submit.ports import NotFound, Publisher, Storage

SYNC_SECONDS = float(os.environ.get("XT_SYNC_SECONDS", "1.0"))
HEARTBEAT_SECONDS = float(os.environ.get("XT_HEARTBEAT_SECONDS", "60"))
KILL_GRACE_SECONDS = 10.0
REAPER = str(Path(__file__).with_name("reaper.py"))
STATE_FILE = "wrapper_state.json"
EXIT_FILE = "exit_code"
FINISHED_MARKER = "finished"  # written once RunFinished is sent


def process_start_time(pid: int) -> Optional[str]:
    """The kernel's start time of pid (None if gone or a zombie): tells a live process from a recycled pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return "?"  # no /proc (not Linux): trust the pid
    if fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


class RunWrapper:
    def __init__(self, task: RunTask, node_dir: Path, storage: Storage, publisher: Publisher, node_id: str = "local") -> None:
        self.task = task
        self.node_dir = Path(node_dir)
        self.storage = storage
        self.publisher = publisher
        self.node_id = node_id
        self.code_dir = self.node_dir / "code"
        self.output_dir = self.code_dir / "output"
        self.local_log = self.node_dir / "xt_run_log.jsonl"
        self.console = self.node_dir / "console.log"
        self.checkpoint = self.node_dir / "xt_checkpoint.json"
        self.process: Optional[subprocess.Popen] = None  # set when this supervisor started the run
        self.state: Dict = {"started_at": None, "pid": None, "pid_start": None, "console_offset": 0, "log_offset": 0,
                            "stopping": None, "stop_sent_at": None, "failure": ""}
        self._live_seen: Dict[str, tuple] = {}
        self._last_sync = 0.0
        self._last_heartbeat = time.monotonic()  # RunStarted counts as the first sign of life
        self._dirty = False

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Report the start, prepare the code and launch the command (returns at once)."""
        task, ws = self.task, self.task.workspace
        self.node_dir.mkdir(parents=True, exist_ok=True)
        started_at = time.time()
        self.state["started_at"] = started_at
        log_key = layout.run_log_key(ws, task.run)
        opening = (run_log.record(task.created_at, "created", {"job": task.job, "command": task.command,
                                                              "step_name": task.step_name})
                   + run_log.record(task.created_at, "hparams", task.hparams)
                   + run_log.record(task.created_at, "queued", {"target": task.target}))
        self.storage.create_log(log_key, opening)  # already there if this run is resumed
        self.storage.append(log_key, run_log.record(started_at, "started", {"node": self.node_id}))
        self.publisher.send_events([RunStarted(workspace=ws, job=task.job, run=task.run, node_id=self.node_id,
                                               started_at=started_at)])
        try:
            self._fetch_code()
            self._restore_checkpoint()
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.local_log.touch()
            self._launch()
        except (code_archive.ArchiveError, NotFound, OSError) as exc:
            self.state["failure"] = f"run wrapper: {exc}"
            with open(self.console, "ab") as f:
                f.write(f"[xt] {self.state['failure']}\n".encode())
            self._save_state()

    @classmethod
    def resume(cls, task: RunTask, node_dir: Path, storage: Storage, publisher: Publisher,
               node_id: str = "local") -> "RunWrapper":
        """Take over a run started by a supervisor that died, from the state it left in the node dir."""
        wrapper = cls(task, node_dir, storage, publisher, node_id)
        wrapper.state.update(json.loads((wrapper.node_dir / STATE_FILE).read_text()))
        return wrapper

    def ended(self) -> bool:
        if self.process is not None:
            return self.process.poll() is not None
        pid = self.state["pid"]
        return pid is None or process_start_time(pid) != self.state["pid_start"]

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

    def sync(self) -> None:
        self._last_sync = time.monotonic()
        self._ship_tail(self.console, layout.console_key(self.task.workspace, self.task.run), "console_offset",
                        whole_lines=False)
        self._ship_tail(self.local_log, layout.run_log_key(self.task.workspace, self.task.run), "log_offset",
                        whole_lines=True)
        if self._dirty:  # offsets persist right after the appends: a successor resumes where this left off
            self._save_state()
            self._dirty = False
        self._sync_live()

    def finish(self) -> RunFinished:
        """After the command ended: final sync, capture outputs, report RunFinished."""
        task, ws = self.task, self.task.workspace
        ended_at = time.time()
        exit_code = self._exit_code()
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
        self.sync()
        self._capture_after_files()
        self._ship_checkpoint()
        _, last_metrics, _ = run_log.summarize(run_log.parse(self._read(self.local_log)))
        started_at = self.state["started_at"] or ended_at
        self.storage.append(layout.run_log_key(ws, task.run), run_log.record(ended_at, "ended", {
            "status": status, "exit_code": exit_code, "duration": round(ended_at - started_at, 3), "reason": reason}))
        finished = RunFinished(workspace=ws, job=task.job, run=task.run, node_id=self.node_id, status=status,
                               exit_code=exit_code, started_at=started_at, ended_at=ended_at, reason=reason,
                               metrics=last_metrics)
        self.publisher.send_events([finished])
        (self.node_dir / FINISHED_MARKER).write_text("")
        return finished

    # --- the command -------------------------------------------------------------------------
    def _fetch_code(self) -> None:
        zip_path = self.node_dir / "code.zip"
        self.storage.download_file(self.task.code_key, str(zip_path))
        code_archive.safe_extract(str(zip_path), str(self.code_dir), source=self.task.code_key)
        zip_path.unlink()

    def _environment(self) -> Dict[str, str]:
        task = self.task
        env = dict(os.environ)
        env.update({
            "XT_WORKSPACE": task.workspace, "XT_EXPERIMENT": task.experiment, "XT_JOB_ID": task.job,
            "XT_RUN_NAME": task.run, "XT_NODE_ID": self.node_id, "XT_OUTPUT_DIR": str(self.output_dir),
            "XT_RUN_LOG": str(self.local_log), "XT_CHECKPOINT": str(self.checkpoint), "XT_STEP_NAME": task.step_name,
            "PYTHONUNBUFFERED": "1",  # console lines reach the log as they are printed
        })
        if task.setup:
            env.update(task.setup.environment)
        return env

    def _argv(self) -> List[str]:
        """The command as argv (no shell needed), or a bash script when a setup must run first."""
        command = self.task.command
        setup = self.task.setup
        if setup and (setup.activate or setup.pip_packages):
            steps = [setup.activate] if setup.activate else []
            if setup.pip_packages:
                steps.append("python -m pip install --quiet " + " ".join(shlex.quote(p) for p in setup.pip_packages))
            return ["/bin/bash", "-c", " && ".join(steps + [command])]
        argv = shlex.split(command)
        if argv and argv[0] == "python":
            argv[0] = sys.executable  # the interpreter that runs XT has xt_submit (the Run API) installed
        return argv

    def _launch(self) -> None:
        exit_file = self.node_dir / EXIT_FILE
        if exit_file.exists():
            exit_file.unlink()
        with open(self.console, "ab") as console:
            # own session: the run outlives its supervisor, and a cancel can signal its whole tree
            self.process = subprocess.Popen([sys.executable, "-S", "-I", REAPER, str(exit_file), *self._argv()],
                                            cwd=self.code_dir, env=self._environment(), stdin=subprocess.DEVNULL,
                                            stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        self.state.update(pid=self.process.pid, pid_start=process_start_time(self.process.pid) or "?")
        self._save_state()  # at once: a supervisor that dies now must find this run, not start it again

    def _exit_code(self) -> Optional[int]:
        try:
            return int((self.node_dir / EXIT_FILE).read_text())
        except (OSError, ValueError):
            return None  # the reaper itself was killed, or the command never started

    def _signal(self, sig: int) -> None:
        pid = self.state["pid"]
        if pid is None or self.ended():
            return
        try:
            os.killpg(pid, sig)  # the reaper forwards; the whole process group gets it too
        except (ProcessLookupError, PermissionError):
            pass

    # --- shipping files to storage -----------------------------------------------------------
    def _ship_tail(self, path: Path, key: str, offset_name: str, whole_lines: bool) -> None:
        offset = self.state[offset_name]
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return
        if whole_lines:
            data = data[: data.rfind(b"\n") + 1]
        if data:
            self.storage.append(key, data)
            self.state[offset_name] = offset + len(data)
            self._dirty = True

    def _sync_live(self) -> None:
        prefix = layout.live_prefix(self.task.workspace, self.task.run)
        for path in _walk_files(self.output_dir):
            stat = path.stat()
            rel = path.relative_to(self.output_dir).as_posix()
            signature = (stat.st_mtime_ns, stat.st_size)
            if self._live_seen.get(rel) != signature:
                self.storage.upload_file(prefix + rel, str(path))
                self._live_seen[rel] = signature

    def _capture_after_files(self) -> None:
        prefix = layout.output_prefix(self.task.workspace, self.task.run)
        for path in _walk_files(self.code_dir):
            rel = path.relative_to(self.code_dir).as_posix()
            if any(_glob_match(rel, pattern) for pattern in self.task.after_dirs) and \
                    not any(_glob_match(rel, pattern) for pattern in self.task.after_omit):
                target = rel[len("output/"):] if rel.startswith("output/") else rel
                self.storage.upload_file(prefix + target, str(path))

    def _restore_checkpoint(self) -> None:
        try:
            self.storage.download_file(layout.checkpoint_key(self.task.workspace, self.task.run), str(self.checkpoint))
        except NotFound:
            pass

    def _ship_checkpoint(self) -> None:
        if self.checkpoint.exists():
            self.storage.upload_file(layout.checkpoint_key(self.task.workspace, self.task.run), str(self.checkpoint))

    def _save_state(self) -> None:
        tmp = self.node_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.node_dir / STATE_FILE)

    @staticmethod
    def _read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return b""


def _walk_files(root: Path):
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if not path.is_symlink():  # a link's target never travels to storage
                yield path


def _glob_match(rel: str, pattern: str) -> bool:
    """after-dirs patterns: `output/**` is everything below output/; otherwise fnmatch."""
    if pattern.endswith("/**"):
        return rel.startswith(pattern[:-2])
    return fnmatch.fnmatchcase(rel, pattern)


def main(argv: Optional[List[str]] = None) -> int:
    """Drive one run to its end on this node (the embedded default's storage and queue)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m xt_submit.wrapper TASK_JSON", file=sys.stderr)
        return 2
    task_path = Path(argv[0]).resolve()
    task = decode_task(task_path.read_bytes())
    from xt_submit.bootstrap import node_ports, xt_home

    storage, publisher = node_ports(xt_home())
    wrapper = RunWrapper(task, task_path.parent, storage, publisher)
    signal.signal(signal.SIGTERM, lambda signum, frame: wrapper.stop("cancelled"))
    wrapper.start()
    while not wrapper.ended():
        time.sleep(min(SYNC_SECONDS, 0.2))
        wrapper.tick()
    wrapper.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
