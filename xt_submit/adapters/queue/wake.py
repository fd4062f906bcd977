"""A FIFO beside the embedded queue's file: a send pokes it, and the local host, idle, waits on it
rather than sleeping out its poll (a job sent to a host already serving was up to its 0.2 s poll
late). Best effort both ways: with no FIFO, no reader or a full pipe, a send pokes nothing and the
host's poll still finds the message."""
from __future__ import annotations

import os
import stat
from typing import Optional


class Wake:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None  # this process's read end, once it listens

    def listen(self) -> bool:
        """Be the one woken (the host); False where no FIFO can be made (it then polls only)."""
        if self._fd is not None:
            return True
        try:
            os.mkfifo(self.path, 0o600)
        except FileExistsError:
            pass
        except (AttributeError, OSError):  # no FIFOs here
            return False
        try:
            if not stat.S_ISFIFO(os.stat(self.path).st_mode):
                return False
            # read and write: with a writer always open (itself), the FIFO never reads as ended
            self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        except OSError:
            return False
        return True

    def poke(self) -> None:
        if self._fd is not None:
            return  # the listener's own sends: its next pass finds them
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # never a regular file made here
        except OSError:  # ENOENT: no host made one; ENXIO: no host listens
            return
        try:
            os.write(fd, b"!")
        except OSError:  # full (the host has pokes enough waiting), or its reader just ended: the send stands
            pass
        finally:
            os.close(fd)

    @property
    def listening(self) -> bool:
        return self._fd is not None

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, woken by a poke; True if one came (all taken). Only once listening."""
        assert self._fd is not None, "wait() before listen()"
        import select  # here: only the host waits

        ready, _, _ = select.select([self._fd], [], [], seconds)
        if not ready:
            return False
        try:
            while os.read(self._fd, 4096):
                pass
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
