"""A host that `xt run` starts for a pool of SSH boxes loads paramiko at once, while the client is
still sending the job (issue 17: ~80 ms the first run on a box no longer waits for); one started for
local runs, or for a pool of `localhost` boxes only, never loads it."""
import time
from pathlib import Path

from xt_submit.runtime import host_control

PARAMIKO_BINARY = "cryptography/hazmat/bindings/_rust"  # paramiko's import maps this into the process


def wait_until(condition, what, seconds=120.0):
    """A bound only for a failure: the condition is what the test checks, never how fast it holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def host_pid(home: Path) -> int:
    return int((home / host_control.LOCK_FILE).read_text())


def paramiko_loaded(pid: int) -> bool:
    return PARAMIKO_BINARY in Path(f"/proc/{pid}/maps").read_text()


def host_argv(pid: int):
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]


def test_a_host_asked_to_warm_ssh_loads_paramiko_before_any_job(tmp_path, monkeypatch):
    from xt_submit.bootstrap import embedded

    home = embedded(tmp_path / "home").home
    monkeypatch.setattr(host_control, "_started", {}, raising=False)
    host_control.ensure_host(home, idle_exit_seconds=30, warm=("ssh",))
    wait_until(lambda: host_control.host_running(home), "the host took its lock")
    pid = host_pid(home)
    wait_until(lambda: paramiko_loaded(pid), "the idle host, given no job, loaded paramiko")
    host_control._started[str(home)].kill()
    host_control._started[str(home)].wait()


def test_xt_run_warms_ssh_only_for_a_pool_with_remote_boxes(project, tmp_path):
    project.env["XT_HOST_IDLE_EXIT"] = "120"  # still there to be read after its job has ended
    (project.code / "train.py").write_text("print('ran')\n")
    done = project.json("run", "--wait", "train.py")
    assert done["status"] == "completed", done
    pid = host_pid(project.home)
    assert host_argv(pid)[-1] == b"" and not paramiko_loaded(pid)  # a local sweep never pays for it
    project.stop_host()

    (project.code / "xt_config.yaml").write_text(
        "compute-targets: {mine: {service: pool, boxes: [here]}, far: {service: pool, boxes: [away]}}\n"
        "boxes: {here: {address: localhost}, away: {address: nobody@127.0.0.1:9}}\n")
    done = project.json("run", "--target", "mine", "--wait", "train.py")
    assert done["status"] == "completed", done
    pid = host_pid(project.home)
    assert host_argv(pid)[-1] == b"" and not paramiko_loaded(pid)
    project.stop_host()

    project.json("run", "--target", "far", "train.py")  # its box never answers: the host's argv is the check
    wait_until(lambda: host_control.host_running(project.home), "a host serves the pool job")
    assert host_argv(host_pid(project.home))[-1] == b"ssh,connect:far"  # and its boxes connected to at once
