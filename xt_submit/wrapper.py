"""The run wrapper: executes one run on a compute node.

    python -m xt_submit.wrapper TASK_JSON

Fetches and safely unpacks the code, reports RunStarted, runs the setup and the command, tees
console output and the script's run log into storage while it runs, syncs the output dir live,
captures the after-dirs at the end, and reports RunFinished. It exits 0 once the finish is
reported, whatever the script's exit code.
"""
from __future__ import annotations

import fnmatch
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from xt_submit import code_archive, layout, run_log
from xt_submit.adapters.local_compute import FINISHED_MARKER, PID_FILE, process_start_time
from xt_submit.messages import CANCELLED, COMPLETED, ERROR, RunFinished, RunStarted, RunTask, decode_task
from xt_submit.ports import NotFound, Publisher, Storage

SYNC_SECONDS = float(os.environ.get("XT_SYNC_SECONDS", "1.0"))
KILL_GRACE_SECONDS = 10.0


class RunWrapper:
    def __init__(self, task: RunTask, node_dir: Path, storage: Storage, publisher: Publisher, node_id: str = "local") -> None:
        self.task = task
        self.node_dir = node_dir
        self.storage = storage
        self.publisher = publisher
        self.node_id = node_id
        self.code_dir = node_dir / "code"
        self.output_dir = self.code_dir / "output"
        self.local_log = node_dir / "xt_run_log.jsonl"
        self.checkpoint = node_dir / "xt_checkpoint.json"
        self._console: List[bytes] = []
        self._console_lock = threading.Lock()
        self._log_offset = 0
        self._live_seen: Dict[str, tuple] = {}
        self._cancelled = False
        self._timed_out = False
        self._process: Optional[subprocess.Popen] = None

    # --- the run -----------------------------------------------------------------------------
    def execute(self) -> RunFinished:
        task, ws = self.task, self.task.workspace
        started_at = time.time()
        signal.signal(signal.SIGTERM, self._on_cancel)
        log_key = layout.run_log_key(ws, task.run)
        opening = (run_log.record(task.created_at, "created", {"job": task.job, "command": task.command,
                                                              "step_name": task.step_name})
                   + run_log.record(task.created_at, "hparams", task.hparams)
                   + run_log.record(task.created_at, "queued", {"target": task.target}))
        self.storage.write(log_key, opening, overwrite=False)  # already there if this run is resumed
        self.storage.append(log_key, run_log.record(started_at, "started", {"node": self.node_id}))
        self.publisher.send_events([RunStarted(workspace=ws, job=task.job, run=task.run, node_id=self.node_id,
                                               started_at=started_at)])
        exit_code: Optional[int] = None
        reason = ""
        try:
            self._fetch_code()
            self._restore_checkpoint()
            self.output_dir.mkdir(parents=True, exist_ok=True)
            exit_code = self._run_command()
        except (code_archive.ArchiveError, NotFound, OSError) as exc:
            reason = f"run wrapper: {exc}"
            self._console_write(f"\n[xt] {reason}\n".encode())
        ended_at = time.time()
        if self._cancelled:
            status, reason = CANCELLED, "cancelled by request"
        elif self._timed_out:
            status, reason = ERROR, f"max-time of {task.max_time:g}s exceeded"
        elif exit_code == 0:
            status = COMPLETED
        else:
            status = ERROR
            reason = reason or f"exit code {exit_code}"
        self._sync_live()
        self._capture_after_files()
        self._ship_checkpoint()
        self._flush_console()
        _, last_metrics, _ = run_log.summarize(run_log.parse(self._flush_run_log()))
        self.storage.append(layout.run_log_key(ws, task.run), run_log.record(ended_at, "ended", {
            "status": status, "exit_code": exit_code, "duration": round(ended_at - started_at, 3), "reason": reason}))
        finished = RunFinished(workspace=ws, job=task.job, run=task.run, node_id=self.node_id, status=status,
                               exit_code=exit_code, started_at=started_at, ended_at=ended_at, reason=reason,
                               metrics=last_metrics)
        self.publisher.send_events([finished])
        return finished

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

    def _argv(self):
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

    def _run_command(self) -> int:
        self.local_log.touch()
        process = subprocess.Popen(self._argv(), cwd=self.code_dir, env=self._environment(),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self._process = process
        tee = threading.Thread(target=self._tee, args=(process.stdout,), daemon=True)
        tee.start()
        deadline = time.monotonic() + self.task.max_time if self.task.max_time else None
        while process.poll() is None:
            try:
                process.wait(timeout=SYNC_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            if deadline is not None and time.monotonic() > deadline and not self._timed_out:
                self._timed_out = True
                self._stop_process()
            self._flush_console()
            self._flush_run_log()
            self._sync_live()
        tee.join(timeout=5)
        return process.returncode

    def _on_cancel(self, signum, frame) -> None:
        self._cancelled = True
        threading.Thread(target=self._stop_process, daemon=True).start()

    def _stop_process(self) -> None:
        """SIGTERM to the run's process group, SIGKILL after a grace period."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=KILL_GRACE_SECONDS)
                return
            except subprocess.TimeoutExpired:
                continue

    # --- shipping files to storage -----------------------------------------------------------
    def _tee(self, stream) -> None:
        fd = stream.fileno()
        while chunk := os.read(fd, 65536):
            self._console_write(chunk)

    def _console_write(self, chunk: bytes) -> None:
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        with self._console_lock:
            self._console.append(chunk)

    def _flush_console(self) -> None:
        with self._console_lock:
            data, self._console = b"".join(self._console), []
        if data:
            self.storage.append(layout.console_key(self.task.workspace, self.task.run), data)

    def _flush_run_log(self) -> bytes:
        """Append the script's new complete lines to the stored run log; returns everything logged so far."""
        try:
            data = self.local_log.read_bytes()
        except FileNotFoundError:
            return b""
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) > self._log_offset:
            self.storage.append(layout.run_log_key(self.task.workspace, self.task.run), complete[self._log_offset:])
            self._log_offset = len(complete)
        return complete

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
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m xt_submit.wrapper TASK_JSON", file=sys.stderr)
        return 2
    task_path = Path(argv[0]).resolve()
    node_dir = task_path.parent
    (node_dir / PID_FILE).write_text(f"{os.getpid()} {process_start_time(os.getpid()) or '?'}")
    task = decode_task(task_path.read_bytes())
    from xt_submit.bootstrap import embedded, xt_home

    ports = embedded(xt_home()).ports
    RunWrapper(task, node_dir, ports.storage, ports.publisher).execute()
    (node_dir / FINISHED_MARKER).write_text("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
