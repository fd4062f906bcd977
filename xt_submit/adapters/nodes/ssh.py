"""A pool's box over SSH: one verified connection per box, and the Node operations a run wrapper
needs: runs started, copied, signalled and removed, small reads and folder listings, by the
connection's box agent (node_kit/box_agent.py, one process on one channel, which also tells each
run's end unasked); writes, big reads and the code zip over SFTP; other commands over exec channels.

Runs on a box are started in their own session with their output in files on the box, so a
dropped connection loses nothing: the supervisor reconnects and carries on from its offsets.
No password is ever asked for: a key (the box's `key`, the agent, or ~/.ssh) or nothing.

A box unpacks each code snapshot once, into a cache named by the zip's sha256, and each run gets
its own copy of that tree. One node may be used by several threads at once (the pool executor
drives each run on a thread of its own): commands go over channels of their own, in parallel;
SFTP requests, which share one session, take turns. A share's data folder is unpacked straight
where it goes (place_data), with none of the code's limits and no cache.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import functools
import posixpath
import re
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from xt_submit.domain.boxes import BoxAddress, BoxError
from xt_submit.adapters.nodes.agent_client import AgentClient, AgentReply
from xt_submit.node_kit import box_agent, code_archive, reaper
from xt_submit.node_kit.box_agent import CACHE_MISSING, PREPARE_FAILED
from xt_submit.ports import Look, Node, NodeUnreachable

log = logging.getLogger("xt.pool")  # the host's log says why a box's connection was dropped

# How long a box may stay silent (a connect, a command, a file transfer) before it counts as
# unreachable: the host serves everything else meanwhile, so this bounds how long it can stall.
SILENT_SECONDS = float(os.environ.get("XT_BOX_TIMEOUT_SECONDS", "20"))
CONNECT_TIMEOUT_SECONDS = min(10.0, SILENT_SECONDS)
COMMAND_TIMEOUT_SECONDS = SILENT_SECONDS
MIN_PYTHON = (3, 9)
# What a box needs from XT, copied once per version: its agent, the reaper, the code unpacker and the Run API
# (which falls back to the stdlib's json where msgspec is not installed).
# Paths below the xt_submit package; node_kit imports nothing else of XT but domain/errors.py.
_SHIPPED_MODULES = ("__init__.py", "domain/__init__.py", "domain/errors.py", "node_kit/__init__.py",
                    "node_kit/box_agent.py", "node_kit/code_archive.py", "node_kit/reaper.py", "node_kit/run_api.py")
_PACKAGE_DIR = Path(__file__).resolve().parents[2]  # xt_submit/


CODE_CACHE = "code"  # below the box's XT folder: one unpacked tree per snapshot, named by its zip's sha256
CACHE_DAYS = 14  # a cached tree unused this long is removed when a host next connects
INCOMING_STALE_MINUTES = 60  # a zip in incoming/ untouched this long is no upload in progress
SFTP_READ_BYTES = 32768  # paramiko's largest READ request (SFTPFile.MAX_REQUEST_SIZE)
# How often a running reaper's process is looked at, besides its exit file at every look.
ALIVE_CHECK_SECONDS = 2.0
# Channels one connection keeps open at once: OpenSSH lets a connection have MaxSessions (10 by
# default) at a time. The box agent's, SFTP sessions (each serves one thread's requests at a time)
# and commands. sshd counts a channel until it has processed our close of it, which may be after its
# slot here is free again: 8 of 10 leaves room for those, and an open the box refuses anyway is tried again.
SFTP_SESSIONS = 3
COMMAND_CHANNELS = 4
# A thread waiting for a slot (held by this process's own calls, each bounded by its own timeouts)
# waits as long as that takes, looking this often whether the connection is still up.
SLOT_CHECK_SECONDS = 0.05
OPEN_ATTEMPTS = 30  # a channel open the box refuses, tried again after pauses of 0.05 s doubling to 1 s (~26 s)
_SHA256_ZIP = re.compile(r"code/([0-9a-f]{64})\.zip")  # storage's name of a snapshot (domain/layout.code_key)

# Run on the box for a share's data folder: unpacked straight into its folder, none of it left on failure.
_UNPACK_DATA = """
import shutil, sys
from xt_submit.node_kit.code_archive import ArchiveError, extract_data
zip_path, folder, source = sys.argv[1:]
try:
    extract_data(zip_path, folder, source)
except BaseException as exc:
    shutil.rmtree(folder, ignore_errors=True)
    sys.exit(str(exc) if isinstance(exc, ArchiveError) else f"{source}: unpacking failed: {type(exc).__name__}: {exc}")
"""


def shipped_digest() -> str:
    digest = hashlib.sha256()
    for name in _SHIPPED_MODULES:
        digest.update(name.encode() + b"\0" + (_PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


_import_lock = threading.Lock()


def load_paramiko():
    """paramiko, imported without invoke: paramiko.config imports it only for an ssh_config's
    `Match exec`, which XT never reads, and it is a third of paramiko's import time (every host
    that starts pays it). A later `import invoke` elsewhere works as usual."""
    with _import_lock:
        if "paramiko" not in sys.modules and "invoke" not in sys.modules:
            sys.modules["invoke"] = None  # type: ignore[assignment]  # `import invoke` raises ImportError
            try:
                import paramiko
            finally:
                if "invoke" in sys.modules and sys.modules["invoke"] is None:
                    del sys.modules["invoke"]
        import paramiko
        logging.getLogger("paramiko.transport").addFilter(_REFUSED_OPENS)  # once: addFilter skips a filter it has
    return paramiko


class _RefusedOpens(logging.Filter):
    """paramiko logs a channel open the box refuses at ERROR; _open_session tries it again and says
    so itself when it gives up, so the host's log does not cry wolf on every retry."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.ERROR and " open FAILED: " in str(record.msg)
                    and str(record.msg).startswith("Secsh channel "))


_REFUSED_OPENS = _RefusedOpens()


class SshNode(Node):
    """One box. Connects lazily; any failure of the connection itself becomes NodeUnreachable (the
    run is not known to have failed), and the next call connects afresh."""

    fetches_code = True  # it can fetch a code zip from a link (Blob Storage) instead of over SFTP

    def __init__(self, box: str, address: str, key: Optional[str] = None, host_key: Optional[str] = None,
                 runs_folder: str = "runs") -> None:
        self.name = box
        self.address = BoxAddress.parse(address, box)
        self.key = os.path.expanduser(key) if key else None
        self.host_key = host_key
        self.runs_folder = runs_folder
        self.home = ""  # the box's XT folder (~/.xt), known once connected
        self._client = None
        self._sftp = None  # the connection's first SFTP session (the others are opened as threads need them)
        self._agent: Optional[AgentClient] = None  # the connection's box agent: launches, copies, removals
        self._lib = ""
        self._lock = threading.RLock()  # connecting, closing, and this node's own records
        self._sessions = threading.Condition(threading.Lock())  # SFTP sessions, lent to one thread at a time
        self._idle_sessions: list = []
        self._session_count = 0
        self._generation = 0  # a connection's number: a session of an earlier one is never lent again
        self._command_channels = threading.BoundedSemaphore(COMMAND_CHANNELS)
        self._cached_codes: set = set()  # snapshots (sha256) known to be unpacked in the box's cache
        self._code_locks: Dict[str, threading.Lock] = {}  # one unpack per snapshot, however many runs start
        # run folder -> (its copy of the code (box_agent.begin_copy's), sent with its launch; what to do
        # if the cached tree is gone by then)
        self._deferred: Dict[str, Tuple[dict, Callable[[], None]]] = {}
        self._zips: Dict[str, str] = {}  # snapshot -> this node's copy of its zip (see _scratch)
        self._scratch_dir: Optional[str] = None
        self._releasing: Dict[str, AgentReply] = {}  # run folder -> its removal's answer, once done
        self._lost_removals: set = set()  # run folders whose removal's connection dropped: removed again
        self._failed_removals: Dict[str, str] = {}  # run folder -> why its removal failed (told once)
        self._alive_checked: Dict[int, float] = {}  # a running reaper's pid -> when /proc last said so

    # --- the connection ----------------------------------------------------------------------
    def connect(self) -> None:
        """Connect, verify the host key, and make sure the box has what runs need. BoxError says why not."""
        if self._connected():  # the common case, without waiting for a thread's SFTP request
            return
        with self._lock:
            if self._connected():
                return
            self.close()
            self._connect()

    def _connected(self) -> bool:
        client = self._client
        transport = client.get_transport() if client is not None else None
        return transport is not None and transport.is_active()

    def _connect(self) -> None:
        paramiko = load_paramiko()
        where = f"box {self.name} ({self.address})"
        client = paramiko.SSHClient()
        if self.host_key:
            client.get_host_keys().add(self.address.known_hosts_name, *self._parse_host_key())
        else:
            client.load_system_host_keys()  # ~/.ssh/known_hosts (hashed entries too); a missing file knows no host
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(self.address.host, port=self.address.port, username=self.address.user,
                           key_filename=self.key, look_for_keys=self.key is None, allow_agent=True,
                           timeout=CONNECT_TIMEOUT_SECONDS, banner_timeout=CONNECT_TIMEOUT_SECONDS,
                           auth_timeout=CONNECT_TIMEOUT_SECONDS, passphrase=None)
        except paramiko.BadHostKeyException:
            client.close()
            raise BoxError(f"{where}: its host key does not match the one expected (known_hosts or boxes.{self.name}.host-key)") from None
        except paramiko.PasswordRequiredException:
            client.close()
            raise BoxError(f"{where}: the key is protected by a passphrase; load it into ssh-agent (XT never prompts)") from None
        except paramiko.AuthenticationException:
            client.close()
            raise BoxError(f"{where}: the box refused the key (set boxes.{self.name}.key, or add the key to its authorized_keys)") from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise BoxError(f"{where}: unknown host key; add it to ~/.ssh/known_hosts (ssh-keyscan) "
                               f"or set boxes.{self.name}.host-key") from None
            raise BoxError(f"{where}: {exc}") from None
        except (OSError, EOFError) as exc:
            client.close()
            raise BoxError(f"{where}: cannot connect: {exc.strerror or exc}") from None
        self._client = client
        try:
            transport = client.get_transport()
            # small requests (a stat, an exec) must not wait on Nagle's algorithm and delayed ACKs
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport.set_keepalive(max(1, int(SILENT_SECONDS / 2)))  # a box that vanished is noticed
            # The SFTP session (a process the box starts, ~45 ms) opens while the box is prepared
            # and its agent starts: the first run waits for the slowest of them, not their sum.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1, thread_name_prefix=f"xt-sftp-{self.name}") as meanwhile:
                opening = meanwhile.submit(self._open_sftp, client)
                try:
                    shipped = self._prepare()
                    if shipped:
                        self._agent = self._start_agent(client)
                finally:
                    self._sftp = opening.result()  # its error, if both failed, is the one told
            if not shipped:
                self._ship_run_side_modules()
                self._agent = self._start_agent(client)
            with self._sessions:
                self._idle_sessions, self._session_count = [(self._generation, self._sftp)], 1
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            raise BoxError(f"{where}: connection lost while preparing the box ({type(exc).__name__})") from None
        except NodeUnreachable as exc:  # it refused our sessions (_open_session)
            self.close()
            raise BoxError(str(exc)) from None
        except BoxError:
            self.close()
            raise

    def close(self) -> None:
        with self._lock:
            for part in (self._sftp, self._client):
                if part is not None:
                    with contextlib.suppress(Exception):
                        part.close()  # the client's other sessions close with it
            self._client = self._sftp = self._agent = None
            self._reclaim_removals()  # those not done are gone with the agent: removed again later
            with self._sessions:
                self._generation += 1
                self._idle_sessions, self._session_count = [], 0
                self._sessions.notify_all()

    def _parse_host_key(self):
        paramiko = load_paramiko()
        try:
            key_type, data = self.host_key.split()[:2]
            return key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(data))
        except Exception:
            raise BoxError(f"boxes.{self.name}.host-key: expected '<type> <base64>' as in known_hosts, "
                           "e.g. 'ssh-ed25519 AAAA...'") from None

    def _prepare(self) -> bool:
        """Once per connection, in one command (no SFTP session needed yet): a recent enough python3,
        XT's folder (~/.xt: self.home, as SFTP's normalize(".") would say it) and its folders, a
        `python`, cached snapshots unused for CACHE_DAYS gone and zips an upload left behind (its
        connection dropped before the unpack removed them) gone after INCOMING_STALE_MINUTES.
        True if XT's run-side modules for this version are on the box already."""
        lib = posixpath.join("lib", shipped_digest())
        _, out, _ = self._exec(
            # -S -I: the version is the interpreter's, not its site's (no site: ~4 ms less of the box's start)
            "python3 -S -I -c 'import sys; print(sys.version_info[:2] >= (%d, %d))' && " % MIN_PYTHON
            # the rest only once its folders are made: a clean-up never runs with "$xt" unset
            + 'xt="$(pwd -P)/.xt" && '
            f'mkdir -p "$xt/bin" "$xt/incoming" "$xt"/{q(CODE_CACHE)} && {{ '
            '(command -v python >/dev/null || ln -sf "$(command -v python3)" "$xt/bin/python"); '
            f'find "$xt"/{q(CODE_CACHE)} -mindepth 1 -maxdepth 1 -mtime +{CACHE_DAYS} -exec rm -rf {{}} + 2>/dev/null; '
            f"find \"$xt/incoming\" -mindepth 1 -maxdepth 1 -name '*.zip' -mmin +{INCOMING_STALE_MINUTES} -delete 2>/dev/null; "
            f'printf "%s\\n" "$xt"; test -e "$xt"/{q(lib)}/.complete && echo shipped || echo missing; }}')
        answer = out.splitlines()[-3:]
        if len(answer) != 3 or answer[0].strip() != "True":
            raise BoxError(f"box {self.name} ({self.address}): expected python3 {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or "
                           "newer on the box's PATH")
        self.home = answer[1]
        self._lib = posixpath.join(self.home, lib)
        return answer[2].strip() == "shipped"

    def _ship_run_side_modules(self) -> None:
        """XT's run-side modules for this version, on a box that has them not yet (its first connection)."""
        lib = self._lib
        self._exec(f"mkdir -p {q(posixpath.join(lib, 'xt_submit', 'domain'))} "
                   f"{q(posixpath.join(lib, 'xt_submit', 'node_kit'))}")
        for name in _SHIPPED_MODULES:
            self._sftp.put(str(_PACKAGE_DIR / name), posixpath.join(lib, "xt_submit", name))
        self._sftp.open(posixpath.join(lib, ".complete"), "w").close()

    def _start_agent(self, client) -> AgentClient:
        channel = self._open_session(client, CONNECT_TIMEOUT_SECONDS)
        agent_py = posixpath.join(self._lib, "xt_submit", "node_kit", "box_agent.py")
        with self._answer_within(CONNECT_TIMEOUT_SECONDS, client):
            channel.exec_command(f"exec python3 -S -I {q(agent_py)} {q(posixpath.join(self.home, 'bin'))}")
        channel.settimeout(COMMAND_TIMEOUT_SECONDS)  # a send to a box gone silent fails (its reader waits on)
        return AgentClient(channel, f"box {self.name}", log)

    def _ask(self, request: dict, patient: bool = False) -> dict:
        """The box agent's answer within COMMAND_TIMEOUT_SECONDS (else TimeoutError: the box went
        silent); patient: however long it takes while the box answers (a big tree's copy). An error
        the agent tells is an OSError."""
        reply = self._send(request)
        if patient:
            self._wait_while_box_answers(reply.done, COMMAND_TIMEOUT_SECONDS)
        elif not reply.done.wait(COMMAND_TIMEOUT_SECONDS):
            raise TimeoutError(f"no answer within {COMMAND_TIMEOUT_SECONDS:g}s")
        if reply.message is None:
            raise EOFError("the box agent ended")
        return self._answered(reply.message)

    def _answered(self, message: dict) -> dict:
        """An answer of the box agent; one that tells an error is an OSError."""
        if "error" in message:
            raise OSError(f"box {self.name}: the box agent: {message['error']}")
        return message

    def _send(self, request: dict) -> AgentReply:
        agent = self._agent
        if agent is None:  # closed by another thread since
            raise EOFError("the connection was closed")
        return agent.send(request)  # within the channel's timeout, or TimeoutError

    @contextlib.contextmanager
    def _connection(self):
        """Connection failures become NodeUnreachable; file errors (a missing file) stay what they are.
        A TimeoutError is always the box's silence (no wait for a slot of this process has a deadline)."""
        try:
            self.connect()
        except BoxError as exc:
            raise NodeUnreachable(str(exc)) from None
        generation = self._generation
        try:
            yield
        except Exception as exc:
            if generation != self._generation:  # closed by another thread meanwhile: whatever failed, failed with it
                raise NodeUnreachable(f"box {self.name} ({self.address}): connection lost") from None
            client = self._client
            transport = client.get_transport() if client is not None else None
            if transport is None or not transport.is_active() or isinstance(exc, TimeoutError):
                log.warning("box %s (%s): closing its connection after %r", self.name, self.address, exc)
                self.close()
                why = "silent too long" if isinstance(exc, TimeoutError) else "connection lost"
                raise NodeUnreachable(f"box {self.name} ({self.address}): {why}") from None
            if isinstance(exc, (OSError, code_archive.ArchiveError)):
                raise
            paramiko = load_paramiko()
            if isinstance(exc, (paramiko.SSHException, EOFError)):
                log.warning("box %s (%s): closing its connection after %r", self.name, self.address, exc)
                self.close()
                raise NodeUnreachable(f"box {self.name} ({self.address}): {exc}") from None
            raise

    def _exec(self, command: str, timeout: float = COMMAND_TIMEOUT_SECONDS, stdin_text: str = "",
              patient: bool = False) -> Tuple[int, str, str]:
        """stdin_text reaches the command on its stdin, never on a command line the box's `ps` shows.
        Threads exec at once, each on a channel of its own. patient: the command may take as long as
        it takes while the box answers (asked every `timeout` s); it must print little, read at the end."""
        self._take_command_channel()
        channel = None
        try:
            client = self._client
            if client is None:  # closed by another thread since
                raise EOFError("the connection was closed")
            channel = self._open_session(client, timeout)
            channel.settimeout(timeout)
            if not stdin_text:
                # Stdin ends on the box, not by our EOF: a command that exits at once has the box close
                # its channel, and paramiko may then send our EOF after our CLOSE, which OpenSSH answers
                # by dropping the whole connection ("ieof packet referred to nonexistent channel").
                # A command fed stdin_text reads it to its end, so it cannot end before our EOF.
                command = _without_stdin(command)
            with self._answer_within(timeout, client):
                channel.exec_command(command)
            if stdin_text:
                channel.sendall(stdin_text.encode())
                channel.shutdown_write()
            if patient:
                self._wait_while_box_answers(channel.status_event, timeout)
            stdout, stderr = channel.makefile("rb"), channel.makefile_stderr("rb")
            out, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
            # recv_exit_status() waits with no bound: a box that goes silent between the output and
            # the exit status would hold this process until the connection dies
            if not channel.status_event.wait(timeout):
                raise TimeoutError(f"no exit status within {timeout:g}s")
            if channel.exit_status == -1 and not _active(client):  # no status: the connection ended it
                raise EOFError("the connection was closed")
            return channel.exit_status, out, err
        finally:
            if channel is not None:
                channel.close()  # before the slot is free: the box counts the channel until it has this
            self._command_channels.release()

    def _take_command_channel(self) -> None:
        """One of COMMAND_CHANNELS, however long that takes while the connection is up."""
        while not self._command_channels.acquire(timeout=SLOT_CHECK_SECONDS):
            if not self._connected():
                raise EOFError("the connection was closed")

    def _open_session(self, client, seconds: float):
        """A new session channel. One the box refuses while the connection is up is its sshd's
        MaxSessions, reached by channels of ours it has not yet finished closing: tried again."""
        paramiko = load_paramiko()
        pause = SLOT_CHECK_SECONDS
        for _ in range(OPEN_ATTEMPTS):
            transport = client.get_transport()
            if transport is None or not transport.is_active():
                raise EOFError("the connection was closed")
            try:
                # paramiko's own bound is longer: a silent box is _answer_within's (the connection closed)
                with self._answer_within(seconds, client):
                    return transport.open_session(timeout=seconds + CONNECT_TIMEOUT_SECONDS)
            except paramiko.SSHException:  # a refusal (ChannelException, or another thread took its reason)
                if not _active(client):
                    raise
            time.sleep(pause)
            pause = min(2 * pause, 1.0)
        raise NodeUnreachable(f"box {self.name} ({self.address}): refuses new sessions on the connection "
                              f"(XT uses {SFTP_SESSIONS + COMMAND_CHANNELS}: is the box's sshd MaxSessions lower?)")

    def _open_sftp(self, client):
        paramiko = load_paramiko()
        channel = self._open_session(client, CONNECT_TIMEOUT_SECONDS)
        try:
            with self._answer_within(CONNECT_TIMEOUT_SECONDS, client):
                channel.invoke_subsystem("sftp")
            session = paramiko.SFTPClient(channel)
        except BaseException:
            channel.close()
            raise
        channel.settimeout(COMMAND_TIMEOUT_SECONDS)
        return session

    def _wait_while_box_answers(self, done: threading.Event, seconds: float) -> None:
        """Until `done` is set (a command's channel ended, an agent's reply is in), however long that
        takes, as long as the box answers an SFTP stat within `seconds` every `seconds`: a busy box
        is not taken for a silent one."""
        while not done.wait(seconds):
            with self._lent_session() as sftp:
                sftp.stat(self.home)  # the session's timeout: a box gone silent raises TimeoutError

    @contextlib.contextmanager
    def _answer_within(self, seconds: float, client) -> Iterator[None]:
        """paramiko waits for the box's answer to a channel request (an exec, the sftp subsystem)
        with no bound, so a box gone silent mid-request would hold this process until the TCP
        connection dies: past `seconds`, the connection is closed under the waiter, which then
        fails at once, and the wait ends as a TimeoutError."""
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            transport = client.get_transport()
            if transport is not None:
                transport.close()

        timer = threading.Timer(seconds, expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except Exception:
            if expired.is_set():
                raise TimeoutError(f"no answer within {seconds:g}s") from None
            raise
        finally:
            timer.cancel()

    # --- the Node operations -------------------------------------------------------------------
    @property
    def runs_root(self) -> str:
        with self._connection():
            return posixpath.join(self.home, self.runs_folder)

    def work_dir(self, local_dir: str, workspace: str, run: str) -> str:
        return posixpath.join(self.runs_root, workspace, run)

    def probe(self) -> str:
        self.connect()
        _, out, _ = self.run("python3 --version")
        return out.strip()

    def append(self, path: str, data: bytes) -> None:
        with self._sftp_session(path) as sftp:
            with sftp.open(path, "a") as f:
                f.write(data)

    def read_from(self, path: str, offset: int = 0, limit: Optional[int] = None) -> bytes:
        """One request to the box agent for what fits box_agent.READ_BYTES (a look at a run's files
        is mostly that); more comes over SFTP, pipelined."""
        self._settle(path)
        with self._connection():
            answer = self._ask(_read_request(path, offset, limit))
        return self._read_answered(path, offset, limit, answer)

    def _read_answered(self, path: str, offset: int, limit: Optional[int], answer: dict) -> bytes:
        """The agent's answer to a read, completed over SFTP when the file has more than it holds."""
        if answer.get("missing"):
            return b""
        first = base64.b64decode(answer["data"])
        asked = box_agent.READ_BYTES if limit is None else min(limit, box_agent.READ_BYTES)
        if len(first) < asked or (limit is not None and len(first) >= limit):
            return first  # short is the end
        rest = None if limit is None else limit - len(first)
        return first + self._read_over_sftp(path, offset + len(first), rest)

    def _read_over_sftp(self, path: str, offset: int, limit: Optional[int]) -> bytes:
        """Open, one READ and close for what fits one request; more is fetched pipelined, sized by
        the file's length."""
        with self._sftp_session(path) as sftp:
            try:
                with sftp.open(path, "rb") as f:
                    asked = SFTP_READ_BYTES if limit is None else min(limit, SFTP_READ_BYTES)
                    first = _one_read(f, offset, asked)
                    if len(first) < asked or (limit is not None and len(first) >= limit):
                        return first  # short is the end: the SFTP draft has servers answer 32 KB reads whole
                    f.seek(offset + len(first))
                    size = f.stat().st_size
                    f.prefetch(size if limit is None else min(size, offset + limit))  # only what is asked for
                    return first + (f.read() if limit is None else f.read(limit - len(first)))
            except FileNotFoundError:
                return b""

    def exists(self, path: str) -> bool:
        self._settle(path)
        with self._connection():
            return bool(self._ask(_exists_request(path))["exists"])

    def look(self, reads: Sequence[Tuple[str, int, Optional[int]]] = (), walks: Sequence[str] = (),
             exists: Sequence[str] = ()) -> Look:
        """One request to the box agent for all of them (a run's end: its exit file, the tails of its
        console and run log, its outputs and its checkpoint, in one round trip instead of five)."""
        for path in [read[0] for read in reads] + list(walks) + list(exists):
            self._settle(path)
        ops = ([_read_request(*read) for read in reads] + [_walk_request(root) for root in walks]
               + [_exists_request(path) for path in exists])
        with self._connection():
            replies = [self._answered(reply) for reply in self._ask({"op": "look", "ops": ops})["replies"]]
        read_replies, walk_replies = replies[:len(reads)], replies[len(reads):len(reads) + len(walks)]
        datas = [self._read_answered(*read, reply) for read, reply in zip(reads, read_replies)]  # (SFTP for more)
        return Look(datas, [_listing(reply) for reply in walk_replies],
                    [bool(reply["exists"]) for reply in replies[len(reads) + len(walks):]])

    def walk(self, root: str) -> Iterator[Tuple[str, tuple]]:
        """One request to the box agent: the regular files below root, links not followed, with
        SFTP's whole-second mtimes (a listing made over SFTP before a reconnect compares the same)."""
        self._settle(root)
        with self._connection():
            answer = self._ask(_walk_request(root))
        return iter(_listing(answer))

    @contextlib.contextmanager
    def local_copy(self, path: str) -> Iterator[str]:
        with tempfile.TemporaryDirectory(prefix="xt-box-") as scratch:
            local = os.path.join(scratch, posixpath.basename(path))
            with self._sftp_session(path) as sftp:
                sftp.get(path, local)
            yield local

    def put(self, local_path: str, path: str) -> None:
        with self._sftp_session(path) as sftp:
            sftp.put(local_path, path)

    @contextlib.contextmanager
    def _sftp_session(self, path: str):
        """An SFTP session of the connection, lent to this thread alone, once `path` is as the calls
        before left it: its run's copy of the code made, or its removal done."""
        self._settle(path)
        with self._connection():
            with self._lent_session() as session:
                yield session

    @contextlib.contextmanager
    def _lent_session(self):
        generation, session = self._borrow_session()
        try:
            yield session
        finally:
            with self._sessions:
                if generation == self._generation:
                    self._idle_sessions.append((generation, session))
                self._sessions.notify()

    def _borrow_session(self) -> tuple:
        """An idle SFTP session, or a new one while there are fewer than SFTP_SESSIONS; waited for as
        long as the other threads' calls take while the connection is up."""
        with self._sessions:
            while not self._idle_sessions and self._session_count >= SFTP_SESSIONS:
                if not self._sessions.wait(SLOT_CHECK_SECONDS) and not self._connected():
                    raise EOFError("the connection was closed")
            if self._idle_sessions:
                return self._idle_sessions.pop()
            self._session_count += 1
            generation, client = self._generation, self._client
        try:
            if client is None:  # closed by another thread since
                raise EOFError("the connection was closed")
            return generation, self._open_sftp(client)
        except BaseException:
            with self._sessions:
                if generation == self._generation:
                    self._session_count -= 1
                self._sessions.notify()
            raise

    # --- a run's code, start and removal ---------------------------------------------------------
    def prepare(self, local_zip: Optional[str], code_url: Optional[str], code_dir: str, output_dir: str,
                empty_files: List[str], source: str) -> None:
        """The run's own copy of its code, with its folders and files. The box unpacks each snapshot
        once, into its cache (the zip over SFTP, or, given code_url, a read-only link to its blob,
        fetched by the box itself), checked as anywhere; a run's copy is made by the box agent
        (box_agent.begin_copy: cp -a for a big tree, reflinked where the file system can), never
        links to the cached files: a run that writes into its code changes only its own copy, never
        another run's or the cache's. Once a snapshot is known to be cached, the copy is not made at
        once but sent with the run's launch, in one request; any other call about the run's folder
        sends it first."""
        digest = _named_sha256(source) or (code_archive.file_sha256(local_zip) if local_zip is not None else None)
        copy = {"into": code_dir, "output": output_dir, "empty": list(empty_files)}
        if digest is not None and digest in self._cached_codes and (code_url or digest in self._zips):
            # what to do if the cached tree is gone by then: unpack it again, from this node's copy of the zip
            again = functools.partial(self._prepare_now, self._zips.get(digest) if code_url is None else None,
                                      code_url, digest, source, copy)
            with self._lock:
                self._deferred[posixpath.dirname(code_dir)] = (self._copy_of(self._cache_path(digest), copy), again)
            return
        self._prepare_now(local_zip, code_url, digest, source, copy)

    def _prepare_now(self, local_zip: Optional[str], code_url: Optional[str], digest: Optional[str], source: str,
                     copy: dict) -> None:
        with self._code_lock(digest):  # a second run of a snapshot being unpacked waits for that unpack
            if digest is not None and self._cached(digest):
                code, err = self._copy_code(self._copy_of(self._cache_path(digest), copy))
                if code != CACHE_MISSING:
                    self._check_prepared(code, err)
                    self._keep_zip(local_zip, digest)
                    return
                self._cached_codes.discard(digest)  # removed on the box since: unpacked again
            cached = self._unpack(local_zip, code_url, digest, source)
            self._check_prepared(*self._copy_code(self._copy_of(cached, copy)))
            if digest is not None:
                self._keep_zip(local_zip, digest)
                self._cached_codes.add(digest)

    def _keep_zip(self, local_zip: Optional[str], digest: str) -> None:
        if local_zip is not None and digest not in self._zips:
            kept = os.path.join(self._scratch(), f"{digest}.zip")
            shutil.copyfile(local_zip, kept)
            self._zips[digest] = kept

    def _scratch(self) -> str:
        """This node's own folder on this machine (removed with the node): a copy of each zip it
        unpacked, to unpack again should the box's cached tree be removed."""
        with self._lock:
            if self._scratch_dir is None:
                self._scratch_dir = tempfile.mkdtemp(prefix="xt-box-zips-")
                weakref.finalize(self, shutil.rmtree, self._scratch_dir, True)
            return self._scratch_dir

    def _cache_path(self, digest: str) -> str:
        return posixpath.join(self.home, CODE_CACHE, digest)

    @staticmethod
    def _copy_of(cached: str, copy: dict) -> dict:
        """What box_agent.begin_copy makes: a run's copy of the cached tree, with its folders and files."""
        return {"cached": cached, **copy}

    def _copy_code(self, copy: dict) -> Tuple[int, str]:
        """(status, why) of the box agent's copy: 0, CACHE_MISSING or PREPARE_FAILED."""
        with self._connection():
            answer = self._ask({"op": "copy", "copy": copy}, patient=True)
        return answer["status"], answer["err"]

    def _send_deferred(self, copy: dict, again: Callable[[], None]) -> None:
        code, err = self._copy_code(copy)
        if code == CACHE_MISSING:
            self._cached_codes.clear()  # the box's cache was cleared: unpacked again
            again()
            return
        self._check_prepared(code, err)

    def _check_prepared(self, code: int, err: str) -> None:
        if code:
            lines = err.strip().splitlines()
            raise code_archive.ArchiveError(f"box {self.name}: {lines[-1] if lines else 'preparing the run failed'}")

    def _cached(self, digest: str) -> bool:
        if digest in self._cached_codes:
            return True
        if self.exists(self._cache_path(digest)):  # an SFTP stat: no process on the box
            self._cached_codes.add(digest)
            return True
        return False

    def _unpack(self, local_zip: Optional[str], code_url: Optional[str], digest: Optional[str], source: str) -> str:
        """The snapshot unpacked into the box's cache; returns its cached tree."""
        remote_zip = posixpath.join(self.home, "incoming", f"{uuid.uuid4().hex}.zip")
        if code_url is None:
            with self._sftp_session(remote_zip) as sftp:
                sftp.put(local_zip, remote_zip, confirm=False)
        with self._connection():  # the box agent's fork unpacks it (the URL goes over its channel, never a command line)
            answer = self._ask({"op": "unpack", "zip": remote_zip, "cache": posixpath.join(self.home, CODE_CACHE),
                                "digest": digest or "", "source": source, "url": code_url or ""}, patient=True)
        self._check_prepared(answer["status"], answer["err"])
        return answer["tree"]

    def place_data(self, local_zip: str, folder: str, source: str) -> None:
        """Over SFTP, then unpacked by the box straight into `folder` (no code cache, no code limits)
        and removed there; nothing of it is kept here. Waited for while the box answers: a big share
        takes a while to unpack."""
        with self._connection():
            remote_zip = posixpath.join(self.home, "incoming", f"{uuid.uuid4().hex}.zip")
        with self._sftp_session(remote_zip) as sftp:
            sftp.put(local_zip, remote_zip, confirm=False)
        with self._connection():
            code, _, err = self._exec(
                f"PYTHONPATH={q(self._lib)} python3 -S -c {q(_UNPACK_DATA)} {q(remote_zip)} {q(folder)} {q(source)}; "
                f"status=$?; rm -f {q(remote_zip)}; exit $status", patient=True)
        self._check_prepared(code, err)

    def _code_lock(self, digest: Optional[str]):
        if digest is None:
            return contextlib.nullcontext()
        with self._lock:
            return self._code_locks.setdefault(digest, threading.Lock())

    def _settle(self, path: Optional[str] = None) -> None:
        """Before a call about `path` (None: about anything): a copy of the code deferred for its
        run is made, and a removal under way below or above it is waited for (however long it takes
        while the box answers), made again if its connection dropped, and a failed one is told."""
        def about(folder: str) -> bool:
            return path is None or _below(path, folder) or _below(folder, path)

        with self._lock:
            self._reclaim_removals()
            under = [folder for folder in self._deferred if path is None or _below(path, folder)]
            copies = [self._deferred.pop(folder) for folder in under]
            removals = [(folder, self._releasing.pop(folder)) for folder in list(self._releasing) if about(folder)]
            lost = [folder for folder in self._lost_removals if about(folder)]
            self._lost_removals.difference_update(lost)
            failed = [self._failed_removals.pop(folder) for folder in list(self._failed_removals) if about(folder)]
        for copy, again in copies:
            self._send_deferred(copy, again)
        unsettled = {folder for folder, _ in removals} | set(lost)  # removed again later if this fails
        try:
            for folder, reply in removals:
                with self._connection():
                    self._wait_while_box_answers(reply.done, COMMAND_TIMEOUT_SECONDS)
                outcome = self._removal_outcome(folder, reply)
                if outcome is None:
                    lost.append(folder)
                    continue
                unsettled.discard(folder)
                if outcome:
                    failed.append(outcome)
            for folder in lost:
                with self._connection():  # the agent ending meanwhile is a dropped connection
                    reply = self._send({"op": "remove", "argv": _removal_argv(folder)})
                    self._wait_while_box_answers(reply.done, COMMAND_TIMEOUT_SECONDS)
                    outcome = self._removal_outcome(folder, reply)
                    if outcome is None:
                        raise EOFError("the box agent ended")
                unsettled.discard(folder)
                if outcome:
                    failed.append(outcome)
        finally:
            if unsettled:
                with self._lock:
                    self._lost_removals.update(unsettled)
        if failed:
            raise OSError(failed[0])

    def _removal_outcome(self, folder: str, reply: AgentReply) -> Optional[str]:
        """Of an answered removal: "" done, why it failed, or None when the agent ended first."""
        message = reply.message
        if message is None:
            return None
        if "error" in message:
            return f"box {self.name}: removing {folder} failed: {message['error']}"
        if message["status"] == 0:
            return ""
        why = message["err"] or f"exit status {message['status']}"
        return f"box {self.name}: removing {folder} failed: {why}"

    def _reclaim_removals(self) -> None:
        """(Under the lock.) Removals that are done are forgotten; a failed one is kept to be told,
        one the agent never finished is made again."""
        for folder, reply in list(self._releasing.items()):
            if reply.done.is_set() or self._agent is None:
                del self._releasing[folder]
                outcome = self._removal_outcome(folder, reply)
                if outcome is None:
                    self._lost_removals.add(folder)
                elif outcome:
                    self._failed_removals[folder] = outcome

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT_SECONDS) -> Tuple[int, str, str]:
        """Run a command on the box (already connected or not); returns (exit status, stdout, stderr)."""
        self._settle()  # it may look anywhere
        with self._connection():
            return self._exec(command, timeout)

    def python_argv(self, argv: List[str]) -> List[str]:
        return argv  # the box's own python (an activated environment's, or python3 as a fallback)

    def launch(self, argv: List[str], cwd: str, env: Dict[str, str], console: str, exit_file: str) -> Tuple[int, str]:
        """By the box agent, which forks the run's reaper (node_kit/reaper.fork_reaper) in its own
        session, with all output in files on the box: one request, with the run's copy of its code
        if that was deferred. The environment travels on the agent's channel, never on a command
        line the box's `ps` shows. The run's environment is the box's base (reaper.BASE_ENV of its
        login environment, PATH ending with XT's bin) plus `env` and PYTHONPATH=XT's run-side
        modules: nothing else of the login (SSH_CONNECTION...) reaches it."""
        work = posixpath.dirname(console)
        with self._lock:
            copy, again = self._deferred.pop(work, (None, None))
        self._settle(work)
        with self._connection():
            own = {**env, "PYTHONPATH": self._lib + (f":{env['PYTHONPATH']}" if env.get("PYTHONPATH") else "")}
            answer = self._ask({"op": "launch", "copy": copy, "cwd": cwd, "argv": argv, "env": own,
                                "console": console, "exit_file": exit_file, "grace": reaper.GRACE_SECONDS},
                               patient=copy is not None)
        code = answer["status"]
        if code == CACHE_MISSING and again is not None:  # the cached tree was removed since: unpacked again
            self._cached_codes.clear()
            again()
            return self.launch(argv, cwd, env, console, exit_file)
        if code == PREPARE_FAILED:
            self._check_prepared(code, answer["err"])
        if code:
            raise OSError(f"box {self.name}: the run did not start: {answer['err']}")
        self._alive_checked[answer["pid"]] = time.monotonic()  # the agent just read its /proc record
        return answer["pid"], answer["start"]

    def alive(self, pid: int, start: Optional[str]) -> bool:
        """The kernel's record of the process, read by the box agent: no process started on the box to look."""
        found = reaper.start_time_in(self.read_from(f"/proc/{int(pid)}/stat"))
        return found is not None and found == start

    def ended(self, pid: int, start: Optional[str], exit_file: str) -> bool:
        """One STAT per look: the reaper writes the exit file last, once the run's whole tree ended. A
        reaper killed before writing it (the box's OOM killer, a reboot) is caught by the kernel's
        record of it, read at most every ALIVE_CHECK_SECONDS per run. A run the connection's box
        agent started needs neither: the agent tells when its reaper ends."""
        agent = self._agent
        told = agent.ended(pid, start) if agent is not None else None
        if told is not None:
            if told:
                self._alive_checked.pop(pid, None)
            return told
        if self.exists(exit_file):
            self._alive_checked.pop(pid, None)
            return True
        now = time.monotonic()
        if now - self._alive_checked.get(pid, -ALIVE_CHECK_SECONDS) < ALIVE_CHECK_SECONDS:
            return False
        if self.alive(pid, start):
            self._alive_checked[pid] = now
            return False
        self._alive_checked.pop(pid, None)
        return True

    def when_ended(self, pid: int, start: Optional[str], wake: Callable[[], None]) -> None:
        agent = self._agent
        if agent is not None:
            agent.when_ended(pid, start, wake)

    def kill_group(self, pid: int, sig: int) -> None:
        """The run's whole tree on the box, found by the box's copy of the reaper (node_kit/reaper.py)."""
        with self._connection():
            self._ask({"op": "kill", "pid": int(pid), "sig": int(sig)})

    def release(self, work_dir: str) -> None:
        """The removal starts, and this returns (the run's slot is free at once); a later call about
        the folder waits for it to be done."""
        with self._lock:
            self._deferred.pop(work_dir, None)  # never made: nothing to copy
        self._settle(work_dir)
        with self._connection():
            reply = self._send({"op": "remove", "argv": _removal_argv(work_dir)})
        with self._lock:
            self._releasing[work_dir] = reply


# The box agent's requests that a single call and a look (several in one) both make
def _read_request(path: str, offset: int, limit: Optional[int]) -> dict:
    return {"op": "read", "path": path, "offset": offset, "limit": limit}


def _walk_request(root: str) -> dict:
    return {"op": "walk", "root": root}


def _exists_request(path: str) -> dict:
    return {"op": "exists", "path": path}


def _listing(answer: dict) -> List[Tuple[str, tuple]]:
    """The box agent's walk answer as Node.walk's (relative path, (mtime, size)) pairs."""
    return [(rel, (mtime, size)) for rel, mtime, size in answer["files"]]


def _one_read(f, offset: int, size: int) -> bytes:
    """One SFTP READ request (paramiko's buffered read asks again until it hears the end)."""
    f.seek(offset)
    try:
        return f._read(size)
    except EOFError:
        return b""


def _without_stdin(command: str) -> str:
    """The command with its stdin read from /dev/null on the box (why: _exec)."""
    return f"exec </dev/null; {command}"


def _removal_argv(folder: str) -> List[str]:
    """What the box agent runs to remove a run's folder (it tells the last complaint, if any)."""
    return ["rm", "-rf", "--", folder]


def _active(client) -> bool:
    transport = client.get_transport()
    return transport is not None and transport.is_active()


def _below(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _named_sha256(source: str) -> Optional[str]:
    """The sha256 a snapshot in storage is named by; None for any other name (the box learns it)."""
    found = _SHA256_ZIP.fullmatch(source)
    return found.group(1) if found else None


def q(text: str) -> str:
    return shlex.quote(text)
