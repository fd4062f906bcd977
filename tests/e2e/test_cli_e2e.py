"""The CLI end to end on the embedded default: real host process, real run wrappers, real scripts."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xt_submit.runtime.host_control import HostLock

from support.cli_project import SCRIPT


def test_grid_sweep_waits_and_reports_runs(project):
    out = project.json("run", "--wait", "--tags", "note=first,baseline", "train.py", "--lr=[0.1,0.2,0.3]", "--opt=[sgd,adam]")
    assert out["status"] == "completed" and len(out["runs"]) == 6
    job = out["job"]
    runs = project.json("list", "runs", "--job", job)
    assert [r["name"] for r in runs] == [f"{job.replace('job', 'run')}.{k}" for k in range(1, 7)]
    assert all(r["status"] == "completed" and r["exit_code"] == 0 for r in runs)
    assert {"name", "job", "status", "exit_code", "duration", "hparams", "metrics"} <= set(runs[0])
    assert runs[0]["tags"] == {"note": "first", "baseline": ""}
    assert {(r["hparams"]["lr"], r["hparams"]["opt"]) for r in runs} == {(lr, o) for lr in (0.1, 0.2, 0.3) for o in ("sgd", "adam")}
    for r in runs:
        assert r["metrics"]["loss"] == pytest.approx(r["hparams"]["lr"] * 10 / 3)
        assert r["duration"] >= 0
    by_loss = project.json("list", "runs", "--job", job, "--sort", "metrics.loss")
    losses = [r["metrics"]["loss"] for r in by_loss]
    assert losses == sorted(losses)
    desc = project.json("list", "runs", "--job", job, "--sort", "loss", "--reverse", "--last", "2")
    assert [r["metrics"]["loss"] for r in desc] == sorted(losses, reverse=True)[-2:]
    assert project.invoked() == sorted(r["name"] for r in runs)
    view = project.json("view", "run", runs[0]["name"])
    assert view["outputs"] == ["result.txt"]
    log = project.json("view", "log", runs[0]["name"])
    assert [e["event"] for e in log][:3] == ["created", "hparams", "queued"]
    assert {"started", "metrics", "ended"} <= {e["event"] for e in log}
    table = project.xt("list", "runs", "--job", job).stdout
    assert "completed" in table and "loss" in table


def test_failing_script_is_an_error_run_with_console_kept(project, reliability):
    result = project.xt("run", "--wait", "train.py", "--exit=3", check=False)
    assert result.returncode == 1
    (run,) = project.json("list", "runs")
    assert run["status"] == "error" and run["exit_code"] == 3
    console = project.xt("view", "console", run["name"]).stdout
    assert "training lr=0.1 opt=sgd" in console
    reliability.add("run faults: non-zero exit, SIGKILL, max-time (console, metrics and outputs kept)", runs=1)


def test_dry_run_plans_without_submitting(project):
    out = project.json("run", "--dry-run", "--max-runs=25", "train.py", "--lr=[0.01,0.03,0.1]", "--opt=[sgd,adam]",
                       "--beta=[$linspace(.1,.9,5)]")
    assert out["job"] is None and len(out["runs"]) == 25
    assert out["runs"][0]["command"].startswith("python train.py --lr=0.01 --opt=sgd --beta=0.1")
    assert not (project.home / "queue.db").exists()


@pytest.mark.parametrize("args,message", [
    (["run", "missing.py"], "xt: missing.py: no such script"),
    (["run", "train.py", "--lr=[0.1,"], "xt: --lr: expected"),
    (["run", "--target", "nope", "train.py"], "xt-services.target"),
    (["run", "--search-type", "bayes", "train.py", "--lr=[1,2]"], "search-type"),
    (["list", "runs", "--job", "jobX"], "xt: run list: 'jobX': expected a run (run7.2)"),
    (["view", "run", "run99.1"], "xt: run run99.1 not found in workspace ws1"),
])
def test_bad_input_is_one_line_nonzero_and_leaves_no_state(project, args, message):
    result = project.xt(*args, check=False)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (project.home / "storage" / "code").exists()


def test_config_option_is_accepted_after_the_subcommand(project):
    (project.root / "other.yaml").write_text("general:\n  experiment: elsewhere\n")
    out = project.json("run", "--dry-run", "--config", str(project.root / "other.yaml"), "train.py")
    assert out["runs"]
    result = project.xt("run", "--config", "missing.yaml", "train.py", check=False)
    assert result.returncode == 2 and result.stderr.strip() == "xt: missing.yaml: config file not found (named by --config)"


def test_bad_config_file_names_file_and_key(project):
    (project.code / "xt_config.yaml").write_text("general:\n  workspace: 3\n")
    result = project.xt("run", "train.py", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "xt: xt_config.yaml: general.workspace: expected str, got int"


def test_config_file_and_command_line_precedence(project):
    (project.code / "xt_config.yaml").write_text("general:\n  workspace: team\n  experiment: from-file\n")
    out = project.json("run", "--wait", "--experiment", "from-cli", "train.py")
    run = project.json("list", "runs", "--workspace", "team", "--job", out["job"])[0]
    assert run["experiment"] == "from-cli" and run["workspace"] == "team"
    assert project.json("list", "runs", "--workspace", "ws1") == []  # nothing in the built-in default


def test_killing_the_host_mid_job_loses_and_repeats_no_run(project, reliability):
    out = project.json("run", "--concurrent", "2", "train.py", "--lr=[0.1,0.2,0.3]", "--opt=[sgd,adam]", "--sleep=1.5")
    deadline = time.time() + 60
    while time.time() < deadline:
        statuses = [r["status"] for r in project.json("list", "runs", "--job", out["job"])]
        if statuses.count("running") == 2:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"runs never started: {statuses}")
    os.kill(project.host_pid(), signal.SIGKILL)
    time.sleep(2.0)  # the two running runs finish while no host is alive
    project.xt("serve", "--idle-exit", "1", timeout=120)
    runs = project.json("list", "runs", "--job", out["job"])
    assert [r["status"] for r in runs] == ["completed"] * 6
    assert project.invoked() == sorted(r["name"] for r in runs)  # each ran exactly once
    assert project.json("view", "job", out["job"])["status"] == "completed"
    reliability.add("host killed (SIGKILL) mid-job, then restarted", host_kills=1, runs=6, lost=0, run_twice=0)


def test_cancel_job_stops_running_and_queued_runs(project):
    out = project.json("run", "--concurrent", "1", "train.py", "--lr=[0.1,0.2,0.3]", "--sleep=60")
    deadline = time.time() + 60
    while project.json("list", "runs", "--status", "running") == [] and time.time() < deadline:
        time.sleep(0.1)
    project.xt("cancel", "job", out["job"])
    deadline = time.time() + 60
    while time.time() < deadline:
        runs = project.json("list", "runs", "--job", out["job"])
        if runs[0]["exit_code"] is not None:  # the started run was stopped and reported by its node
            break
        time.sleep(0.2)
    assert [r["status"] for r in runs] == ["cancelled"] * 3
    assert runs[0]["exit_code"] == -15 and runs[0]["reason"] == "cancelled by request"
    assert project.json("view", "job", out["job"])["status"] == "cancelled"
    assert len(project.invoked()) == 1
    assert "training lr=0.1" in project.xt("view", "console", runs[0]["name"]).stdout


def test_max_time_ends_the_run_as_error(project, reliability):
    # its first line comes before any import (a loaded machine starts Python slowly), well before 5 s
    (project.code / "slow.py").write_text("print('training started', flush=True)\nimport time\ntime.sleep(600)\n")
    project.xt("run", "--wait", "--max-time", "5", "slow.py", check=False, timeout=120)
    (run,) = project.json("list", "runs")
    assert run["status"] == "error" and "max-time" in run["reason"]
    assert "training started" in project.xt("view", "console", run["name"]).stdout
    reliability.add("run faults: non-zero exit, SIGKILL, max-time (console, metrics and outputs kept)", runs=1)


def test_zip_dropped_in_uploads_becomes_a_job(project):
    import zipfile

    manifest = {"workspace": "ws1", "experiment": "dropped", "script": "train.py", "command": "python train.py",
                "hp_space": {"lr": [0.5, 0.6]}}
    uploads = project.home / "storage" / "uploads"
    uploads.mkdir(parents=True)
    with zipfile.ZipFile(uploads / "drop.zip.part", "w") as archive:
        archive.writestr("xt_manifest.json", json.dumps(manifest))
        archive.writestr("train.py", SCRIPT)
    os.rename(uploads / "drop.zip.part", uploads / "drop.zip")
    project.xt("serve", "--idle-exit", "3", timeout=120)
    runs = project.json("list", "runs")
    assert [(r["experiment"], r["status"], r["hparams"]["lr"]) for r in runs] == [
        ("dropped", "completed", 0.5), ("dropped", "completed", 0.6)]


def test_entry_points_are_installed(project):
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "xt").exists() and (bin_dir / "xt-submit").exists()
    result = subprocess.run([str(bin_dir / "xt-submit"), "--dry-run", "--json", "train.py", "--lr=[1,2]"],
                            cwd=project.code, env=project.env, capture_output=True, text=True)
    assert len(json.loads(result.stdout)["runs"]) == 2


def test_config_create_writes_a_loadable_starter(project):
    project.xt("config", "--create")
    assert (project.code / "xt_config.yaml").exists()
    assert project.xt("config", "--create", check=False).returncode == 2  # never overwrites
    assert project.json("run", "--dry-run", "train.py")["runs"]


def test_admin_reindex_rebuilds_what_list_shows(project):
    out = project.json("run", "--wait", "train.py", "--lr=[0.1,0.2]")
    before = project.json("list", "runs")
    project.stop_host()  # however long its idle exit: a host of the test's own serves the home now
    serving = HostLock(project.home)
    assert serving.acquire()
    try:
        assert project.xt("admin", "reindex", check=False).returncode == 2  # refuses while a host serves this home
    finally:
        serving.release()
        serving.close()
    for suffix in ("", "-wal", "-shm"):  # the index is lost entirely
        path = project.home / f"stats.db{suffix}"
        if path.exists():
            path.unlink()
    result = project.xt("admin", "reindex")
    assert "ws1: reindexed 1 jobs, 2 runs, 12 metric records" in result.stdout
    assert project.json("list", "runs") == before
    assert project.json("view", "job", out["job"])["status"] == "completed"


def test_a_project_whose_modules_share_xts_names_runs_as_any_other(project):
    """A user's own handlers/, messages.py, bootstrap.py or sqlite3.py never reach XT's host,
    wrapper or CLI: each would stop the process that imported it (the host used to import the
    project's handlers/, and the job was never dispatched; sqlite3.py stands for any module the
    host imports that a project may shadow, as the host once ran in the project's folder)."""
    for module in ("handlers/__init__.py", "messages.py", "bootstrap.py", "sqlite3.py"):
        path = project.code / module
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"raise SystemExit('the project\\'s own {module} was imported by XT')\n")
    xt = Path(sys.executable).with_name("xt")  # the console script a user types (no cwd on its path)
    result = subprocess.run([str(xt), "run", "--wait", "--json", "train.py", "--lr=[0.1,0.2]"], cwd=project.code,
                            env=project.env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr + (project.home / "host.out").read_text()
    assert json.loads(result.stdout)["counts"] == {"completed": 2}
    assert "was imported by XT" not in (project.home / "host.out").read_text()


def test_xts_options_are_never_abbreviated_and_after_the_script_they_are_the_scripts(project):
    """`--t=[1,2]` is the script's sweep (argparse took it for --target or --tags); `--concurrent 3`
    after the script goes to the script, with a warning that says so."""
    planned = project.json("run", "--dry-run", "train.py", "--t=[1,2]")["runs"]
    assert [run["hparams"] for run in planned] == [{"t": 1}, {"t": 2}]
    result = project.xt("run", "--dry-run", "train.py", "--concurrent", "3", "--lr=[0.1]")
    assert result.stderr.strip() == ("xt: warning: --concurrent after train.py goes to the script, not to xt run; "
                                     "put xt's options before the script")
    assert result.stdout.splitlines()[1].strip() == "1  python train.py --concurrent 3 --lr=0.1"
    sweep = project.xt("run", "--dry-run", "train.py", "--seed=[1,2]")  # a sweep named like an option: no warning
    assert sweep.stderr == "" and "2 runs planned" in sweep.stdout


def test_a_read_only_command_ends_once_its_output_is_out(project):
    """`xt list` skips the interpreter's teardown (cli/main.run): all of its output still arrives,
    the SQLite files are left as they were (no checkpoint on close, no -wal deleted to be made again),
    and output to a pipe nobody reads ends with 141 and nothing on stderr."""
    job = project.json("run", "--wait", "train.py", "--lr=[0.1,0.2,0.3]")["job"]
    project.stop_host()  # killed: it leaves its -wal, as only a last close would remove it
    wal = project.home / "stats.db-wal"
    assert wal.exists()
    runs = project.json("list", "runs", "--job", job)
    assert sorted(r["hparams"]["lr"] for r in runs) == [0.1, 0.2, 0.3]
    assert wal.exists()
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before a byte is written
    try:
        gone = subprocess.run([sys.executable, "-m", "xt_submit.cli", "list", "runs"], cwd=project.code,
                              env=project.env, stdout=write_end, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    assert (gone.returncode, gone.stderr) == (141, b"")


def test_what_people_read_reads_well(project):
    """--version; no progress bar where stderr is not a terminal; values as name=value and seconds
    with their unit, never Python's dict spelling; view console --json is JSON; a closed pipe ends quietly."""
    assert project.xt("--version").stdout.strip().startswith("xt 0.")
    result = project.xt("run", "--wait", "train.py", "--lr=[0.1,0.2]", "--opt=[sgd]")
    assert "run/s" not in result.stderr and "%|" not in result.stderr and "\r" not in result.stderr
    (first, _) = project.json("list", "runs")
    shown = project.xt("view", "run", first["name"]).stdout
    assert "{'" not in shown and "hparams: lr=0.1, opt=sgd" in " ".join(shown.split())
    from xt_submit.cli.reports import format_duration

    assert f"duration: {format_duration(first['duration'])}" in " ".join(shown.split())
    console = project.json("view", "console", first["name"])
    assert console["run"] == first["name"] and "training lr=0.1 opt=sgd" in console["console"]
    reader = subprocess.Popen([sys.executable, "-m", "xt_submit.cli", "run", "--dry-run", "train.py",
                               "--lr=[$linspace(0,1,20000)]"], cwd=project.code, env=project.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout.read(100)  # then `head` goes away
    reader.stdout.close()
    stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 141 and stderr == ""
