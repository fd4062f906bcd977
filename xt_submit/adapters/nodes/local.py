"""This machine as a Node: the run's files in a local folder, its process under the reaper here."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from xt_submit.ports import Node

# node_kit's code_archive (zipfile, hashlib) and reaper are imported where a run needs them: every
# CLI command builds this node, and most never launch or unpack anything

RELEASED_FILES = ("console.log", "xt_run_log.jsonl")  # the run wrapper's copies, shipped before release


class LocalNode(Node):
    """This machine. `launch` forks the run's reaper from this process and keeps its pid (with a pidfd,
    where Linux has them), so the supervisor that started a run reaps it and can await its exit."""

    fetches_code = False

    def __init__(self, home: str, name: str = "local") -> None:
        self.name = name
        self.home = str(home)
        self.processes: Dict[int, Optional[int]] = {}  # reaper pid -> its pidfd (None: none to wait on)

    def connect(self) -> None:
        pass  # always here

    def close(self) -> None:
        pass

    def probe(self) -> str:
        return "this machine"

    def work_dir(self, local_dir: str, workspace: str, run: str) -> str:
        return str(local_dir)  # the supervisor's folder for the run is the run's folder

    def prepare(self, local_zip: Optional[str], code_url: Optional[str], code_dir: str, output_dir: str,
                empty_files: List[str], source: str) -> None:
        from xt_submit.node_kit import code_archive

        code_archive.safe_extract(local_zip, code_dir, source=source)
        os.makedirs(output_dir, exist_ok=True)
        for path in empty_files:
            Path(path).touch()

    def place_data(self, local_zip: str, folder: str, source: str) -> None:
        from xt_submit.node_kit import code_archive

        try:
            code_archive.extract_data(local_zip, folder, source)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a half folder is never taken for the share
            raise

    def append(self, path: str, data: bytes) -> None:
        with open(path, "ab") as f:
            f.write(data)

    def read_from(self, path: str, offset: int = 0, limit: Optional[int] = None) -> bytes:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(-1 if limit is None else limit)
        except FileNotFoundError:
            return b""

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def walk(self, root: str) -> Iterator[Tuple[str, tuple]]:
        if not os.path.isdir(root):
            return
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    continue  # a link's target never travels to storage
                stat = os.stat(path)
                yield os.path.relpath(path, root).replace(os.sep, "/"), (stat.st_mtime_ns, stat.st_size)

    @contextlib.contextmanager
    def local_copy(self, path: str) -> Iterator[str]:
        yield path

    def put(self, local_path: str, path: str) -> None:
        shutil.copyfile(local_path, path)

    def python_argv(self, argv: List[str]) -> List[str]:
        if argv and argv[0] == "python":
            return [sys.executable, *argv[1:]]  # the interpreter that runs XT has the Run API installed
        return argv

    def launch(self, argv: List[str], cwd: str, env: Dict[str, str], console: str, exit_file: str) -> Tuple[int, str]:
        """The reaper gets this process's environment and gives the run only its base (reaper.BASE_ENV)
        plus `env`: nothing else of the host's (or a Batch task's) environment reaches the run."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(exit_file)  # a stale one would say this run already ended
        if not os.path.isdir(cwd):  # as an exec would say (the forked reaper could tell no one)
            raise FileNotFoundError(errno.ENOENT, "no such folder to run in", cwd)
        # A fork, not an exec of reaper.py: no interpreter to start per run. Its own session: the run
        # outlives its supervisor, and a cancel can signal its whole tree.
        os.close(os.open(console, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))  # there once launch returns
        from xt_submit.node_kit import reaper

        pid = reaper.fork_reaper(argv, cwd, env, console, exit_file)
        pidfd = None
        with contextlib.suppress(AttributeError, OSError):
            pidfd = os.pidfd_open(pid)  # Linux 5.3+: readable once the reaper ended (wait_for_exit)
        self.processes[pid] = pidfd
        return pid, reaper.process_start_time(pid) or "?"

    def alive(self, pid: int, start: Optional[str]) -> bool:
        if pid in self.processes:
            try:
                ended, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                ended = pid  # reaped elsewhere: it is gone either way
            if not ended:
                return True
            pidfd = self.processes.pop(pid)
            if pidfd is not None:
                os.close(pidfd)
            return False
        from xt_submit.node_kit.reaper import process_start_time

        return process_start_time(pid) == start

    def wait_for_exit(self, timeout: float) -> bool:
        """Wait until one of the reapers this node started ends, or timeout seconds pass; True if one ended.
        Without pidfds (not Linux, or an old kernel) it only sleeps."""
        pidfds = [fd for fd in self.processes.values() if fd is not None]
        if not pidfds:
            time.sleep(timeout)
            return False
        import select  # here: only a host waits on its runs

        poller = select.poll()
        for fd in pidfds:
            poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def release(self, work_dir: str) -> None:
        """The run is reported: its unpacked code and outputs and the copies of its console and run log
        (all in storage now) go. Here the run's folder is also its supervisor's, whose small records
        (task, state, finished marker) stay for a successor that takes over before the task is done."""
        shutil.rmtree(os.path.join(work_dir, "code"), ignore_errors=True)
        for name in RELEASED_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(work_dir, name))

    def kill_group(self, pid: int, sig: int) -> None:
        from xt_submit.node_kit import reaper

        reaper.kill_tree(pid, sig)  # the reaper passes it on to the run's whole tree; SIGKILL reaches all of it
