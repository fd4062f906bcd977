"""Whether a local host serves an XT_HOME, and starting one: what a CLI command needs of the host,
without importing the host itself (its handlers, executors and run wrapper), which every read
command would otherwise pay for at start-up."""
from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from xt_submit.domain.messages import EVENTS_QUEUE, JOBS_QUEUE
from xt_submit.ports import Parts

LOCK_FILE = "host.lock"
# XT_HOME -> the host this process started there (a subprocess.Popen), until it is seen to have ended
_started: Dict[str, Any] = {}


class HostLock:
    """An exclusive flock on XT_HOME/host.lock, held for the host's life; while held, the file holds
    its holder's PID (for `kill` and for tests). A client only probes it (host_running), never writes."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self) -> bool:
        """Take the lock as its holder (a host or an agent), and name this process in the file."""
        if not self._try_lock():
            return False
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)
        return True

    def release(self) -> None:
        os.ftruncate(self._fd, 0)  # a holder no more: the file names no process that may be gone
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock (the file is left as it is)."""
        if not self._try_lock():
            return True
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        os.close(self._fd)

    def _try_lock(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def host_running(home: Path) -> bool:
    lock = HostLock(home)
    try:
        return lock.held_elsewhere()
    finally:
        lock.close()


def unfinished_work(parts: Parts) -> bool:
    """Messages waiting (delayed retries too) or tasks not yet ended: what a host must be serving."""
    return (parts.queue.count(JOBS_QUEUE) + parts.queue.count(EVENTS_QUEUE) > 0
            or parts.compute.active_count() > 0)


def ensure_host_for_unfinished_work(parts: Parts) -> bool:
    """Start a host if none is running and the home has unfinished work (a host killed mid-job: its
    runs' events and exits wait for one). For commands that read run state: with nothing unfinished
    this is a lock probe and a few counts. Returns True if it started one."""
    if host_running(parts.home) or not unfinished_work(parts):
        return False
    ensure_host(parts.home)
    return True


def ensure_host(home: Path, idle_exit_seconds: Optional[float] = None, warm: Sequence[str] = ()) -> None:
    """Start a background host for this XT_HOME unless one is running, or is still starting: one this
    process started that has not yet taken the lock (its start takes a few hundred ms, and a client
    that asks again meanwhile would start another, which only competes for the cores and loses).
    warm: what the host loads at once, in the background (bootstrap.warm), for the job on its way."""
    if host_running(home):
        return
    starting = _started.get(str(home))
    if starting is not None and starting.poll() is None:
        return
    if idle_exit_seconds is None:
        idle_exit_seconds = float(os.environ.get("XT_HOST_IDLE_EXIT", "10"))
    import subprocess  # only to start one: a read command that finds a host running never loads it

    log_file = open(home / "host.out", "ab")
    # cwd: XT_HOME, not the user's project (`-m` puts the cwd first on sys.path: a project's own
    # msgspec.py or yaml.py would be imported in place of the real ones)
    _started[str(home)] = subprocess.Popen(
        [sys.executable, "-m", "xt_submit.entrypoints.host", str(home), str(idle_exit_seconds), ",".join(warm)],
        cwd=str(home),
        stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, XT_HOME=str(home)))
    log_file.close()
