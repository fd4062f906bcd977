"""Resource bounds through the CLI: what a typo in a sweep or a filter costs (issue 16, class 5)."""
import resource
import subprocess
import sys

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
