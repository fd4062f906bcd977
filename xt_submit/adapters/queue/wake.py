"""A FIFO beside the embedded queue's file: a send pokes it, and the local host, idle, waits on it
rather than sleeping out its poll (a job sent to a host already serving was up to its 0.2 s poll
late). Best effort both ways: with no FIFO, no reader or a full pipe, a send pokes nothing and the
host's poll still finds the message."""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
import uuid
from typing import Callable, Iterator, Optional


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


class Followers:
    """A folder of FIFOs beside the embedded queue's file, one per process following a job (`xt run
    --wait`): every message the host completes pokes them all, so a follower near its job's end
    looks again at once rather than after its pause. Best effort, as Wake: without a FIFO the
    follower's pause is a sleep, and its poll still finds the end."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    @contextlib.contextmanager
    def follow(self) -> Iterator[Callable[[float], None]]:
        """pause(seconds): up to `seconds`, cut short by a poke. The FIFO is made at the first pause
        (a follower that never pauses costs the host no poke) and removed at the end."""
        wake = Wake(os.path.join(self.folder, f"{os.getpid()}-{uuid.uuid4().hex[:8]}"))
        made = []

        def pause(seconds: float) -> None:
            if not made:
                made.append(_listening(wake, self.folder))
            if made[0]:
                wake.wait(seconds)
            else:
                time.sleep(seconds)

        try:
            yield pause
        finally:
            wake.close()
            with contextlib.suppress(OSError):
                os.unlink(wake.path)

    def poke_all(self) -> None:
        try:
            names = os.listdir(self.folder)
        except OSError:  # no follower ever: no folder
            return
        for name in names:
            path = os.path.join(self.folder, name)
            try:
                if not stat.S_ISFIFO(os.lstat(path).st_mode):
                    continue  # not a follower's (a file put there is never written to)
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no reader: its follower was killed before removing it
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                continue
            try:
                os.write(fd, b"!")
            except OSError:  # full: it has pokes enough waiting
                pass
            finally:
                os.close(fd)


def _listening(wake: Wake, folder: str) -> bool:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return False
    return wake.listen()
