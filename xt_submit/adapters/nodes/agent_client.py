"""The host's end of a box agent (node_kit/box_agent.py), over any channel that carries bytes both
ways: a box's SSH channel, or the pipes of this machine's own agent (PipeChannel)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from typing import Callable, Dict, Optional


class AgentReply:
    """A request's answer, once the agent gave it (None: the agent ended first)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.message: Optional[dict] = None


class AgentClient:
    """The host's end of a connection's box agent (node_kit/box_agent.py): any thread sends a
    request, a thread of its own reads the answers, and the reapers' ends the agent tells unasked."""

    def __init__(self, channel, who: str, log: logging.Logger) -> None:
        """channel: a paramiko channel's sendall/recv/recv_stderr_ready/recv_stderr (a PipeChannel's
        here); who: the agent's machine as the log names it ("box gpu1")."""
        self._channel = channel
        self._who = who
        self._log = log
        self._lock = threading.Lock()  # the records below; never held while sending (the reader needs it)
        self._sending = threading.Lock()  # one request's line at a time on the channel
        self._last_id = 0
        self._waiting: Dict[int, AgentReply] = {}
        self._launched: set = set()  # (pid, start) of reapers this agent started, until looked at once ended
        self._ended: set = set()
        self._wakes: Dict[tuple, Callable[[], None]] = {}  # (pid, start) -> whom to tell of its end
        self.running = True
        threading.Thread(target=self._read, name=f"xt-agent-{who}", daemon=True).start()

    def send(self, request: dict) -> AgentReply:
        """Sent whole before any other thread's request: lines never interleave."""
        reply = AgentReply()
        with self._lock:
            if not self.running:
                raise EOFError("the box agent ended")
            self._last_id += 1
            ident = self._last_id
            self._waiting[ident] = reply
        with self._sending:
            self._channel.sendall((json.dumps({**request, "id": ident}) + "\n").encode())
        return reply

    def when_ended(self, pid: int, start: Optional[str], wake: Callable[[], None]) -> None:
        key = (pid, start)
        with self._lock:
            if key not in self._launched:
                return  # not this agent's: nothing will be told
            if key not in self._ended and self.running:
                self._wakes[key] = wake
                return
        wake()

    def ended(self, pid: int, start: Optional[str]) -> Optional[bool]:
        """Whether the reaper ended, as the agent told; None for one this agent did not start."""
        key = (pid, start)
        with self._lock:
            if key not in self._launched or not (self.running or key in self._ended):
                return None
            if key in self._ended:
                self._launched.discard(key)
                self._ended.discard(key)
                self._wakes.pop(key, None)
                return True
            return False

    def _read(self) -> None:
        pending = b""
        try:
            while True:
                try:
                    chunk = self._channel.recv(65536)
                except socket.timeout:  # nothing asked, no run ended: the agent is waiting too
                    continue
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self._take(json.loads(line))
        except Exception as exc:  # the connection went (close() or the box): the requests waiting hear it
            self._log.debug("%s: the agent's channel ended: %r", self._who, exc)
        finally:
            with self._lock:
                self.running = False
                waiting, self._waiting = list(self._waiting.values()), {}
                wakes, self._wakes = list(self._wakes.values()), {}
            for reply in waiting:
                reply.done.set()
            for wake in wakes:  # their runs are looked at again: how they ended is found the other way
                wake()
            self._tell_why()

    def _take(self, message: dict) -> None:
        with self._lock:
            if "ended" in message:
                key = (message["ended"], message["start"])
                self._ended.add(key)
                wake = self._wakes.pop(key, None)
                if wake is not None:
                    wake()
                return
            reply = self._waiting.pop(message["id"], None)
            if "pid" in message:  # before its end can be told
                self._launched.add((message["pid"], message["start"]))
        if reply is not None:
            reply.message = message
            reply.done.set()

    def _tell_why(self) -> None:
        """An agent that ended while its connection is up (killed on the box, a crash) says why in
        host.log: its last line on stderr, if any."""
        err = b""
        with contextlib.suppress(Exception):
            while self._channel.recv_stderr_ready():
                err += self._channel.recv_stderr(4096)
        lines = err.decode(errors="replace").strip().splitlines()
        if lines:
            self._log.warning("%s: the box agent ended: %s", self._who, lines[-1])


class PipeChannel:
    """A child process's stdin and stdout as the few channel calls AgentClient makes; its stderr is
    the parent's own (a local host's log), so there is none to read here."""

    def __init__(self, process) -> None:
        self._process = process
        self._in = process.stdin.fileno()
        self._out = process.stdout.fileno()

    def sendall(self, data: bytes) -> None:
        while data:
            data = data[os.write(self._in, data):]

    def recv(self, size: int) -> bytes:
        return os.read(self._out, size)

    def recv_stderr_ready(self) -> bool:
        return False
