"""Resource bounds through the CLI: what a typo in a sweep or a filter costs (issue 16, class 5)."""
import resource
import subprocess
import sys
from pathlib import Path

from xt_submit.domain import layout
from xt_submit.runtime.wrapper import STATE_LOG

MEMORY_LIMIT = 1536 * 1024**2  # address space: ample for the CLI, far below a 10^12-run plan


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def test_a_sweep_of_a_trillion_runs_is_refused_in_bounded_memory(project, reliability):
    tried = 0
    for args in (["--a=[$linspace(0,1,1000000)]", "--b=[$linspace(0,1,1000000)]"],
                 [f"--p{n}=[{','.join(str(v) for v in range(100))}]" for n in range(4)]):
        result = subprocess.run([sys.executable, "-m", "xt_submit.cli", "run", "--dry-run", "train.py", *args],
                                cwd=project.code, env=project.env, capture_output=True, text=True, timeout=120,
                                preexec_fn=_limited)
        tried += 1
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "runs, more than the limit of 100,000 per job" in line and "MemoryError" not in line
    assert project.json("list", "jobs") == []  # nothing submitted
    reliability.add("resource bounds: sweeps planning 10^8 and 10^12 runs (refused in 1.5 GB)", sweeps=tried)


def test_a_catastrophic_filter_regex_fails_in_seconds_not_minutes(project, reliability):
    import time

    (project.code / "train.py").write_text("from xt_submit import Run\nRun().log_hparams({'name': 'a' * 40 + '!'})\n")
    project.xt("run", "--wait", "train.py")
    started = time.monotonic()
    result = project.xt("list", "runs", "--filter", "hparams.name:regex:^(a|aa)+$", check=False)
    took = time.monotonic() - started
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "took more than 1 s on one value" in result.stderr and took < 60
    ok = project.json("list", "runs", "--filter", "hparams.name:regex:^a+!$")
    assert len(ok) == 1  # an ordinary pattern still matches
    reliability.add("resource bounds: a --filter regex that backtracks without end (stopped after 1 s)", patterns=1)


def _peak_rss_mb(pid):
    """The process's peak resident memory so far (VmHWM), in MB."""
    from pathlib import Path

    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


BURST = '''
import sys
from xt_submit import Run
run = Run()
run.log_metrics({"step": 1, "loss": 0.5})
line = b"x" * 1023 + b"\\n"
for _ in range(%d):
    sys.stdout.buffer.write(line)
sys.stdout.flush()
run.log_metrics({"step": 2, "loss": 0.25})
'''


def test_a_console_burst_is_capped_and_the_host_stays_small(project, reliability):
    cap = 20 * 1024**2
    project.env.update(XT_CONSOLE_MAX_BYTES=str(cap), XT_HOST_IDLE_EXIT="60")  # the host stays up to be measured
    (project.code / "burst.py").write_text(BURST % (300 * 1024))  # 300 MB printed at once
    submitted = project.json("run", "--wait", "burst.py")
    run = project.json("list", "runs", "--job", submitted["job"])[0]
    assert run["status"] == "completed", run
    assert run["metrics"]["loss"] == 0.25  # the run log is never capped: the last metric arrived
    (host,) = project.host_pids()
    host_mb = _peak_rss_mb(host)
    assert host_mb < 150, f"the host peaked at {host_mb:.0f} MB shipping a 300 MB console"
    stored = (project.home / "storage" / layout.console_key("ws1", run["name"])).read_bytes()
    note = f"\n[xt] console truncated at {cap} bytes (XT_CONSOLE_MAX_BYTES); the rest was not stored\n".encode()
    assert stored == (b"x" * 1023 + b"\n") * (cap // 1024) + note
    # the run is reported: its unpacked code and the 300 MB local console are gone from XT_HOME (the
    # supervisor's own small records stay)
    left = [p.relative_to(project.home).as_posix() for p in (project.home / "nodes").rglob("*")]
    assert left and not [p for p in left if "/code" in p or p.endswith((".log", ".jsonl", "burst.py"))
                         and not p.endswith("/" + STATE_LOG)], left
    reliability.add("resource bounds: a 300 MB console burst (stored up to the cap, host memory bounded)",
                    console_mb_printed=300, host_peak_rss_mb=round(host_mb, 1))


def test_view_console_of_a_huge_console_streams_in_bounded_memory(project, reliability):
    project.xt("run", "--wait", "train.py")
    key = project.home / "storage" / layout.console_key("ws1", "run1.1")
    block = ("ünï " * 256 + "\n").encode()
    with open(key, "wb") as f:
        for _ in range(200 * 1024**2 // len(block)):
            f.write(block)
    size = key.stat().st_size
    out = project.root / "console.out"
    # the command's own peak (VmHWM, fresh at exec): wait4's would count this test process's size too
    own_peak = Path(__file__).resolve().parents[2] / "bench" / "own_peak.py"
    peak_file = project.root / "peak_mb"
    for extra in ([], ["--json"]):
        with open(out, "wb") as sink:
            child = subprocess.run([sys.executable, str(own_peak), str(peak_file), "-m", "xt_submit.cli", "view",
                                    "console", *extra, "run1.1"], cwd=project.code, env=project.env, stdout=sink,
                                   stderr=subprocess.PIPE)
        assert child.returncode == 0, child.stderr
        peak_mb = float(peak_file.read_text())
        assert peak_mb < 150, f"xt view console {' '.join(extra)} peaked at {peak_mb:.0f} MB for a {size >> 20} MB console"
        with open(out, "rb") as f:  # only its start: a forked child counts this process's memory too
            start = f.read(len(block))
        if not extra:
            assert out.stat().st_size == size and start == block
        else:
            assert start.startswith(b'{\n  "run": "run1.1",\n  "status": "completed",\n  "console": "\\u00fcn')
    reliability.add("resource bounds: xt view console of a 200 MB console (text and --json)", peak_rss_mb=round(peak_mb, 1))
