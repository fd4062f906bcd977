"""The local node's reaper is a fork, not an exec: of this machine's agent (a host of many runs) or
of the supervisor itself (fork_here: a process that starts one run). What that must not change: it
holds none of the supervisor's files (the host lock, its databases), is told from a recycled pid,
and its end wakes a supervisor waiting on it at once rather than at its next poll."""
import fcntl
import os
import signal
import sys
import time

import pytest

from xt_submit.adapters.nodes.local import LocalNode
from xt_submit.node_kit import reaper

both_kinds = pytest.mark.parametrize("fork_here", [False, True], ids=["agent", "fork_here"])


def parent_of(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def launch(node, tmp_path, script):
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    console, exit_file = tmp_path / "console.log", tmp_path / "exit_code"
    pid, start = node.launch([sys.executable, "-c", script], str(code), {"XT_LR": "0.1"}, str(console),
                             str(exit_file))
    return pid, start, console, exit_file


def wait_for(condition, what, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@both_kinds
def test_the_reaper_and_its_run_hold_none_of_the_supervisors_files(tmp_path, fork_here):
    lock_path = tmp_path / "host.lock"
    held = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # as the host holds its lock while it launches runs
    node = LocalNode(str(tmp_path / "home"), fork_here=fork_here)
    pid, start, console, exit_file = launch(node, tmp_path, "import time; print('ready', flush=True); time.sleep(300)")
    try:
        wait_for(lambda: b"ready" in console.read_bytes(), "the run started")
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2]
        os.close(held)  # the supervisor dies: its lock must be free for a successor although the run goes on
        successor = os.open(lock_path, os.O_RDWR)
        fcntl.flock(successor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(successor)
        assert node.alive(pid, start) and reaper._whose(pid) == "reaper"  # a forked reaper is known as one
    finally:
        node.kill_group(pid, signal.SIGKILL)
    wait_for(lambda: not node.alive(pid, start), "the killed run ended")
    node.close()


@both_kinds
def test_an_ended_run_wakes_the_waiting_supervisor_at_once_and_leaves_its_exit_code(tmp_path, fork_here):
    node = LocalNode(str(tmp_path / "home"), fork_here=fork_here)
    pid, start, console, exit_file = launch(node, tmp_path,
                                            "import os, time; time.sleep(0.3); print(os.environ['XT_LR']); raise SystemExit(4)")
    began = time.monotonic()
    while node.alive(pid, start):
        assert node.wait_for_exit(30.0) or time.monotonic() - began < 30, "woken by the run's end"
    assert time.monotonic() - began < 10  # woken by the exit, not by the 30 s timeout
    assert exit_file.read_text().split("\n")[0] == "4" and b"0.1" in console.read_bytes()
    assert pid not in node.processes  # reaped, its pidfd closed
    assert not os.path.exists(f"/proc/{pid}")  # reaped by whoever forked it: no zombie left
    node.close()


@both_kinds
def test_a_run_in_a_missing_folder_is_refused_in_the_supervisor(tmp_path, fork_here):
    node = LocalNode(str(tmp_path / "home"), fork_here=fork_here)
    try:
        node.launch([sys.executable, "-c", "pass"], str(tmp_path / "missing"), {}, str(tmp_path / "c.log"),
                    str(tmp_path / "exit_code"))
    except FileNotFoundError:
        return
    raise AssertionError("a missing folder was not refused")


def test_a_hosts_reapers_are_forks_of_its_agent_which_the_runs_outlive(tmp_path):
    """Not of the host: a living reaper that shares the host's pages makes the host copy each page it
    writes. The agent ends with the host's end of its pipe; the run goes on, and is still told."""
    node = LocalNode(str(tmp_path / "home"))
    pid, start, console, exit_file = launch(node, tmp_path, "import time; print('ready', flush=True); time.sleep(300)")
    try:
        agent = parent_of(pid)
        assert agent != os.getpid() and parent_of(agent) == os.getpid()
        assert "box_agent.py" in open(f"/proc/{agent}/cmdline").read()
        wait_for(lambda: b"ready" in console.read_bytes(), "the run started")
        node.close()
        assert not os.path.exists(f"/proc/{agent}")  # the agent ended, and was reaped
        assert node.alive(pid, start)  # from /proc now: the agent that would tell is gone
        second, second_start, _, second_exit = launch(  # by a new agent
            node, tmp_path / "code", "raise SystemExit(3)")
        wait_for(lambda: not node.alive(second, second_start), "the second run ended")
        assert second_exit.read_text().split("\n")[0] == "3"
    finally:
        node.kill_group(pid, signal.SIGKILL)
    wait_for(lambda: not node.alive(pid, start), "the killed run ended")
    node.close()


def test_runs_launched_at_once_from_many_threads_share_one_agent_and_all_run(tmp_path):
    """A pool's `localhost` box launches from a thread per slot: the first launches at once each
    started an agent, each start closing the one before under the other threads (their runs ended
    in error: "this machine's agent ended: Bad file descriptor")."""
    import threading

    node = LocalNode(str(tmp_path / "home"))
    together = threading.Barrier(6)
    launched, failures = {}, []
    release = tmp_path / "release"
    script = ("import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.02)\n"
              "raise SystemExit(int(sys.argv[2]))")

    def launch_one(k):
        folder = tmp_path / f"run{k}"
        folder.mkdir()
        together.wait()
        try:
            launched[k] = node.launch([sys.executable, "-c", script, str(release), str(k)], str(folder), {},
                                      str(folder / "console.log"), str(folder / "exit_code"))
        except OSError as exc:
            failures.append(exc)

    threads = [threading.Thread(target=launch_one, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and len(launched) == 6
    # every reaper is a child of the node's one agent, which is still serving
    assert {parent_of(pid) for pid, _ in launched.values()} == {node._agent_process.pid}
    release.touch()
    for k in range(6):
        exit_file = tmp_path / f"run{k}" / "exit_code"
        wait_for(exit_file.exists, f"run {k} ended")
        assert exit_file.read_text().split("\n")[0] == str(k)
    node.close()
