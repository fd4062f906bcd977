"""The local host's lock and its restart after a `kill -9` (issue 16), through the real CLI, host and
runs: host.lock names the host and no client that checked it; a command that reads run state starts
a host again when the home has unfinished work, and none when it has not."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

from xt_submit.runtime import host_control

# a run that waits for the test: started (its marker), then released (the test's file), then it ends
GATED = textwrap.dedent('''
    import os, sys, time
    started, release, ended = sys.argv[1:4]
    open(started, "w").close()
    for _ in range(6000):
        if os.path.exists(release):
            break
        time.sleep(0.02)
    with open(ended, "w") as f:
        f.write(repr(time.time()))
''')


def wait_until(condition, what, seconds=120.0):
    """A bound only for a failure: the condition is what the test checks, never how fast it holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def job_status(project, job):
    """Read stats.db directly: unlike `xt view`, this read starts no host."""
    with sqlite3.connect(project.home / "stats.db") as db:
        row = db.execute("SELECT status FROM jobs WHERE name = ?", (job,)).fetchone()
    return row[0] if row else None


def hosts(project):
    """The host processes serving the project's home. Not Project.host_pids: a local run's reaper is a
    fork of its host (same command line, /proc comm "xt-reaper"), and killing it would kill the run."""
    found = set()
    for pid in project.host_pids():
        try:
            if open(f"/proc/{pid}/comm").read().strip() != "xt-reaper" and not _zombie(pid):
                found.add(pid)
        except OSError:
            continue
    return found


def _zombie(pid):
    return open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[-1].startswith("Z")


def kill_host(project):
    """kill -9 of the host alone: its runs go on without their supervisor."""
    for pid in hosts(project):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not hosts(project), "the killed host is gone")


def lock_text(project):
    return (project.home / host_control.LOCK_FILE).read_text()


def gated_run(project):
    (project.code / "gated.py").write_text(GATED)
    marks = {name: project.root / name for name in ("started", "release", "ended")}
    out = project.json("run", "gated.py", *map(str, marks.values()))
    wait_until(marks["started"].exists, "the run started")
    return out["job"], marks


def test_host_lock_names_the_host_and_a_client_checking_it_never_writes_it(project):
    job, marks = gated_run(project)
    host = int(lock_text(project))
    assert host in hosts(project)
    for _ in range(3):  # clients checking whether a host is serving, from other processes
        checked = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from xt_submit.runtime"
                                  " import host_control; print(host_control.host_running(Path(sys.argv[1])))",
                                  str(project.home)], capture_output=True, text=True, check=True)
        assert checked.stdout.strip() == "True"
    project.xt("list", "runs")
    assert lock_text(project) == str(host)
    marks["release"].write_text("")
    wait_until(lambda: job_status(project, job) == "completed", "the job ended")
    wait_until(lambda: not hosts(project), "the idle host exited")
    assert lock_text(project) == ""  # no host: the file names none (not the last client that probed it)
    assert not host_control.host_running(project.home) and lock_text(project) == ""  # a probe with no host writes nothing


def test_after_the_host_is_killed_a_read_command_starts_it_again_and_the_run_ends(project, reliability):
    job, marks = gated_run(project)
    kill_host(project)
    marks["release"].write_text("")
    wait_until(marks["ended"].exists, "the run ended while no host was alive")
    assert job_status(project, job) == "running"  # nobody has seen its end yet
    project.xt("list", "runs")
    # the restarted host adopts the run and records its end (before the fix nothing ever did: stale for ever)
    wait_until(lambda: job_status(project, job) == "completed", "a host was started again and the job ended")
    (run,) = project.json("list", "runs")
    assert run["status"] == "completed" and run["exit_code"] == 0
    reliability.add("host killed (SIGKILL) while its run goes on; the next `xt list runs` starts a host again",
                    host_kills=1, runs=1, lost=0, left_stale=0)


def test_a_run_that_ended_while_no_host_was_alive_ends_when_it_ended_not_when_a_host_noticed(project, reliability):
    job, marks = gated_run(project)
    kill_host(project)
    marks["release"].write_text("")
    wait_until(lambda: any(path.read_text() for path in (project.home / "nodes").rglob("exit_code")),
               "the run's reaper wrote its exit code while no host was alive")
    restarted_at = time.time()
    project.xt("list", "runs")
    wait_until(lambda: job_status(project, job) == "completed", "a host was started again and the job ended")
    (run,) = project.json("list", "runs")
    assert float(marks["ended"].read_text()) <= run["ended"] < restarted_at  # the downtime is not the run's
    reliability.add("host killed (SIGKILL); its run ended meanwhile: the run's recorded end is its own, not the "
                    "restarted host's", host_kills=1, runs=1, downtime_counted=0)


def test_a_read_command_starts_no_host_when_nothing_is_unfinished(project):
    job, marks = gated_run(project)
    marks["release"].write_text("")
    wait_until(lambda: job_status(project, job) == "completed", "the job ended")
    wait_until(lambda: not hosts(project), "the idle host exited")
    for command in (("list", "runs"), ("list", "jobs"), ("view", "job", job), ("view", "run", "run1.1"),
                    ("monitor", job)):
        project.xt(*command)
        assert not hosts(project), command


def test_ensure_host_for_unfinished_work_starts_one_only_for_waiting_messages_or_tasks(tmp_path, monkeypatch):
    from xt_submit.bootstrap import embedded
    from xt_submit.domain.messages import EVENTS_QUEUE

    parts = embedded(tmp_path / "home")
    started = []
    monkeypatch.setattr(host_control, "ensure_host", lambda home, *a, **k: started.append(home))
    assert not host_control.ensure_host_for_unfinished_work(parts) and started == []
    parts.queue.send(EVENTS_QUEUE, [b"{}"])
    [message] = parts.queue.receive(EVENTS_QUEUE)
    parts.queue.abandon(message, "transient", delay_seconds=3600)  # a retry waiting: unfinished too
    assert host_control.ensure_host_for_unfinished_work(parts) and started == [parts.home]
    held = host_control.HostLock(parts.home)
    assert held.acquire()  # a host serving already: nothing started
    try:
        assert not host_control.ensure_host_for_unfinished_work(parts) and started == [parts.home]
        assert lock_text_of(parts.home) == str(os.getpid())
    finally:
        held.release()


def lock_text_of(home):
    return (home / host_control.LOCK_FILE).read_text()


def test_a_client_asking_again_while_its_host_starts_starts_no_second_one(tmp_path, monkeypatch):
    """`xt run` asks for a host with each look at the dispatch; a host takes a few hundred ms to take
    its lock, and each extra one started meanwhile only competed for the cores and lost."""
    from xt_submit.bootstrap import embedded

    home = embedded(tmp_path / "home").home
    starts = tmp_path / "starts"
    counting = tmp_path / "python"  # a real interpreter start, counted: what ensure_host starts
    counting.write_text(f"#!/bin/sh\necho started >> {starts}\nexec {sys.executable} \"$@\"\n")
    counting.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(counting))
    monkeypatch.setattr(host_control, "_started", {}, raising=False)
    deadline = time.monotonic() + 60
    while not host_control.host_running(home):
        assert time.monotonic() < deadline, "no host took the lock"
        host_control.ensure_host(home, idle_exit_seconds=0.5)
        time.sleep(0.01)
    for _ in range(5):
        host_control.ensure_host(home, idle_exit_seconds=0.5)
    assert starts.read_text().count("started") == 1
    wait_until(lambda: not host_control.host_running(home), "the idle host exited")


    def asked_again():  # once that one's process has ended (not only let go of its lock), a new one is started
        host_control.ensure_host(home, idle_exit_seconds=0.5)
        return starts.read_text().count("started") == 2

    wait_until(asked_again, "a second host started")
    wait_until(lambda: not host_control.host_running(home), "the second idle host exited")
