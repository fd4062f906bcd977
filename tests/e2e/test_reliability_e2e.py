"""Run faults, secrets and load, end to end through the real CLI, host and runs."""
import json
import sqlite3
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


KILLER = '''
import os, signal
from xt_submit import Run
run = Run()
run.log_metrics({"loss": 0.5})
run.close()
os.makedirs(os.environ["XT_OUTPUT_DIR"], exist_ok=True)
open(os.path.join(os.environ["XT_OUTPUT_DIR"], "partial.txt"), "w").write("half an epoch")
print("about to be killed", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
'''


def test_killed_script_is_an_error_with_console_metrics_and_outputs_kept(project, reliability):
    (project.code / "killer.py").write_text(KILLER)
    assert project.xt("run", "--wait", "killer.py", check=False).returncode == 1
    (run,) = project.json("list", "runs")
    assert run["status"] == "error" and run["exit_code"] == -9 and run["metrics"] == {"loss": 0.5}
    assert "about to be killed" in project.xt("view", "console", run["name"]).stdout
    assert project.json("view", "run", run["name"])["outputs"] == ["partial.txt"]
    reliability.add("run faults: non-zero exit, SIGKILL, max-time (console, metrics and outputs kept)", runs=1)


def test_heartbeats_flow_while_a_run_is_alive(project):
    project.env.update(XT_HEARTBEAT_SECONDS="0.2")
    out = project.json("run", "train.py", "--sleep=2")
    deadline = time.time() + 30
    beat = None
    while time.time() < deadline and beat is None:
        with sqlite3.connect(project.home / "stats.db") as db:
            beat = db.execute("SELECT heartbeat FROM runs WHERE job = ?", (out["job"],)).fetchone()[0]
        time.sleep(0.1)
    assert beat is not None
    project.wait_job(out["job"])
    (run,) = project.json("list", "runs", "--job", out["job"])
    assert run["status"] == "completed"


SECRETS = ["AccountKey=cGxhbnRlZC1zZWNyZXQtc3RvcmFnZS1rZXk=", "planted-client-secret-7f3a9c", "planted-mongo-pw-51ce"]
CONFIG_WITH_SECRETS = f"""
external-services:
  team-storage: {{type: storage, connection-string: "DefaultEndpointsProtocol=https;AccountName=team;{SECRETS[0]}"}}
  team-login: {{type: service-principal, client-id: abc, client-secret: "{SECRETS[1]}"}}
  team-mongo: {{type: mongo, connection-string: "mongodb://xt:{SECRETS[2]}@db.example:27017"}}
"""
DUMPER = '''
import json, os, sys
os.makedirs(os.environ["XT_OUTPUT_DIR"], exist_ok=True)
json.dump({"env": dict(os.environ), "argv": sys.argv}, open(os.path.join(os.environ["XT_OUTPUT_DIR"], "env.json"), "w"))
print(json.dumps(dict(os.environ)))
'''


def _scan(root: Path, secrets):
    """Every file below root, and every member of every zip, searched for each secret."""
    hits = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        blobs = [(str(path), data)]
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(path) as archive:
                blobs += [(f"{path}!{name}", archive.read(name)) for name in archive.namelist()]
        hits += [(where, s) for where, blob in blobs for s in secrets if s.encode() in blob]
    return hits


def test_planted_secrets_appear_nowhere(project, reliability):
    (project.code / "xt_config.yaml").write_text(CONFIG_WITH_SECRETS)
    (project.code / "dump.py").write_text(DUMPER)
    outputs = [project.xt("run", "--wait", "dump.py", "--lr=[1,2]"),
               project.xt("list", "runs"), project.xt("list", "jobs", "--json"),
               project.xt("view", "run", "run1.1"), project.xt("view", "log", "run1.1"),
               project.xt("view", "console", "run1.1"), project.xt("view", "job", "job1"),
               # errors that touch the configuration
               project.xt("run", "--target", "team-storage", "dump.py", check=False),
               project.xt("run", "--workspace", SECRETS[0], "dump.py", check=False)]
    (project.code / "xt_config.yaml").write_text(CONFIG_WITH_SECRETS + f"general:\n  workspace: {SECRETS[0]!r}\n")
    outputs.append(project.xt("list", "runs", check=False))
    assert all(o.returncode == 2 for o in outputs[-3:])
    text = "\n".join(o.stdout + o.stderr for o in outputs)
    assert [s for s in SECRETS if s in text] == []
    env_dump = json.loads((project.home / "storage/workspaces/ws1/runs/run1.1/output/env.json").read_text())
    assert env_dump["env"]["XT_RUN_NAME"] == "run1.1"  # the scan below did look at the run's environment
    assert _scan(project.home, SECRETS) == []  # storage, code snapshots, manifests, run logs, stats, host log
    reliability.add("secrets planted in config: scanned logs, manifests, snapshots, stats, run env, errors",
                    secrets_planted=len(SECRETS), hits=0)


LOAD_SCRIPT = "import os\nopen(os.environ['INVOCATIONS'], 'a').write(os.environ['XT_RUN_NAME'] + '\\n')\n"


LOAD_JOBS = 100  # of 5 runs each, 8 submitters at once (200 before: the suite's budget, not the design, set it)


def test_load_100_jobs_of_5_runs_submitted_concurrently(project, reliability):
    (project.code / "tiny.py").write_text(LOAD_SCRIPT)
    project.env.update(XT_HOST_IDLE_EXIT="5")
    start = time.time()

    def submit(i):
        return project.json("run", "--concurrent", "2", "tiny.py", "--i=[1,2,3,4,5]", f"--job-index={i}")["job"]

    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(submit, range(LOAD_JOBS)))
    assert len(set(jobs)) == LOAD_JOBS
    host_pid = project.host_pid()
    peak_kb = 0
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            status = Path(f"/proc/{host_pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError):
            pass
        with sqlite3.connect(project.home / "stats.db") as db:
            done = db.execute("SELECT count(*) FROM runs WHERE status IN ('completed', 'error', 'cancelled')").fetchone()[0]
        if done == 5 * LOAD_JOBS:
            break
        time.sleep(0.5)
    elapsed = time.time() - start
    runs = project.json("list", "runs")
    assert len(runs) == 5 * LOAD_JOBS and {r["status"] for r in runs} == {"completed"}
    invoked = project.invoked()
    assert len(invoked) == 5 * LOAD_JOBS and len(set(invoked)) == 5 * LOAD_JOBS  # each run ran exactly once
    with sqlite3.connect(project.home / "queue.db") as db:
        assert db.execute("SELECT count(*) FROM messages WHERE queue LIKE '%DeadLetterQueue'").fetchone()[0] == 0
    reliability.add(f"load: {LOAD_JOBS} jobs x 5 runs submitted concurrently (8 at a time)", jobs=LOAD_JOBS,
                    runs=5 * LOAD_JOBS, lost=0,
                    run_twice=0, dead_lettered=0, seconds=round(elapsed, 1), host_peak_rss_mb=round(peak_kb / 1024, 1))
