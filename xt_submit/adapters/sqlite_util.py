"""Shared SQLite setup for the embedded adapters: WAL, a busy timeout, explicit transactions."""
from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from typing import Iterator


def connect(path: str, schema: str) -> sqlite3.Connection:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Autocommit mode: every write goes through transaction() so its boundaries are explicit.
    db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable across a process crash
    db.execute("PRAGMA busy_timeout=60000")
    with transaction(db):
        for statement in schema.split(";"):
            if statement.strip():
                db.execute(statement)
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
