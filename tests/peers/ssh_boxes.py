"""Real OpenSSH servers on loopback, standing in for a team's own machines in the pool tests.

Each box is Debian's sshd on a free port with its own host key, letting in one user of its own
(so each box has its own home, as two machines would) with one client key. Needs root (to start
sshd and create the users); scripts/test.sh installs openssh-server.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

SSHD = "/usr/sbin/sshd"


def available() -> str:
    """Why the boxes cannot run here, or '' if they can."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing (scripts/test.sh installs Debian's openssh-server)"
    if os.geteuid() != 0:
        return "starting sshd and creating box users needs root"
    return ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Box:
    name: str
    user: str
    port: int
    home: Path
    host_key: str  # "ssh-ed25519 AAAA..." as in known_hosts
    process: subprocess.Popen = field(repr=False)

    @property
    def address(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def connections(self) -> List[int]:
        """The per-connection sshd processes (children of the listener)."""
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def drop_connections(self) -> int:
        """Kill every SSH connection to this box, as a network failure would end them."""
        pids = self.connections()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def as_user(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["su", "-", self.user, "-c", command], capture_output=True, text=True, timeout=timeout)


class SshBoxes:
    def __init__(self) -> None:
        # sshd reads authorized_keys as the box's user: the folder must be readable by all
        self.root = Path(tempfile.mkdtemp(prefix="xt-ssh-boxes-"))
        self.root.chmod(0o755)
        self.client_key = self.root / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "xt-tests", "-f", str(self.client_key)], check=True)
        self.boxes: Dict[str, Box] = {}
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory

    def start(self, name: str, user: str) -> Box:
        if subprocess.run(["id", user], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", user], check=True)
            subprocess.run(["usermod", "--password", "*", user], check=True)  # no password, yet not locked
        home = Path(pwd.getpwnam(user).pw_dir)
        shutil.rmtree(home / ".xt", ignore_errors=True)  # each test session starts with a fresh box
        folder = self.root / name
        folder.mkdir()
        host_key = folder / "host_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        authorized = folder / "authorized_keys"
        authorized.write_text((self.client_key.with_suffix(".pub")).read_text())
        port = free_port()
        config = folder / "sshd_config"
        config.write_text("\n".join([
            f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"AuthorizedKeysFile {authorized}",
            f"PidFile {folder / 'sshd.pid'}", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "PermitRootLogin no", "UsePAM no", "StrictModes no", f"AllowUsers {user}",
            "Subsystem sftp internal-sftp", "MaxSessions 64", "MaxStartups 64", "LogLevel INFO", "",
        ]))
        for path in (folder, authorized):
            path.chmod(0o755 if path.is_dir() else 0o644)
        log = open(folder / "sshd.log", "w")
        process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert process.poll() is None and time.time() < deadline, (folder / "sshd.log").read_text()
                time.sleep(0.05)
        key_type, key_data = host_key.with_suffix(".pub").read_text().split()[:2]
        box = Box(name, user, port, home, f"{key_type} {key_data}", process)
        self.boxes[name] = box
        return box

    def stop(self) -> None:
        for box in self.boxes.values():
            box.process.kill()
            box.process.wait()
            box.drop_connections()
        shutil.rmtree(self.root, ignore_errors=True)


class FreezableProxy:
    """A TCP relay in front of a box that can go silent, as a network partition does: connections
    stay open but nothing crosses (unlike a dropped connection, nothing tells either side)."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target_port = target_port
        self.frozen = threading.Event()
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        import select

        try:
            while not self._closed:
                if self.frozen.is_set():
                    time.sleep(0.05)  # read nothing, send nothing: the bytes wait in the kernel's buffers
                    continue
                ready, _, _ = select.select([source], [], [], 0.05)
                if not ready:
                    continue
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self._server.close()
