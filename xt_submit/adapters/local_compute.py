"""Local compute: a durable task table (the Compute port) and the executor that runs its tasks as
subprocesses, at most `concurrent` per job at once.

Each run is executed by the run wrapper in its own session, so it outlives a host that dies; a
restarted host adopts the wrappers still alive and never launches a task twice.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import msgspec

from xt_submit.adapters.sqlite_util import connect, transaction
from xt_submit.messages import CANCELLED, ERROR, RunFinished, RunTask, decode_task, encode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_templates (
    workspace TEXT NOT NULL, job TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (workspace, job));
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace TEXT NOT NULL, run TEXT NOT NULL, job TEXT NOT NULL, concurrent INTEGER NOT NULL,
    command TEXT NOT NULL, hparams BLOB NOT NULL, state TEXT NOT NULL DEFAULT 'queued',
    pid INTEGER, pid_start TEXT, launched_at REAL, cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancel_sent_at REAL,
    UNIQUE (workspace, run));
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, seq);
"""
_encode_json = msgspec.json.Encoder().encode
FINISHED_MARKER = "finished"  # written by the wrapper once its RunFinished is sent
PID_FILE = "wrapper.pid"  # the wrapper's first act: "<pid> <start time>"
SPAWN_TIMEOUT_SECONDS = 30.0
CANCEL_GRACE_SECONDS = 15.0


class LocalCompute:
    """The Compute port: submitting and cancelling are durable table writes, nothing else."""

    def __init__(self, path: str) -> None:
        self._db = connect(path, _SCHEMA)

    def submit(self, tasks: Sequence[RunTask]) -> None:
        """Tasks of one job share everything but run, command and hparams: that part is stored
        once per job (a 10,000-run sweep writes one template, not 10,000 copies)."""
        templates = {}
        for task in tasks:
            if (task.workspace, task.job) not in templates:
                templates[(task.workspace, task.job)] = encode(msgspec.structs.replace(task, run="", command="", hparams={}))
        with transaction(self._db) as db:
            db.executemany("INSERT OR IGNORE INTO job_templates (workspace, job, body) VALUES (?, ?, ?)",
                           [(ws, job, body) for (ws, job), body in templates.items()])
            db.executemany(
                "INSERT OR IGNORE INTO tasks (workspace, run, job, concurrent, command, hparams) VALUES (?, ?, ?, ?, ?, ?)",
                [(t.workspace, t.run, t.job, t.concurrent, t.command, _encode_json(t.hparams)) for t in tasks])

    def cancel(self, workspace: str, runs: Sequence[str]) -> List[str]:
        not_started = []
        with transaction(self._db) as db:
            for run in runs:
                row = db.execute("SELECT state FROM tasks WHERE workspace = ? AND run = ?", (workspace, run)).fetchone()
                if row is None:
                    continue
                if row[0] == "queued":
                    db.execute("UPDATE tasks SET state = 'cancelled' WHERE workspace = ? AND run = ?", (workspace, run))
                    not_started.append(run)
                elif row[0] == "launched":
                    db.execute("UPDATE tasks SET cancel_requested = 1 WHERE workspace = ? AND run = ?", (workspace, run))
        return not_started

    # --- used by the executor ----------------------------------------------------------------
    def launchable(self, limit: int, window: int = 2000) -> List[RunTask]:
        """Queued tasks, oldest first, up to each job's free slots."""
        running = {(ws, job): n for ws, job, n in self._db.execute(
            "SELECT workspace, job, count(*) FROM tasks WHERE state IN ('launching', 'launched') GROUP BY workspace, job")}
        chosen = []
        for ws, job, run, concurrent, command, hparams in self._db.execute(
                "SELECT workspace, job, run, concurrent, command, hparams FROM tasks WHERE state = 'queued'"
                " ORDER BY seq LIMIT ?", (window,)):
            if running.get((ws, job), 0) < concurrent:
                running[(ws, job)] = running.get((ws, job), 0) + 1
                chosen.append(msgspec.structs.replace(self._template(ws, job), run=run, command=command,
                                                      hparams=msgspec.json.decode(hparams)))
                if len(chosen) == limit:
                    break
        return chosen

    def _template(self, workspace: str, job: str) -> RunTask:
        row = self._db.execute("SELECT body FROM job_templates WHERE workspace = ? AND job = ?", (workspace, job)).fetchone()
        return decode_task(bytes(row[0]))

    def claim(self, task: RunTask) -> bool:
        """Reserve a queued task before spawning, so a crash cannot launch it twice."""
        with transaction(self._db) as db:
            return db.execute("UPDATE tasks SET state = 'launching', launched_at = ? WHERE workspace = ? AND run = ?"
                              " AND state = 'queued'", (time.time(), task.workspace, task.run)).rowcount > 0

    def launched(self) -> List[dict]:
        rows = self._db.execute("SELECT workspace, run, job, pid, pid_start, launched_at, cancel_requested, cancel_sent_at, state"
                                " FROM tasks WHERE state IN ('launching', 'launched')").fetchall()
        keys = ("workspace", "run", "job", "pid", "pid_start", "launched_at", "cancel_requested", "cancel_sent_at", "state")
        return [dict(zip(keys, row)) for row in rows]

    def set_launched(self, workspace: str, run: str, pid: int, pid_start: str) -> None:
        with transaction(self._db) as db:
            db.execute("UPDATE tasks SET state = 'launched', pid = ?, pid_start = ? WHERE workspace = ? AND run = ?",
                       (pid, pid_start, workspace, run))

    def mark(self, workspace: str, run: str, **fields) -> None:
        with transaction(self._db) as db:
            db.execute(f"UPDATE tasks SET {', '.join(f'{k} = ?' for k in fields)} WHERE workspace = ? AND run = ?",
                       [*fields.values(), workspace, run])

    def active_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM tasks WHERE state IN ('queued', 'launching', 'launched')").fetchone()[0]


def process_start_time(pid: int) -> Optional[str]:
    """The kernel's start time of pid (None if gone or a zombie): tells a live wrapper from a recycled pid."""
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


class LocalExecutor:
    """Launches queued tasks as run-wrapper processes and notices when they end."""

    def __init__(self, compute: LocalCompute, home: Path, publish_finished) -> None:
        self.compute = compute
        self.home = Path(home)
        self.publish_finished = publish_finished
        self.children: Dict[tuple, subprocess.Popen] = {}

    def node_dir(self, workspace: str, run: str) -> Path:
        return self.home / "nodes" / "local" / workspace / run

    def poll(self) -> bool:
        """One pass: reap ended wrappers, forward cancels, launch into free slots. True if anything changed."""
        changed = self._watch_launched()
        for task in self.compute.launchable(limit=64):
            if self.compute.claim(task):
                self._launch(task)
                changed = True
        return changed

    def _launch(self, task: RunTask) -> None:
        node_dir = self.node_dir(task.workspace, task.run)
        node_dir.mkdir(parents=True, exist_ok=True)
        (node_dir / "task.json").write_bytes(encode(task))
        env = dict(os.environ, XT_HOME=str(self.home))
        with open(node_dir / "wrapper.log", "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "xt_submit.wrapper", str(node_dir / "task.json")],
                                       cwd=node_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True)
        self.children[(task.workspace, task.run)] = process
        self.compute.set_launched(task.workspace, task.run, process.pid, process_start_time(process.pid) or "?")

    def _watch_launched(self) -> bool:
        changed = False
        for entry in self.compute.launched():
            key = (entry["workspace"], entry["run"])
            alive = self._alive(key, entry)
            if alive and entry["cancel_requested"]:
                self._forward_cancel(entry)
            if alive:
                continue
            self.children.pop(key, None)
            node_dir = self.node_dir(*key)
            if not (node_dir / FINISHED_MARKER).exists():
                # The wrapper died before reporting (killed, or a host crash between claim and spawn).
                cancelled = bool(entry["cancel_requested"])
                now = time.time()
                self.publish_finished(RunFinished(
                    workspace=entry["workspace"], job=entry["job"], run=entry["run"], node_id="local",
                    status=CANCELLED if cancelled else ERROR, exit_code=None,
                    started_at=entry["launched_at"] or now, ended_at=now,
                    reason="cancelled by request" if cancelled else "run wrapper ended without reporting"))
            self.compute.mark(entry["workspace"], entry["run"], state="done")
            changed = True
        return changed

    def _alive(self, key: tuple, entry: dict) -> bool:
        process = self.children.get(key)
        if process is not None:
            return process.poll() is None
        if entry["state"] == "launching":
            return self._adopt_or_requeue(entry)
        start = process_start_time(entry["pid"]) if entry["pid"] else None
        return start is not None and (start == entry["pid_start"] or entry["pid_start"] == "?")

    def _adopt_or_requeue(self, entry: dict) -> bool:
        """A task claimed by a host that died around the spawn: adopt the wrapper if it started,
        requeue the task if it never did (so it runs exactly once)."""
        pid_file = self.node_dir(entry["workspace"], entry["run"]) / PID_FILE
        try:
            pid_text, pid_start = pid_file.read_text().split()
        except (OSError, ValueError):
            if time.time() - (entry["launched_at"] or 0) > SPAWN_TIMEOUT_SECONDS:
                self.compute.mark(entry["workspace"], entry["run"], state="queued")
            return True  # not ended: either still spawning or back in the queue
        self.compute.set_launched(entry["workspace"], entry["run"], int(pid_text), pid_start)
        entry.update(pid=int(pid_text), pid_start=pid_start, state="launched")
        return process_start_time(int(pid_text)) == pid_start

    def _forward_cancel(self, entry: dict) -> None:
        now = time.time()
        if entry["cancel_sent_at"] is None:
            _signal_group(entry["pid"], signal.SIGTERM)  # the wrapper stops the run and reports "cancelled"
            self.compute.mark(entry["workspace"], entry["run"], cancel_sent_at=now)
        elif now - entry["cancel_sent_at"] > CANCEL_GRACE_SECONDS:
            _signal_group(entry["pid"], signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    if sig == signal.SIGKILL:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
