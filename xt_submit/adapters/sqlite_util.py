"""Shared SQLite setup for the embedded adapters: WAL, a busy timeout, explicit transactions, and
files that heal (`LocalDb`, `heals`).

A file SQLite cannot read (garbage, truncated, "database disk image is malformed") is moved aside
as `<name>.corrupt-<time>` (with its -wal and -shm), recreated from the schema, refilled where
storage can refill it (the stats index rebuilds itself from storage), and the person is told in
one line. A file replaced under a running process (moved aside by another process, or deleted) is
reopened, so a long-lived host never keeps writing to a file nobody else reads.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
import sys
import time
import types
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Tuple

from xt_submit.domain.errors import OneLineError

_HEADER = b"SQLite format 3\x00"
_SIDE_FILES = ("-wal", "-shm")


class LocalStateError(OneLineError):
    """A local SQLite file that is unreadable even after it was moved aside and recreated."""


def connect(path: str, schema: str, *, mark_new: bool = False) -> sqlite3.Connection:
    """mark_new: a new file (no tables yet) gets a row in xt_refill, deleted once it is refilled."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Autocommit mode: every write goes through transaction() so its boundaries are explicit.
    db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable across a process crash
        db.execute("PRAGMA busy_timeout=60000")
        with transaction(db):
            new = db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None
            for statement in schema.split(";"):
                if statement.strip():
                    db.execute(statement)
            if mark_new:
                db.execute("CREATE TABLE IF NOT EXISTS xt_refill (pending INTEGER NOT NULL)")
                if new:
                    db.execute("INSERT INTO xt_refill (pending) VALUES (1)")
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE takes the write lock up front, so read-then-write cannot deadlock."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    else:
        db.execute("COMMIT")


def is_corrupt(exc: BaseException) -> bool:
    """SQLite saying the file is no database it can read (not a busy lock, a full disk or a missing folder)."""
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.DatabaseError) else None
    return code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)  # extended codes too


def damage(path: str) -> Optional[str]:
    """What is wrong with the file at a glance, with what was expected; None for a missing or empty
    file (a new database) and for one that looks whole (SQLite finds the rest)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    page = int.from_bytes(header[16:18], "big") if len(header) >= 18 else 0
    page = 65536 if page == 1 else page
    if not header.startswith(_HEADER) or page < 512 or page & (page - 1):
        return "not an SQLite database (expected one, starting with SQLite's header)"
    # SQLite writes whole pages, and the kernel grows a file 4096 bytes at a time: a cut, not a write in flight
    if size < page or (page <= 4096 and size % page):
        return f"truncated to {size} bytes (expected an SQLite database of whole {page}-byte pages)"
    return None


def _identity(path: str) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive flock on `path`: one process at a time moves a file aside, creates or refills it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _move_aside(path: str) -> str:
    now = time.time()
    aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S', time.localtime(now))}.{int(now % 1 * 1e6):06d}"
    for suffix in ("", *_SIDE_FILES):
        try:
            os.replace(path + suffix, aside + suffix)  # -wal and -shm keep their pairing, for a look later
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LocalStateError(f"{path}: unreadable as an SQLite database, and it cannot be moved aside to"
                                  f" {os.path.basename(aside)}: {exc.strerror or exc}") from None
    return aside


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class LocalDb:
    """One SQLite file of XT_HOME with its schema, that heals (see the module docstring).

    lost: what the person is told a recreated file lacks. prepare: run on each new connection
    (functions, column migrations). refill: called once for a new or recreated file, under the
    file's lock and with a marker row kept until it returns, so a crash part-way has the next
    opener refill it again; it returns what it restored (for the notice), or None for nothing.
    """

    def __init__(self, path: str, schema: str, *, lost: str,
                 prepare: Optional[Callable[[sqlite3.Connection], Any]] = None,
                 refill: Optional[Callable[[], Optional[str]]] = None,
                 notice: Optional[Callable[[str], Any]] = None) -> None:
        self.path = path
        self.schema = schema
        self.lost = lost
        self._prepare = prepare
        self._refill = refill
        self._notice = notice or _to_stderr
        self._conn: Optional[sqlite3.Connection] = None
        self._identity: Optional[Tuple[int, int]] = None
        self._refilling = False

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection to the file now at `path` (reopened when the file was replaced)."""
        conn = self._conn
        if conn is not None and (self._refilling or conn.in_transaction or _identity(self.path) == self._identity):
            return conn
        return self._open()

    def recover(self, exc: BaseException) -> None:
        """`exc` (SQLite finding the open file corrupt): move the file aside and recreate it."""
        if self._refilling:
            raise LocalStateError(f"{self.path}: {exc} (expected an SQLite database), while refilling it") from None
        self._open(found=f"{exc} (expected an SQLite database)")

    def _connect(self) -> sqlite3.Connection:
        conn = connect(self.path, self.schema, mark_new=self._refill is not None)
        try:
            if self._prepare is not None:
                self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open(self, found: Optional[str] = None) -> sqlite3.Connection:
        aside = None
        with _locked(self.path + ".lock"):
            if found is not None and self._identity is not None and _identity(self.path) == self._identity:
                aside = _move_aside(self.path)  # still the file found corrupt, not one another process made since
            else:
                found = damage(self.path)
                aside = _move_aside(self.path) if found else None
            missing = _identity(self.path) is None
            if missing:  # a -wal or -shm a deleted file left belongs to no database
                for suffix in _SIDE_FILES:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path + suffix)
            while True:
                try:
                    conn = self._connect()
                    break
                except sqlite3.DatabaseError as exc:
                    if not is_corrupt(exc):
                        raise
                    if aside is not None:  # a file just made that SQLite cannot read: nothing more to move aside
                        raise LocalStateError(f"{self.path}: {exc} (expected an SQLite database), even new") from None
                    found, aside = f"{exc} (expected an SQLite database)", _move_aside(self.path)
            old, self._conn, self._identity = self._conn, conn, _identity(self.path)
            if old is not None:
                with contextlib.suppress(sqlite3.Error):
                    old.close()
            note = self._refilled(conn)
        if aside is not None:
            self._notice(f"{self.path}: {found}: moved aside to {os.path.basename(aside)}; {note or self.lost}")
        elif note:
            self._notice(f"{self.path}: {'not found, so ' if missing else ''}made anew: {note}")
        return conn

    def _refilled(self, conn: sqlite3.Connection) -> Optional[str]:
        if self._refill is None or conn.execute("SELECT 1 FROM xt_refill").fetchone() is None:
            return None
        self._refilling = True
        try:
            note = self._refill()
        finally:
            self._refilling = False
        with transaction(conn):
            conn.execute("DELETE FROM xt_refill")
        return note


def heals(cls: type) -> type:
    """Class decorator for an adapter whose `_file` is a LocalDb: each public method that meets a
    corrupt file has it recovered (moved aside, recreated, refilled) and runs once more."""
    for name, method in list(vars(cls).items()):
        if not name.startswith("_") and isinstance(method, types.FunctionType):  # not inspect's: ~10 ms to import
            setattr(cls, name, _healing(method))
    return cls


def _healing(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            found = exc
        self._file.recover(found)
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            raise LocalStateError(f"{self._file.path}: {exc} (expected an SQLite database), again after recreating it") from None
    return call
