"""A pool's box over SSH: one verified connection per box, and the Node operations a run wrapper
needs (files over SFTP, processes over exec channels).

Runs on a box are started in their own session with their output in files on the box, so a
dropped connection loses nothing: the supervisor reconnects and carries on from its offsets.
No password is ever asked for: a key (the box's `key`, the agent, or ~/.ssh) or nothing.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import posixpath
import shlex
import socket
import stat
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from xt_submit.domain.boxes import BoxAddress, BoxError
from xt_submit.node_kit import code_archive, reaper
from xt_submit.ports import Node, NodeUnreachable

# How long a box may stay silent (a connect, a command, a file transfer) before it counts as
# unreachable: the host serves everything else meanwhile, so this bounds how long it can stall.
SILENT_SECONDS = float(os.environ.get("XT_BOX_TIMEOUT_SECONDS", "20"))
CONNECT_TIMEOUT_SECONDS = min(10.0, SILENT_SECONDS)
COMMAND_TIMEOUT_SECONDS = SILENT_SECONDS
PREPARE_TIMEOUT_SECONDS = max(120.0, SILENT_SECONDS)  # unpacking (or fetching) a big code zip takes a while
MIN_PYTHON = (3, 9)
# What a box needs from XT, copied once per version: the reaper, the code unpacker and the Run API
# (which falls back to the stdlib's json where msgspec is not installed).
# Paths below the xt_submit package; node_kit imports nothing else of XT but domain/errors.py.
_SHIPPED_MODULES = ("__init__.py", "domain/__init__.py", "domain/errors.py", "node_kit/__init__.py",
                    "node_kit/code_archive.py", "node_kit/reaper.py", "node_kit/run_api.py")
_PACKAGE_DIR = Path(__file__).resolve().parents[2]  # xt_submit/


# Run on the box: the link (if any) arrives on stdin; an error names what failed, never the link.
_FETCH_AND_UNPACK = """
import sys
from xt_submit.node_kit.code_archive import safe_extract
zip_path, code_dir, source = sys.argv[1:]
url = sys.stdin.readline().strip()
if url:
    import urllib.request
    try:
        urllib.request.urlretrieve(url, zip_path)
    except Exception as exc:
        sys.exit(f"cannot fetch the code from storage: {type(exc).__name__}: {getattr(exc, 'reason', '')}")
safe_extract(zip_path, code_dir, source)
"""


def shipped_digest() -> str:
    digest = hashlib.sha256()
    for name in _SHIPPED_MODULES:
        digest.update(name.encode() + b"\0" + (_PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


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
        self._sftp = None
        self._lib = ""

    # --- the connection ----------------------------------------------------------------------
    def connect(self) -> None:
        """Connect, verify the host key, and make sure the box has what runs need. BoxError says why not."""
        if self._client is not None and self._client.get_transport() is not None and self._client.get_transport().is_active():
            return
        self.close()
        import paramiko

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
            with self._answer_within(CONNECT_TIMEOUT_SECONDS):
                self._sftp = client.open_sftp()
            self._sftp.get_channel().settimeout(COMMAND_TIMEOUT_SECONDS)
            self.home = posixpath.join(self._sftp.normalize("."), ".xt")
            self._prepare()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            raise BoxError(f"{where}: connection lost while preparing the box ({type(exc).__name__})") from None
        except BoxError:
            self.close()
            raise

    def close(self) -> None:
        for part in (self._sftp, self._client):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()
        self._client = self._sftp = None

    def _parse_host_key(self):
        import paramiko

        try:
            key_type, data = self.host_key.split()[:2]
            return key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(data))
        except Exception:
            raise BoxError(f"boxes.{self.name}.host-key: expected '<type> <base64>' as in known_hosts, "
                           "e.g. 'ssh-ed25519 AAAA...'") from None

    def _prepare(self) -> None:
        """Once per connection: a recent enough python3, and XT's run-side modules for this version."""
        _, out, _ = self._exec("python3 -c 'import sys; print(sys.version_info[:2] >= (%d, %d))'" % MIN_PYTHON)
        if out.strip() != "True":
            raise BoxError(f"box {self.name} ({self.address}): expected python3 {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or "
                           "newer on the box's PATH")
        lib = posixpath.join(self.home, "lib", shipped_digest())
        complete = posixpath.join(lib, ".complete")
        try:
            self._sftp.stat(complete)
        except FileNotFoundError:
            self._exec(f"mkdir -p {q(posixpath.join(lib, 'xt_submit', 'domain'))} "
                       f"{q(posixpath.join(lib, 'xt_submit', 'node_kit'))}")
            for name in _SHIPPED_MODULES:
                self._sftp.put(str(_PACKAGE_DIR / name), posixpath.join(lib, "xt_submit", name))
            self._sftp.open(complete, "w").close()
        bin_dir = posixpath.join(self.home, "bin")
        # `python train.py` on a box that only has python3: a fallback at the end of PATH
        self._exec(f"mkdir -p {q(bin_dir)} {q(posixpath.join(self.home, 'incoming'))} && (command -v python >/dev/null || ln -sf \"$(command -v python3)\" {q(bin_dir + '/python')})")
        self._lib = lib

    @contextlib.contextmanager
    def _connection(self):
        """Connection failures become NodeUnreachable; file errors (a missing file) stay what they are."""
        try:
            self.connect()
        except BoxError as exc:
            raise NodeUnreachable(str(exc)) from None
        try:
            yield
        except Exception as exc:
            transport = self._client.get_transport() if self._client is not None else None
            if transport is None or not transport.is_active() or isinstance(exc, TimeoutError):
                self.close()
                why = "silent too long" if isinstance(exc, TimeoutError) else "connection lost"
                raise NodeUnreachable(f"box {self.name} ({self.address}): {why}") from None
            if isinstance(exc, (OSError, code_archive.ArchiveError)):
                raise
            import paramiko

            if isinstance(exc, (paramiko.SSHException, EOFError)):
                self.close()
                raise NodeUnreachable(f"box {self.name} ({self.address}): {exc}") from None
            raise

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT_SECONDS) -> Tuple[int, str, str]:
        """Run a command on the box (already connected or not); returns (exit status, stdout, stderr)."""
        with self._connection():
            return self._exec(command, timeout)

    def _exec(self, command: str, timeout: float = COMMAND_TIMEOUT_SECONDS, stdin_text: str = "") -> Tuple[int, str, str]:
        """stdin_text reaches the command on its stdin, never on a command line the box's `ps` shows."""
        with self._answer_within(timeout):
            stdin, stdout, stderr = self._client.exec_command(command, timeout=timeout)
        if stdin_text:
            stdin.write(stdin_text)
        stdin.channel.shutdown_write()
        out, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
        # recv_exit_status() waits with no bound: a box that goes silent between the output and
        # the exit status would hold this process until the connection dies
        if not stdout.channel.status_event.wait(timeout):
            raise TimeoutError(f"no exit status within {timeout:g}s")
        return stdout.channel.exit_status, out, err

    @contextlib.contextmanager
    def _answer_within(self, seconds: float) -> Iterator[None]:
        """paramiko waits for the box's answer to a channel request (an exec, the sftp subsystem)
        with no bound, so a box gone silent mid-request would hold this process until the TCP
        connection dies: past `seconds`, the connection is closed under the waiter, which then
        fails at once, and the wait ends as a TimeoutError."""
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            transport = self._client.get_transport() if self._client is not None else None
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
        with self._connection():
            with self._sftp.open(path, "a") as f:
                f.write(data)

    def read_from(self, path: str, offset: int = 0, limit: Optional[int] = None) -> bytes:
        with self._connection():
            try:
                with self._sftp.open(path, "rb") as f:
                    f.seek(offset)
                    size = f.stat().st_size
                    f.prefetch(size if limit is None else min(size, offset + limit))  # only what is asked for
                    return f.read() if limit is None else f.read(limit)
            except FileNotFoundError:
                return b""

    def exists(self, path: str) -> bool:
        with self._connection():
            try:
                self._sftp.stat(path)
                return True
            except FileNotFoundError:
                return False

    def walk(self, root: str) -> Iterator[Tuple[str, tuple]]:
        with self._connection():
            found: List[Tuple[str, tuple]] = []
            pending = [""]
            while pending:
                rel_dir = pending.pop()
                try:
                    entries = self._sftp.listdir_attr(posixpath.join(root, rel_dir) if rel_dir else root)
                except FileNotFoundError:
                    continue
                for entry in entries:
                    rel = posixpath.join(rel_dir, entry.filename) if rel_dir else entry.filename
                    if stat.S_ISDIR(entry.st_mode):
                        pending.append(rel)
                    elif stat.S_ISREG(entry.st_mode):  # a link's target never travels to storage
                        found.append((rel, (entry.st_mtime, entry.st_size)))
        return iter(sorted(found))

    @contextlib.contextmanager
    def local_copy(self, path: str) -> Iterator[str]:
        with tempfile.TemporaryDirectory(prefix="xt-box-") as scratch:
            local = os.path.join(scratch, posixpath.basename(path))
            with self._connection():
                self._sftp.get(path, local)
            yield local

    def put(self, local_path: str, path: str) -> None:
        with self._connection():
            self._sftp.put(local_path, path)

    def prepare(self, local_zip: Optional[str], code_url: Optional[str], code_dir: str, output_dir: str,
                empty_files: List[str], source: str) -> None:
        """The code zip comes over SFTP, or (code_url: a read-only link to its blob) the box fetches
        it itself; either way it is unpacked on the box by the same checks as anywhere, and the
        run's folders and files are made in the same command (one round trip, not five)."""
        remote_zip = posixpath.join(self.home, "incoming", f"{uuid.uuid4().hex}.zip")
        if code_url is None:
            with self._connection():
                self._sftp.put(local_zip, remote_zip, confirm=False)
        with self._connection():
            code, _, err = self._exec(
                f"mkdir -p {q(posixpath.dirname(code_dir))} && PYTHONPATH={q(self._lib)} python3 -S -c {q(_FETCH_AND_UNPACK)} "
                f"{q(remote_zip)} {q(code_dir)} {q(source)}; status=$?; rm -f {q(remote_zip)}; [ $status = 0 ] && "
                f"mkdir -p {q(output_dir)} && touch {' '.join(q(path) for path in empty_files)}",
                timeout=PREPARE_TIMEOUT_SECONDS, stdin_text=(code_url or "") + "\n")
        if code:
            lines = err.strip().splitlines()
            raise code_archive.ArchiveError(f"box {self.name}: {lines[-1] if lines else 'preparing the run failed'}")

    def python_argv(self, argv: List[str]) -> List[str]:
        return argv  # the box's own python (an activated environment's, or python3 as a fallback)

    def launch(self, argv: List[str], cwd: str, env: Dict[str, str], console: str, exit_file: str) -> Tuple[int, str]:
        """Through a script file written from the channel's stdin (the environment never appears on
        a command line the box's `ps` shows), in its own session under the reaper, with all output
        in files on the box: one round trip. The run's environment is the box's base
        (reaper.BASE_ENV of its login environment, PATH ending with XT's bin) plus `env` and
        PYTHONPATH=XT's run-side modules: nothing else of the login (SSH_CONNECTION...) reaches it."""
        work = posixpath.dirname(console)
        spec = posixpath.join(work, reaper.SPEC_FILE)
        with self._connection():
            own = {**env, "PYTHONPATH": self._lib + (f":{env['PYTHONPATH']}" if env.get("PYTHONPATH") else "")}
            lines = ["#!/bin/bash",
                     f"(umask 077 && printf '%s' {q(reaper.launch_spec(own))} > {q(spec)}) || exit 1",  # a builtin: no ps
                     f"export PATH=\"$PATH:{self.home}/bin\"",
                     f"cd {q(cwd)} || exit 1",
                     "exec python3 -S -I " + shlex.join([self._reaper(), exit_file, spec, *argv])]
            command = (f"cd {q(work)} || exit 1; rm -f {q(exit_file)}; (umask 077 && cat > launch.sh) || exit 1; "
                       f"setsid /bin/bash launch.sh </dev/null >>{q(console)} 2>&1 & pid=$!; echo $pid; "
                       f"sed 's/.*) //' /proc/$pid/stat | cut -d' ' -f20")
            code, out, err = self._exec(command, stdin_text="\n".join(lines) + "\n")
        parts = out.split()
        if code or len(parts) != 2:
            raise OSError(f"box {self.name}: the run did not start: {err.strip() or out.strip()}")
        return int(parts[0]), parts[1]

    def alive(self, pid: int, start: Optional[str]) -> bool:
        _, out, _ = self.run(f"sed 's/.*) //' /proc/{int(pid)}/stat 2>/dev/null | cut -d' ' -f1,20")
        parts = out.split()
        return len(parts) == 2 and parts[0] not in ("Z", "X") and parts[1] == start

    def kill_group(self, pid: int, sig: int) -> None:
        """The run's whole tree on the box, found by the box's copy of the reaper (node_kit/reaper.py)."""
        with self._connection():
            self._exec(f"python3 -S -I {q(self._reaper())} --kill {int(sig)} {int(pid)}")

    def _reaper(self) -> str:
        return posixpath.join(self._lib, "xt_submit", "node_kit", "reaper.py")

    def release(self, work_dir: str) -> None:
        self.run(f"rm -rf {q(work_dir)}")


def q(text: str) -> str:
    return shlex.quote(text)
