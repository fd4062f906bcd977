"""This machine as a Node: the run's files in a local folder, its process under the reaper here."""
from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from xt_submit.ports import Node

# node_kit's code_archive (zipfile, hashlib) and reaper, the agent's client and subprocess (select),
# logging and shutil are imported where a run needs them: every CLI command builds this node, and
# most never launch or unpack anything

RELEASED_FILES = ("console.log", "xt_run_log.jsonl")  # the run wrapper's copies, shipped before release
AGENT_ANSWER_SECONDS = 60.0  # a launch is a fork: only a machine stalled for this long misses it


class LocalNode(Node):
    """This machine. Each run's reaper is a fork of this machine's agent (node_kit/box_agent.py, as a
    box's): a small process, started with the first launch, that tells the moment a reaper ends, so
    the supervisor awaits exits rather than polling them. Forking the reapers from the supervisor
    itself (with `fork_here`: a process that starts one run, whose reaper then outlives it) costs a
    host of many runs ~1,000 page faults per run: its pages, shared with each living reaper, are
    copied as it writes them (bench/p4_sweep.py)."""

    fetches_code = False

    def __init__(self, home: str, name: str = "local", fork_here: bool = False) -> None:
        self.name = name
        self.home = str(home)
        self.fork_here = fork_here
        self.processes: Dict[int, Optional[int]] = {}  # fork_here: reaper pid -> its pidfd (None: none to wait on)
        self._agent = None  # the AgentClient of this machine's agent, once a run was launched
        self._agent_process = None  # its subprocess.Popen
        self._exit_seen = threading.Event()  # set by the agent's reader when a reaper it started ends
        # a pool's `localhost` box launches from a thread per slot: one of them starts the agent
        self._agent_lock = threading.Lock()

    def connect(self) -> None:
        pass  # always here

    def close(self) -> None:
        """The agent ends with its stdin; the runs it started go on under their reapers."""
        process, self._agent, self._agent_process = self._agent_process, None, None
        if process is not None:
            import subprocess

            with contextlib.suppress(OSError):
                process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)

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
            import shutil

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
        import shutil

        shutil.copyfile(local_path, path)

    def python_argv(self, argv: List[str]) -> List[str]:
        if argv and argv[0] == "python":
            return [sys.executable, *argv[1:]]  # the interpreter that runs XT has the Run API installed
        return argv

    def launch(self, argv: List[str], cwd: str, env: Dict[str, str], console: str, exit_file: str) -> Tuple[int, str]:
        """The reaper gives the run only this process's base environment (reaper.BASE_ENV) plus `env`:
        nothing else of the host's (or a Batch task's) environment reaches the run."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(exit_file)  # a stale one would say this run already ended
        if not os.path.isdir(cwd):  # as an exec would say (the forked reaper could tell no one)
            raise FileNotFoundError(errno.ENOENT, "no such folder to run in", cwd)
        # A fork, not an exec of reaper.py: no interpreter to start per run. Its own session: the run
        # outlives its supervisor, and a cancel can signal its whole tree.
        os.close(os.open(console, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))  # there once launch returns
        from xt_submit.node_kit import reaper

        if self.fork_here:
            pid = reaper.fork_reaper(argv, cwd, env, console, exit_file)
            pidfd = None
            with contextlib.suppress(AttributeError, OSError):
                pidfd = os.pidfd_open(pid)  # Linux 5.3+: readable once the reaper ended (wait_for_exit)
            self.processes[pid] = pidfd
            return pid, reaper.process_start_time(pid) or "?"
        # The base as this process has it now (the agent's environment is the one it started with)
        own = {**reaper.base_environment(os.environ), **env}
        message = self._ask_agent({"op": "launch", "argv": argv, "cwd": cwd, "env": own, "console": console,
                                   "exit_file": exit_file, "grace": reaper.GRACE_SECONDS})
        if message.get("status"):
            raise FileNotFoundError(errno.ENOENT, message.get("err") or "the run could not start", cwd)
        pid, start = int(message["pid"]), str(message["start"])
        self._agent.when_ended(pid, start, self._exit_seen.set)
        return pid, start

    def _ask_agent(self, request: dict) -> dict:
        """The agent's answer (an agent that ended is started again first); OSError if it gives none."""
        with self._agent_lock:
            agent = self._agent
            if agent is None or not agent.running:
                agent = self._start_agent()
        try:
            reply = agent.send(request)
        except (EOFError, OSError) as exc:
            raise OSError(f"this machine's agent ended: {exc}") from exc
        if not reply.done.wait(AGENT_ANSWER_SECONDS) or reply.message is None:
            raise OSError("this machine's agent gave no answer")
        if "error" in reply.message:
            raise OSError(f"this machine's agent: {reply.message['error']}")
        return reply.message

    def _start_agent(self):
        import subprocess

        from xt_submit.adapters.nodes.agent_client import AgentClient, PipeChannel
        from xt_submit.node_kit import box_agent

        self.close()  # an agent that ended: its process reaped
        # Its own session: a ^C to the host's terminal is the host's to handle, not the agent's.
        # close_fds (the default): it holds none of the host's files (its lock, its databases).
        process = subprocess.Popen([sys.executable, "-S", "-I", box_agent.__file__], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, start_new_session=True)
        self._agent_process = process
        import logging

        self._agent = AgentClient(PipeChannel(process), "this machine", logging.getLogger("xt.local"))
        return self._agent

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
        told = self._agent.ended(pid, start) if self._agent is not None else None
        if told is not None:
            return not told
        from xt_submit.node_kit.reaper import process_start_time  # not this agent's run: /proc says

        return process_start_time(pid) == start

    def wait_for_exit(self, timeout: float) -> bool:
        """Wait until one of the reapers this node started ends, or timeout seconds pass; True if one ended.
        With neither an agent nor pidfds (not Linux, or an old kernel) it only sleeps."""
        if self._agent is not None:
            ended = self._exit_seen.wait(timeout)
            self._exit_seen.clear()  # a later end sets it again; one ended meanwhile is seen by the next pass
            return ended
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
        (task, state log) stay for a successor that takes over before the task is done."""
        import shutil

        shutil.rmtree(os.path.join(work_dir, "code"), ignore_errors=True)
        for name in RELEASED_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(work_dir, name))

    def kill_group(self, pid: int, sig: int) -> None:
        from xt_submit.node_kit import reaper

        reaper.kill_tree(pid, sig)  # the reaper passes it on to the run's whole tree; SIGKILL reaches all of it
