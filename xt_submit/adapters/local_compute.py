"""Local compute: a durable task table (the Compute port) and the executor that runs its tasks,
at most `concurrent` per job at once."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import msgspec

from xt_submit.adapters.sqlite_util import connect, transaction
from xt_submit.messages import RunTask, decode_task, encode
from xt_submit.wrapper import FINISHED_MARKER, RunWrapper

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_templates (
    workspace TEXT NOT NULL, job TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (workspace, job));
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace TEXT NOT NULL, run TEXT NOT NULL, job TEXT NOT NULL, concurrent INTEGER NOT NULL,
    command TEXT NOT NULL, hparams BLOB NOT NULL, state TEXT NOT NULL DEFAULT 'queued',
    launched_at REAL, cancel_requested INTEGER NOT NULL DEFAULT 0,
    UNIQUE (workspace, run));
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, seq);
"""
_encode_json = msgspec.json.Encoder().encode
SPAWN_TIMEOUT_SECONDS = 30.0
# Runs at once on this machine, over all jobs (each job also has its own `concurrent`).
MACHINE_MAX_RUNS = int(os.environ.get("XT_LOCAL_MAX_RUNS", "0")) or max(2, 2 * (os.cpu_count() or 1))


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
        """Queued tasks, oldest first, up to each job's free slots and the machine's (`limit`)."""
        running = {(ws, job): n for ws, job, n in self._db.execute(
            "SELECT workspace, job, count(*) FROM tasks WHERE state IN ('launching', 'launched') GROUP BY workspace, job")}
        limit -= sum(running.values())
        if limit <= 0:
            return []
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
        rows = self._db.execute("SELECT workspace, run, job, launched_at, cancel_requested, state"
                                " FROM tasks WHERE state IN ('launching', 'launched')").fetchall()
        keys = ("workspace", "run", "job", "launched_at", "cancel_requested", "state")
        return [dict(zip(keys, row)) for row in rows]

    def set_launched(self, workspace: str, run: str) -> None:
        """The run's process (if any) is recorded in its wrapper state, in the node dir."""
        with transaction(self._db) as db:
            db.execute("UPDATE tasks SET state = 'launched' WHERE workspace = ? AND run = ?", (workspace, run))

    def mark(self, workspace: str, run: str, **fields) -> None:
        with transaction(self._db) as db:
            db.execute(f"UPDATE tasks SET {', '.join(f'{k} = ?' for k in fields)} WHERE workspace = ? AND run = ?",
                       [*fields.values(), workspace, run])

    def active_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM tasks WHERE state IN ('queued', 'launching', 'launched')").fetchone()[0]


class LocalExecutor:
    """Runs queued tasks on this machine: drives a RunWrapper per run inside the host process
    (the run itself is a separate session under a tiny reaper, so it outlives the host), and
    adopts the runs a dead host left behind. No task is launched twice."""

    def __init__(self, compute: LocalCompute, home: Path, storage, publisher) -> None:
        self.compute = compute
        self.home = Path(home)
        self.storage = storage
        self.publisher = publisher
        self.running: Dict[tuple, RunWrapper] = {}

    def node_dir(self, workspace: str, run: str) -> Path:
        return self.home / "nodes" / "local" / workspace / run

    def poll(self) -> bool:
        """One pass: supervise and finish runs, forward cancels, launch into free slots. True if anything changed."""
        changed = False
        for entry in self.compute.launched():
            changed |= self._supervise(entry)
        for task in self.compute.launchable(limit=MACHINE_MAX_RUNS):
            if self.compute.claim(task):
                self._launch(task)
                changed = True
        return changed

    def _launch(self, task: RunTask) -> None:
        node_dir = self.node_dir(task.workspace, task.run)
        node_dir.mkdir(parents=True, exist_ok=True)
        (node_dir / "task.json").write_bytes(encode(task))
        wrapper = RunWrapper(task, node_dir, self.storage, self.publisher)
        wrapper.start()
        self.running[(task.workspace, task.run)] = wrapper
        self.compute.set_launched(task.workspace, task.run)

    def _wrapper_for(self, entry: dict) -> Optional[RunWrapper]:
        key = (entry["workspace"], entry["run"])
        if key in self.running:
            return self.running[key]
        node_dir = self.node_dir(*key)
        try:
            task = decode_task((node_dir / "task.json").read_bytes())
            wrapper = RunWrapper.resume(task, node_dir, self.storage, self.publisher)
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
        if entry["cancel_requested"]:
            wrapper.stop("cancelled")
        if not wrapper.ended():
            wrapper.tick()
            return False
        if not (wrapper.node_dir / FINISHED_MARKER).exists():
            wrapper.finish()
        self.compute.mark(entry["workspace"], entry["run"], state="done")
        self.running.pop((entry["workspace"], entry["run"]), None)
        return True
