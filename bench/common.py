"""Shared helpers for the benchmarks: repeated timing with medians, peak memory, result rows."""
from __future__ import annotations

import bisect
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

OWN_PEAK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "own_peak.py")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], repeat: int, setup: Callable[[], object] = lambda: None) -> Tuple[float, List[float]]:
    """Median wall time of `fn` over `repeat` runs, each after an untimed `setup`."""
    samples = []
    for _ in range(repeat):
        setup()
        samples.append(timed(fn))
    return statistics.median(samples), samples


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB): the bench with its fixtures, so
    it is reported as bench_rss_mb; a measured operation's own peak comes from run_child."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Child(tuple):
    """(wall seconds, peak RSS in MB, stdout) of one command run in its own process."""

    seconds = property(lambda self: self[0])
    peak_rss_mb = property(lambda self: self[1])
    stdout = property(lambda self: self[2])


def run_child(command: Sequence[str], *, own_peak: bool = True, **popen) -> Child:
    """Run `command` to its end in a process of its own: (seconds, peak RSS, stdout). A Python
    command's peak is its own, read by itself at exit (own_peak.py: VmHWM starts afresh at exec);
    any other command's is wait4's, which also counts the bench's size at the spawn. `own_peak=False`
    leaves a Python command unwrapped (start-up timings), its peak then wait4's too."""
    peak_path = None
    if own_peak and command[0] == sys.executable:
        fd, peak_path = tempfile.mkstemp(prefix="xt-bench-peak-")
        os.close(fd)
        command = [sys.executable, OWN_PEAK, peak_path, *command[1:]]
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(list(command), stdout=out, stderr=err, **popen)
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(), err.read().decode()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}: {stderr[-2000:]}")
        peak = usage.ru_maxrss / 1024
        if peak_path:
            with open(peak_path) as f:
                peak = float(f.read())
    finally:
        if peak_path:
            os.unlink(peak_path)
    return Child((seconds, peak, stdout))


def user_env(root, **extra: str) -> Dict[str, str]:
    """The environment of a command as a user runs it: byte-compiled modules are cached (this
    sandbox sets PYTHONDONTWRITEBYTECODE, which would add compiling every module to each start),
    in a cache under `root` so the source tree is left as it is."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = os.path.join(str(root), "pycache")
    env.update(extra)
    return env


KEEP_SCRATCH = "XT_BENCH_KEEP_SCRATCH"  # set by run_all.py, which removes every case's scratch at its end


def remove_scratch(path, host_exit_seconds: float = 15.0) -> None:
    """A case's scratch folder removed, once the hosts serving homes in it have exited (one still
    idling would make its databases again behind the removal), unless run_all.py keeps it until
    every case is measured: on a file system whose inode allocator skips recently deleted inodes
    (ext4 without a journal, as on the machine these figures come from), removing thousands of
    files makes the next minutes' file creations dearer, and the next case would pay for this
    one's cleanup."""
    if os.environ.get(KEEP_SCRATCH):
        return
    from xt_submit.runtime.host_control import host_running

    deadline = time.monotonic() + host_exit_seconds
    for lock in Path(path).glob("**/host.lock"):
        while host_running(lock.parent) and time.monotonic() < deadline:
            time.sleep(0.1)
    shutil.rmtree(path, ignore_errors=True)


def project_with(prefix: str, script: str, text: str) -> Tuple[Path, Path]:
    """(a new scratch root, its project folder holding one script): what a sweep bench submits."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    project = root / "project"
    project.mkdir()
    (project / script).write_text(text)
    return root, project


def interleaved(cases: Dict[str, Callable[[], float]], repeat: int, warmup: int = 1) -> Dict[str, List[float]]:
    """Each case's samples, taken in turn (A B A B ...), so a machine's load drifting during the
    bench falls on every case alike; `warmup` untimed rounds first (page cache, .pyc files)."""
    samples: Dict[str, List[float]] = {name: [] for name in cases}
    for round_number in range(warmup + repeat):
        for name, case in cases.items():
            value = case()
            if round_number >= warmup:
                samples[name].append(value)
    return samples


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def emit(result: dict) -> None:
    """Benchmarks run in their own process (a clean peak-memory reading); the result is the last stdout line."""
    result["bench_rss_mb"] = round(peak_rss_mb(), 1)
    result.setdefault("peak_rss_mb", result["bench_rss_mb"])  # a bench measuring in a child sets its own
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def sweep_breakdown(cli_argv: Sequence[str], *, home: str, cwd, env: Dict[str, str], runs: int) -> Dict[str, float]:
    """Where one sweep's time goes, per run: the host started here first (so its CPU can be read from
    /proc before it exits), then `cli_argv` (an `xt run --wait`), which finds it serving. Returns the
    host's own CPU per run, its children's (the runs: reapers and scripts, when they are this machine's),
    the CLI's CPU, and the fixed cost around the runs: CLI start to the first run's start, and the
    last run's end to the CLI's exit (the runs' records' times); and how long a freed slot waits
    for its next run: from a run's end to the start of the run that follows it (the median)."""
    from xt_submit.runtime.host_control import host_running

    tick = os.sysconf("SC_CLK_TCK")
    host = subprocess.Popen([sys.executable, "-m", "xt_submit.entrypoints.host", home, "60"], cwd=home, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not host_running(Path(home)):
            if host.poll() is not None:
                raise RuntimeError(f"the host exited {host.returncode} before serving")
            time.sleep(0.02)
        begun = time.time()
        cli = subprocess.Popen(list(cli_argv), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(cli.pid, 0)
        finished = time.time()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(cli_argv)} failed: {cli.stderr.read().decode()[-2000:]}")
        cli.stderr.close()
        host_cpu, children_cpu = _cpu_seconds(host.pid, tick)
        # The host's living children (its agent, which forks and reaps the runs' reapers): their own CPU
        # apart, what they reaped with the runs
        agent_cpu = 0.0
        for child in _children(host.pid):
            own, reaped = _cpu_seconds(child, tick)
            agent_cpu += own
            children_cpu += reaped
    finally:
        host.terminate()
        host.wait()
    listed = subprocess.run([sys.executable, "-m", "xt_submit.cli", "list", "runs", "--all", "--json"], cwd=cwd,
                            env=env, capture_output=True, text=True, check=True)
    records = json.loads(listed.stdout)
    starts = [r["started"] for r in records if r.get("started")]
    ends = [r["ended"] for r in records if r.get("ended")]
    return {"host_cpu_ms_per_run": 1000 * host_cpu / runs, "agent_cpu_ms_per_run": 1000 * agent_cpu / runs,
            "slot_wait_ms": 1000 * slot_wait_seconds(starts, ends),
            "runs_cpu_ms_per_run": 1000 * children_cpu / runs,
            "cli_cpu_ms": 1000 * (usage.ru_utime + usage.ru_stime),
            "cli_start_to_first_run_s": min(starts) - begun if starts else float("nan"),
            "last_run_end_to_cli_exit_s": finished - max(ends) if ends else float("nan")}


def slot_wait_seconds(starts: Sequence[float], ends: Sequence[float]) -> float:
    """The median time from a run's end to the next start (a start once some run has ended fills the
    slot the latest end before it freed): the host's reaction, not the runs' own time. A start is its
    record's, taken as its supervisor begins (before the code is unpacked and the command launched),
    so this is the least a freed slot waits. NaN if no run started after another ended."""
    ends = sorted(ends)
    waits = []
    for start in sorted(starts):
        before = bisect.bisect_right(ends, start)
        if before:
            waits.append(start - ends[before - 1])
    return median(waits) if waits else float("nan")


def _cpu_seconds(pid: int, tick: int) -> Tuple[float, float]:
    """(its own CPU, its waited-for children's) from /proc, in seconds."""
    with open(f"/proc/{pid}/stat") as f:  # utime stime cutime cstime: fields 14-17
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def _children(pid: int) -> List[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def children_cpu_seconds() -> float:
    """CPU time of this process's ended and waited-for children so far (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
