"""Starting a test peer (a broker, a database, an emulator) in its own process: waited for with a
bound, and a clear failure naming it when it does not come up; never a fixed sleep."""
import socket
import threading
import time

import pytest

START_SECONDS = 60  # generous: a loaded 2-core machine starts a Python peer slowly, a broken one never


def first_line(process, name: str, timeout: float = START_SECONDS) -> str:
    """The first line the peer prints (its port or URI)."""
    lines = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines or not lines[0].strip():
        process.kill()
        pytest.fail(f"{name} printed nothing within {timeout:g}s (exit code {process.poll()})")
    return lines[0].strip()


def wait_for_port(host: str, port: int, process, name: str, timeout: float = START_SECONDS) -> None:
    """Until the peer accepts a TCP connection on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"{name} exited (code {process.returncode}) before listening on {host}:{port}")
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"{name} did not listen on {host}:{port} within {timeout:g}s")
            time.sleep(0.05)
