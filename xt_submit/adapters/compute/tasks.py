"""This machine's compute: a durable task table (the TaskTable port) in SQLite.

Submitting and cancelling are table writes; the executors in `runtime/` claim, launch and
supervise the tasks, at most `concurrent` per job at once. The same table holds the tasks of
`pool` targets (their `pool` column names the target, `node` the box a run went to). `xt run`
registers each target it submits to, so the host knows a pool's boxes without any address or key
travelling in a message."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import msgspec

from xt_submit.adapters.sqlite_util import LocalDb, heals, transaction
from xt_submit.domain.messages import RunTask, decode_task, encode
from xt_submit.ports import TaskTable

_BULK_RUNS = 400  # runs per statement of a bulk cancel (under SQLite's 999 parameters on old builds)

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
CREATE TABLE IF NOT EXISTS targets (name TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS box_health (
    box TEXT PRIMARY KEY, reachable INTEGER NOT NULL, error TEXT NOT NULL, checked_at REAL NOT NULL);
"""
_ADDED_COLUMNS = {"pool": "TEXT", "node": "TEXT"}  # tables made before pools existed get them on open
_encode_json = msgspec.json.Encoder().encode
# What a recreated compute.db lacks: the tasks of runs not yet started (storage has their plan, but
# not whether a node was about to start one, so they are not started again behind the person's back:
# a run is never run twice), the registered pool targets (the next `xt run` registers them again),
# and the executor's watch over runs in flight (those finish and report by themselves).
LOST = ("recreated empty: runs queued but not yet started will not start (`xt list runs --status queued` lists"
        " them: cancel and `xt rerun` them); runs in flight finish unsupervised, their results kept")


def _migrate(db) -> None:
    have = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
    with transaction(db):
        for column, kind in _ADDED_COLUMNS.items():
            if column not in have:
                db.execute(f"ALTER TABLE tasks ADD COLUMN {column} {kind}")
        db.execute("CREATE INDEX IF NOT EXISTS tasks_by_pool ON tasks (pool, state, seq)")
        # launchable's: the jobs with queued runs one index step each, and each one's oldest
        db.execute("CREATE INDEX IF NOT EXISTS tasks_by_job ON tasks (pool, state, workspace, job, seq)")


@heals
class LocalCompute(TaskTable):
    """The Compute port: submitting and cancelling are durable table writes, nothing else."""

    def __init__(self, path: str, *, notice: Optional[Callable[[str], Any]] = None) -> None:
        self._file = LocalDb(path, _SCHEMA, lost=LOST, prepare=_migrate, notice=notice)
        self._file.conn  # opened now: damage is found, and reported, before anything else

    @property
    def _db(self):
        return self._file.conn

    # --- targets this machine runs (registered by `xt run`) ----------------------------------
    def register_target(self, name: str, definition: dict) -> None:
        """definition: {"service": "local"} or {"service": "pool", "boxes": {name: box settings}}."""
        with transaction(self._db) as db:
            db.execute("INSERT OR REPLACE INTO targets (name, body) VALUES (?, ?)", (name, _encode_json(definition)))

    def target(self, name: str) -> Optional[dict]:
        row = self._db.execute("SELECT body FROM targets WHERE name = ?", (name,)).fetchone()
        return msgspec.json.decode(row[0]) if row else None

    def _pool_of(self, target: str) -> Optional[str]:
        """None for tasks the local executor runs; the target's name for a pool's (or an unknown target's)."""
        definition = self.target(target)
        if definition is None:
            return None if target == "local" else target
        return None if definition.get("service") == "local" else target

    def submit(self, tasks: Sequence[RunTask]) -> None:
        """Tasks of one job share everything but run, command and hparams: that part is stored
        once per job (a 10,000-run sweep writes one template, not 10,000 copies)."""
        templates = {}
        for task in tasks:
            if (task.workspace, task.job) not in templates:
                templates[(task.workspace, task.job)] = encode(msgspec.structs.replace(task, run="", command="", hparams={}))
        pools = {target: self._pool_of(target) for target in {t.target for t in tasks}}
        with transaction(self._db) as db:
            db.executemany("INSERT OR IGNORE INTO job_templates (workspace, job, body) VALUES (?, ?, ?)",
                           [(ws, job, body) for (ws, job), body in templates.items()])
            db.executemany(
                "INSERT OR IGNORE INTO tasks (workspace, run, job, concurrent, command, hparams, pool)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(t.workspace, t.run, t.job, t.concurrent, t.command, _encode_json(t.hparams), pools[t.target])
                 for t in tasks])

    def cancel(self, workspace: str, runs: Sequence[str]) -> List[str]:
        """Queued tasks are cancelled; launching and launched ones are flagged for their executor
        (a launch in progress must not miss it). Batched statements: a 100,000-run job is a few."""
        not_started: List[str] = []
        with transaction(self._db) as db:
            for start in range(0, len(runs), _BULK_RUNS):
                chunk = list(runs[start:start + _BULK_RUNS])
                marks = ",".join("?" * len(chunk))
                cancelled = {run for (run,) in db.execute(
                    f"UPDATE tasks SET state = 'cancelled' WHERE workspace = ? AND state = 'queued' AND run IN ({marks})"
                    " RETURNING run", (workspace, *chunk))}
                db.execute(f"UPDATE tasks SET cancel_requested = 1 WHERE workspace = ?"
                           f" AND state IN ('launching', 'launched') AND run IN ({marks})", (workspace, *chunk))
                not_started += [run for run in chunk if run in cancelled]
        return not_started

    # --- used by the executor ----------------------------------------------------------------
    def check_tasks(self) -> list:
        return []  # this machine's executors report their runs' events themselves

    def launchable(self, limit: int, ended: Optional[Mapping[Tuple[str, str], int]] = None) -> List[RunTask]:
        """Queued tasks, oldest first, up to each job's free slots and the machine's (`limit`).
        Per job, in SQL: a job whose slots are full costs nothing here however many runs it has
        queued (the host asks at every pass), and never hides another job's runs behind its own.
        ended: launched runs per job whose processes ended (not reported yet): not counted as running."""
        ended = ended or {}
        running = {(ws, job): n - ended.get((ws, job), 0) for ws, job, n in self._db.execute(
            "SELECT workspace, job, count(*) FROM tasks WHERE state IN ('launching', 'launched') AND pool IS NULL"
            " GROUP BY workspace, job")}
        limit -= sum(running.values())
        if limit <= 0:
            return []
        candidates: list = []
        for ws, job, concurrent in self._jobs_with_queued():
            free = min(concurrent - running.get((ws, job), 0), limit)
            if free > 0:
                candidates += self._db.execute(
                    "SELECT seq, workspace, job, run, command, hparams FROM tasks WHERE pool IS NULL"
                    " AND state = 'queued' AND workspace = ? AND job = ? ORDER BY seq LIMIT ?", (ws, job, free)).fetchall()
        candidates.sort()
        return [self._task(ws, job, run, command, hparams) for _, ws, job, run, command, hparams in candidates[:limit]]

    def _jobs_with_queued(self) -> Iterator[Tuple[str, str, int]]:
        """(workspace, job, concurrent) of each job with local runs queued: one seek in tasks_by_job
        per job (the next job of the workspace, else the next workspace), however many runs it has
        queued. A job's tasks share its `concurrent`."""
        queued = "SELECT workspace, job, concurrent FROM tasks WHERE pool IS NULL AND state = 'queued'"
        found = self._db.execute(f"{queued} ORDER BY workspace, job LIMIT 1").fetchone()
        while found is not None:
            yield found
            ws, job, _ = found
            found = (self._db.execute(f"{queued} AND workspace = ? AND job > ? ORDER BY job LIMIT 1", (ws, job)).fetchone()
                     or self._db.execute(f"{queued} AND workspace > ? ORDER BY workspace, job LIMIT 1", (ws,)).fetchone())

    def _task(self, workspace: str, job: str, run: str, command: str, hparams: bytes) -> RunTask:
        return msgspec.structs.replace(self._template(workspace, job), run=run, command=command,
                                       hparams=msgspec.json.decode(hparams))

    # --- pools -------------------------------------------------------------------------------
    def pools_with_queued(self) -> List[str]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT pool FROM tasks WHERE pool IS NOT NULL AND state = 'queued'")]

    def queued_in_pool(self, pool: str, limit: int) -> List[RunTask]:
        rows = self._db.execute("SELECT workspace, job, run, command, hparams FROM tasks WHERE pool = ? AND state = 'queued'"
                                " ORDER BY seq LIMIT ?", (pool, limit)).fetchall()
        return [self._task(*row) for row in rows]

    def runs_per_node(self) -> Dict[str, int]:
        """Runs in flight on each box, over every pool (a box in two pools has one set of slots)."""
        return dict(self._db.execute("SELECT node, count(*) FROM tasks WHERE node IS NOT NULL"
                                     " AND state IN ('launching', 'launched') GROUP BY node"))

    def requeue(self, workspace: str, run: str) -> None:
        """The run never started (its box dropped before the launch): it goes back in line."""
        self.mark(workspace, run, state="queued", node=None, launched_at=None)

    def record_box(self, box: str, reachable: bool, error: str = "") -> None:
        with transaction(self._db) as db:
            db.execute("INSERT OR REPLACE INTO box_health (box, reachable, error, checked_at) VALUES (?, ?, ?, ?)",
                       (box, int(reachable), error, time.time()))

    def box_health(self) -> Dict[str, dict]:
        return {box: {"reachable": bool(ok), "error": error, "checked_at": at}
                for box, ok, error, at in self._db.execute("SELECT box, reachable, error, checked_at FROM box_health")}

    def counts_by_state(self, pool: Optional[str]) -> Dict[str, int]:
        clause = "pool IS NULL" if pool is None else "pool = ?"
        return dict(self._db.execute(f"SELECT state, count(*) FROM tasks WHERE {clause} GROUP BY state",
                                     () if pool is None else (pool,)))

    def _template(self, workspace: str, job: str) -> RunTask:
        row = self._db.execute("SELECT body FROM job_templates WHERE workspace = ? AND job = ?", (workspace, job)).fetchone()
        return decode_task(bytes(row[0]))

    def claim(self, task: RunTask, node: Optional[str] = None) -> bool:
        """Reserve a queued task (on a pool's box: `node`) before spawning, so a crash cannot launch it twice."""
        with transaction(self._db) as db:
            return db.execute("UPDATE tasks SET state = 'launching', launched_at = ?, node = ? WHERE workspace = ?"
                              " AND run = ? AND state = 'queued'", (time.time(), node, task.workspace, task.run)).rowcount > 0

    def launched(self, pooled: bool = False) -> List[dict]:
        """Runs in flight: the local executor's, or (pooled) those on pools' boxes."""
        rows = self._db.execute("SELECT workspace, run, job, launched_at, cancel_requested, state, pool, node FROM tasks"
                                f" WHERE state IN ('launching', 'launched') AND pool IS {'NOT ' if pooled else ''}NULL").fetchall()
        keys = ("workspace", "run", "job", "launched_at", "cancel_requested", "state", "pool", "node")
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
