"""Pool targets: sweeps on the team's own machines over SSH, against real OpenSSH servers on
loopback (tests/peers/ssh_boxes.py), driven through the real `xt` CLI."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from peers.ssh_boxes import free_port

POOL_SCRIPT = textwrap.dedent('''
    import argparse, getpass, json, os, sys, time
    from xt_submit import Run

    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--sleep", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    started = time.time()
    run = Run(flush_seconds=0.1)
    for step in range(1, args.steps + 1):
        run.log_metrics({"step": step, "loss": args.lr * 10 / step})
        time.sleep(args.sleep / args.steps)
    os.makedirs(os.environ["XT_OUTPUT_DIR"], exist_ok=True)
    with open(os.path.join(os.environ["XT_OUTPUT_DIR"], "where.json"), "w") as f:
        json.dump({"user": getpass.getuser(), "started": started, "ended": time.time(), "lr": args.lr,
                   "activated": os.environ.get("XT_ACTIVATED", ""), "pid": os.getpid()}, f)
    print(f"done lr={args.lr} on {getpass.getuser()}", flush=True)
''')


def pool_config(ssh_boxes, tmp_path, extra_boxes="", box_settings="", setups=""):
    key = ssh_boxes.client_key
    box1, box2 = ssh_boxes.boxes["box1"], ssh_boxes.boxes["box2"]
    return textwrap.dedent(f'''
        compute-targets:
          pool:
            service: pool
            boxes: [box1, box2{extra_boxes and ", " + ", ".join(extra_boxes)}]
        {textwrap.indent(setups, "        ").strip()}
        boxes:
          box1: {{address: "{box1.address}", max-runs: 2, key: "{key}", host-key: "{box1.host_key}"{box_settings}}}
          box2: {{address: "{box2.address}", max-runs: 2, key: "{key}", host-key: "{box2.host_key}"{box_settings}}}
    ''') + "".join(f'  {name}: {{address: "{address}", max-runs: 2, key: "{key}"}}\n'
                   for name, address in (extra_boxes or {}).items())


@pytest.fixture
def pool_project(project, ssh_boxes):
    (project.code / "train.py").write_text(POOL_SCRIPT)
    return project


def outputs(project, run, tmp_path):
    dest = tmp_path / "dl" / run
    project.xt("download", run, "--dest", str(dest))
    return json.loads((dest / run / "where.json").read_text())


def test_a_host_started_for_a_pool_job_connects_to_its_boxes_before_the_job_arrives(pool_project, ssh_boxes, tmp_path):
    """`xt run --target pool` registers the target and starts the host with connect:pool: the SSH
    handshakes overlap the snapshot's upload and the submit, not wait for the runs."""
    from xt_submit import bootstrap
    from xt_submit.config import load_config
    from xt_submit.services import targets

    (pool_project.code / "xt_config.yaml").write_text(pool_config(ssh_boxes, tmp_path))
    cfg = load_config(cwd=pool_project.code)
    home = pool_project.home
    home.mkdir(parents=True, exist_ok=True)
    compute = bootstrap.task_table(home)
    targets.register(compute, cfg, "pool")
    warms = targets.kind_of(cfg, "pool").host_warms(cfg, "pool")
    assert warms == ("ssh", "connect:pool")
    boxes = [ssh_boxes.boxes[name] for name in ("box1", "box2")]
    assert [box.connections() for box in boxes] == [[], []]  # each test's boxes are its own
    host = subprocess.Popen([sys.executable, "-m", "xt_submit.entrypoints.host", str(home), "60", ",".join(warms)],
                            cwd=home, env=pool_project.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not all(box.connections() for box in boxes):
            assert host.poll() is None and time.monotonic() < deadline, "the host connected to no box ahead"
            time.sleep(0.05)
        assert compute.active_count() == 0  # no job was sent: the connections came first
    finally:
        host.terminate()
        host.wait(30)


def test_sweep_spreads_over_two_boxes_and_skips_an_unreachable_one(pool_project, ssh_boxes, tmp_path):
    dead = f"nobody@127.0.0.1:{free_port()}"
    (pool_project.code / "xt_config.yaml").write_text(pool_config(ssh_boxes, tmp_path, extra_boxes={"box3": dead}))
    result = pool_project.json("run", "--target", "pool", "--wait", "train.py", "--lr=[0.1,0.2,0.3,0.4,0.5,0.6]")
    assert result["status"] == "completed", result
    runs = pool_project.json("list", "runs", "--job", result["job"], "--all")
    assert len(runs) == 6 and {r["status"] for r in runs} == {"completed"}
    where = {r["name"]: outputs(pool_project, r["name"], tmp_path) for r in runs}
    box_of_user = {ssh_boxes.boxes[name].user: name for name in ("box1", "box2")}
    assert {w["user"] for w in where.values()} == set(box_of_user)  # both boxes worked
    for run in runs:
        assert run["metrics"]["loss"] == pytest.approx(where[run["name"]]["lr"] * 10 / 3)
        assert run["node_id"] == box_of_user[where[run["name"]]["user"]]
    for user in box_of_user:  # never more than max-runs at once on a box
        spans = [(w["started"], w["ended"]) for w in where.values() if w["user"] == user]
        for start, _ in spans:
            assert sum(1 for s, e in spans if s <= start < e) <= 2
    status = pool_project.xt("view", "status", "pool").stdout
    assert "box3" in status and "unreachable" in status, status
    boxes = {b["name"]: b for b in pool_project.json("list", "boxes")}
    assert boxes["box3"]["state"].startswith("unreachable") and "box3" in boxes["box3"]["state"]
    assert boxes["box1"]["state"].startswith("reachable") and boxes["box1"]["running"] == 0
    checked = {b["name"]: b["state"] for b in pool_project.json("list", "boxes", "--check")}
    assert checked["box1"].startswith("reachable (Python 3.") and checked["box2"].startswith("reachable (Python 3.")
    assert checked["box3"].startswith("unreachable: box box3 (nobody@127.0.0.1:") and "cannot connect" in checked["box3"]
    targets = {t["name"]: t for t in pool_project.json("list", "targets")}
    assert targets["pool"]["where"] == "boxes: box1, box2, box3" and targets["local"]["default"]
    log_text = (pool_project.home / "storage").rglob("job_log.jsonl")
    assert any("box-unreachable" in p.read_text() and "box3" in p.read_text() for p in log_text)
    # the private key never travels: not in XT_HOME (manifests, logs, the task table) nor on the boxes
    secret = "".join(ssh_boxes.client_key.read_text().splitlines()[1:-1])[:40]
    places = [pool_project.home] + [box.home / ".xt" for box in ssh_boxes.boxes.values()]
    leaks = [path for place in places for path in place.rglob("*")
             if path.is_file() and secret.encode() in path.read_bytes().replace(b"\n", b"")]
    assert leaks == []


def make_wheel(folder: Path, version: str = "1.0") -> Path:
    """A tiny pure-Python wheel, built by hand so pip can install it with no index."""
    import zipfile

    wheel = folder / f"xt_probe_pkg-{version}-py3-none-any.whl"
    info = f"xt_probe_pkg-{version}.dist-info"
    files = {"xt_probe_pkg/__init__.py": f'VERSION = "{version}"\n',
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: xt-probe-pkg\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: xt-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


SETUP_SCRIPT = POOL_SCRIPT.replace('"pid": os.getpid()}', '"pid": os.getpid(), "prefix": sys.prefix,'
                                   ' "probe": __import__("xt_probe_pkg").VERSION}')


def test_setup_installs_once_per_box_and_the_run_sees_the_activation(pool_project, ssh_boxes, tmp_path):
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="xt-probe-"))  # readable by the boxes' users
    shared.chmod(0o777)
    wheel = make_wheel(shared)
    for box in ssh_boxes.boxes.values():  # each box has its own environment, made by its user
        made = box.as_user("rm -rf ~/venv ~/pip.log && python3 -m venv ~/venv")
        assert made.returncode == 0, made.stderr
    setups = textwrap.dedent(f'''
        setups:
          probe:
            activate: "source ~/venv/bin/activate && export XT_ACTIVATED=$VIRTUAL_ENV PIP_LOG=$HOME/pip.log"
            pip-packages: ["{wheel}"]
    ''')
    config = pool_config(ssh_boxes, tmp_path, setups=setups).replace("boxes: [box1, box2]", "boxes: [box1, box2]\n    setup: probe")
    (pool_project.code / "xt_config.yaml").write_text(config)
    (pool_project.code / "train.py").write_text(SETUP_SCRIPT)
    first = pool_project.json("run", "--target", "pool", "--wait", "train.py", "--lr=[0.1,0.2,0.3,0.4,0.5,0.6]")
    assert first["status"] == "completed", first
    wheel.unlink()  # a second install would now fail: the next job must not try one
    second = pool_project.json("run", "--target", "pool", "--wait", "train.py", "--lr=[0.7,0.8]")
    assert second["status"] == "completed", second
    for box in ssh_boxes.boxes.values():  # once on each box, though its runs started two at a time
        assert (box.home / "pip.log").read_text().count("Successfully installed xt-probe-pkg") == 1
    for run in pool_project.json("list", "runs", "--job", first["job"], "--all"):
        where = outputs(pool_project, run["name"], tmp_path)
        home = ssh_boxes.boxes[run["node_id"]].home
        assert where["activated"] == str(home / "venv") and where["prefix"] == str(home / "venv")
        assert where["probe"] == "1.0"


SLOW_SCRIPT = textwrap.dedent('''
    import json, os, subprocess, sys, time
    from xt_submit import Run

    steps = int(sys.argv[1].split("=")[1]) if len(sys.argv) > 1 else 10  # --steps=N
    child = subprocess.Popen(["sleep", "300"])  # part of the run's process tree
    os.makedirs(os.environ["XT_OUTPUT_DIR"], exist_ok=True)
    with open(os.path.join(os.environ["XT_OUTPUT_DIR"], "pids.json"), "w") as f:
        json.dump({"run": os.getpid(), "child": child.pid}, f)
    run = Run(flush_seconds=0.1)
    for step in range(1, steps + 1):
        run.log_metrics({"step": step, "loss": 1.0 / step})
        time.sleep(0.4)
    child.kill()
''')


def one_box_pool(pool_project, ssh_boxes, tmp_path):
    config = pool_config(ssh_boxes, tmp_path).replace("boxes: [box1, box2]", "boxes: [box1]")
    (pool_project.code / "xt_config.yaml").write_text(config)
    (pool_project.code / "slow.py").write_text(SLOW_SCRIPT)


def live_file(project, run, name, timeout=60):
    path = project.home / "storage" / "workspaces" / "ws1" / "runs" / run / "live" / name
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{name} never reached the live outputs of {run}"
        time.sleep(0.1)
    time.sleep(0.2)
    return json.loads(path.read_text())


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_cancel_stops_the_whole_process_tree_on_the_box(pool_project, ssh_boxes, tmp_path, reliability):
    one_box_pool(pool_project, ssh_boxes, tmp_path)
    job = pool_project.json("run", "--target", "pool", "slow.py", "--steps=1000")["job"]
    run = job.replace("job", "run") + ".1"
    pids = live_file(pool_project, run, "pids.json")
    assert alive(pids["run"]) and alive(pids["child"])
    pool_project.xt("cancel", "job", job)
    assert pool_project.wait_job(job, timeout=60)["status"] == "cancelled"
    deadline = time.time() + 15
    while (alive(pids["run"]) or alive(pids["child"])) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(pids["run"]) and not alive(pids["child"])
    reliability.add("pool: cancel a run on an SSH box (its process tree)", runs=1, processes_left=0)


def test_a_dropped_ssh_connection_loses_no_logged_metric(pool_project, ssh_boxes, tmp_path, reliability):
    one_box_pool(pool_project, ssh_boxes, tmp_path)
    job = pool_project.json("run", "--target", "pool", "slow.py", "--steps=12")["job"]
    run = job.replace("job", "run") + ".1"
    live_file(pool_project, run, "pids.json")
    box = ssh_boxes.boxes["box1"]
    dropped = 0
    for _ in range(3):  # the connection dies several times while the run goes on
        dropped += box.drop_connections()
        time.sleep(0.8)
    assert dropped >= 1
    record = pool_project.wait_job(job, timeout=90)
    assert record["status"] == "completed", record
    history = pool_project.json("view", "metrics", run)[run]
    assert sorted(m["step"] for m in history if m["name"] == "loss") == list(range(1, 13))
    reliability.add("pool: SSH connections killed mid-run", connections_killed=dropped, metrics_logged=12, lost=0)


def test_localhost_is_a_box_without_ssh(project, tmp_path):
    (project.code / "train.py").write_text(POOL_SCRIPT)
    (project.code / "xt_config.yaml").write_text(
        "compute-targets: {mine: {service: pool, boxes: [here]}}\nboxes: {here: {address: localhost, max-runs: 2}}\n")
    result = project.json("run", "--target", "mine", "--wait", "train.py", "--lr=[0.1,0.2,0.3]")
    assert result["status"] == "completed", result
    runs = project.json("list", "runs", "--job", result["job"], "--all")
    assert {r["node_id"] for r in runs} == {"here"} and all(r["metrics"]["loss"] > 0 for r in runs)
    status = project.json("view", "status", "mine")
    assert status["boxes"] == [{"box": "here", "max_runs": 2, "running": 0, "free": 2, "state": status["boxes"][0]["state"]}]


def test_from_the_starter_config_to_a_sweep_on_two_boxes_by_editing_boxes_only(pool_project, ssh_boxes, tmp_path):
    pool_project.xt("config", "--create")
    path = pool_project.code / "xt_config.yaml"
    lines = path.read_text().splitlines()
    (at,) = [k for k, line in enumerate(lines) if line.startswith("boxes: {}")]
    lines[at:at + 1] = ["boxes:"] + [
        f'  {name}: {{address: "{box.address}", max-runs: 2, key: "{ssh_boxes.client_key}", host-key: "{box.host_key}"}}'
        for name, box in ssh_boxes.boxes.items()]
    path.write_text("\n".join(lines) + "\n")
    result = pool_project.json("run", "--target", "pool", "--wait", "train.py", "--lr=[0.1,0.2,0.3,0.4]")
    assert result["status"] == "completed", result
    runs = pool_project.json("list", "runs", "--job", result["job"], "--all")
    assert {r["node_id"] for r in runs} == {"box1", "box2"}


def test_a_host_killed_mid_sweep_adopts_its_runs_on_the_boxes(pool_project, ssh_boxes, tmp_path, reliability):
    import signal

    (pool_project.code / "xt_config.yaml").write_text(pool_config(ssh_boxes, tmp_path))
    (pool_project.code / "slow.py").write_text(SLOW_SCRIPT)
    job = pool_project.json("run", "--target", "pool", "slow.py", "--steps=[6,7,8,9]")["job"]
    number = job[len("job"):]
    first_pids = {k: live_file(pool_project, f"run{number}.{k}", "pids.json")["run"] for k in (1, 2, 3, 4)}
    os.kill(pool_project.host_pid(), signal.SIGKILL)
    time.sleep(1.0)  # the runs go on on the boxes with nobody watching
    pool_project.xt("serve", "--idle-exit", "1", timeout=120)
    runs = pool_project.json("list", "runs", "--job", job, "--all")
    assert [r["status"] for r in runs] == ["completed"] * 4
    for k, run in enumerate(runs, start=1):
        steps = 5 + k
        history = pool_project.json("view", "metrics", run["name"])[run["name"]]
        assert sorted(m["step"] for m in history if m["name"] == "loss") == list(range(1, steps + 1))  # none lost, none twice
        assert live_file(pool_project, run["name"], "pids.json")["run"] == first_pids[k]  # adopted, never started again
    reliability.add("pool: host killed (SIGKILL) mid-sweep on SSH boxes, then restarted", host_kills=1, runs=4, lost=0,
                    run_twice=0)


@pytest.mark.parametrize(("config", "message"), [
    ("", "xt: compute-targets.pool.boxes: no boxes to run on; add your machines under `boxes` in xt_config.yaml"),
    ("compute-targets: {lab: {service: pool, boxes: [gpu9]}}\nboxes: {gpu1: {address: ann@gpu1}}\n",
     "xt: compute-targets.lab.boxes: expected boxes names (one of gpu1), got 'gpu9'"),
    ("compute-targets: {lab: {service: pool, setup: s}}\nboxes: {gpu1: {address: ann@gpu1}}\n"
     "setups: {s: {pip-packages: ['no-such-pkg-xt==*']}}\n",
     "xt: setups.s.pip-packages: no-such-pkg-xt==* pins to the version installed here, but no-such-pkg-xt is not installed"),
    ("boxes: {gpu1: {address: 'ann@gpu1:ssh'}}\n",
     "xt: xt_config.yaml: boxes.gpu1.address: expected user@host[:port] with a port number, got 'ann@gpu1:ssh'"),
])
def test_pool_mistakes_are_one_line_errors_that_submit_nothing(project, config, message):
    (project.code / "xt_config.yaml").write_text(config)
    target = "lab" if "lab:" in config else "pool"
    result = project.xt("run", "--target", target, "train.py", "--lr=[0.1,0.2]", check=False)
    assert result.returncode == 2 and result.stderr.strip() == message, result.stderr
    assert not (project.home / "storage" / "code").exists()


def test_a_box_gone_silent_stalls_nothing_and_its_run_carries_on_when_it_answers(pool_project, ssh_boxes, tmp_path,
                                                                                 reliability):
    """A partition, not a drop: the connection stays open and nothing crosses. The host notices
    within XT_BOX_TIMEOUT_SECONDS, keeps serving other work, and picks the run up again later."""
    from peers.ssh_boxes import FreezableProxy

    box = ssh_boxes.boxes["box1"]
    proxy = FreezableProxy(box.port)
    pool_project.env["XT_BOX_TIMEOUT_SECONDS"] = "2"
    (pool_project.code / "xt_config.yaml").write_text(
        f'compute-targets: {{pool: {{service: pool, boxes: [box1]}}}}\n'
        f'boxes: {{box1: {{address: "{box.user}@127.0.0.1:{proxy.port}", max-runs: 1, key: "{ssh_boxes.client_key}",'
        f' host-key: "{box.host_key}"}}}}\n')
    (pool_project.code / "slow.py").write_text(SLOW_SCRIPT)
    (pool_project.code / "train.py").write_text(POOL_SCRIPT)
    try:
        job = pool_project.json("run", "--target", "pool", "slow.py", "--steps=15")["job"]
        run = job.replace("job", "run") + ".1"
        live_file(pool_project, run, "pids.json")
        proxy.frozen.set()
        started = time.time()
        local = pool_project.json("run", "--target", "local", "--wait", "train.py", "--sleep=0")
        assert local["status"] == "completed" and time.time() - started < 15  # the host was not stuck on the box
        time.sleep(max(0.0, 4 - (time.time() - started)))
        proxy.frozen.clear()
        record = pool_project.wait_job(job, timeout=90)
    finally:
        proxy.close()
    assert record["status"] == "completed", record
    history = pool_project.json("view", "metrics", run)[run]
    assert sorted(m["step"] for m in history if m["name"] == "loss") == list(range(1, 16))
    assert '"event": "BoxUnreachable", "box": "box1"' in (pool_project.home / "host.log").read_text()  # it was noticed
    reliability.add("pool: box silent for 4 s (partition), then back", runs=1, metrics_logged=15, lost=0)


def test_the_slots_of_a_box_start_their_runs_at_the_same_time(tmp_path):
    """Each run has a thread of its own: a box's second slot does not wait while the first one
    prepares (here: neither may finish preparing until both have begun)."""
    import threading

    from xt_submit.adapters.compute.tasks import LocalCompute
    from xt_submit.adapters.nodes.local import LocalNode
    from xt_submit.adapters.storage.directory import DirectoryStorage
    from xt_submit.domain import layout
    from xt_submit.domain.messages import RunFinished, RunTask
    from xt_submit.node_kit import code_archive
    from xt_submit.runtime.pool_executor import PoolExecutor

    both_preparing = threading.Barrier(2, timeout=60)  # a bound: one start at a time never gets both here

    class SlowToPrepare(LocalNode):
        def prepare(self, *args, **kwargs):
            both_preparing.wait()
            super().prepare(*args, **kwargs)

    class Events:
        jobs_queue, events_queue = "jobs", "events"

        def __init__(self):
            self.sent = []

        def send_job(self, message):
            self.sent.append(message)

        def send_events(self, messages):
            self.sent.extend(messages)

    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text("print('trained')\n")
    snapshot = code_archive.snapshot_code(["."], str(src))
    storage = DirectoryStorage(tmp_path / "storage")
    storage.write(layout.code_key(snapshot.sha256), snapshot.data)
    compute = LocalCompute(str(tmp_path / "compute.db"))
    compute.register_target("pool", {"service": "pool", "boxes": {"here": {"address": "localhost", "max_runs": 2}}})
    events = Events()
    executor = PoolExecutor(compute, tmp_path / "home", storage, events,
                            lambda box, settings, runs_folder: SlowToPrepare(str(tmp_path / "home" / "nodes" / box), box))
    compute.submit([RunTask(workspace="ws1", experiment="e", job="job1", run=f"run1.{k}", command="python train.py",
                            code_key=layout.code_key(snapshot.sha256), target="pool") for k in (1, 2)])
    deadline = time.monotonic() + 120  # a bound, not a deadline
    while compute.active_count():
        assert time.monotonic() < deadline, "the two runs never finished"
        if not executor.poll():
            time.sleep(0.01)
    finished = {e.run: e.status for e in events.sent if isinstance(e, RunFinished)}
    assert finished == {"run1.1": "completed", "run1.2": "completed"}, [e for e in events.sent if isinstance(e, RunFinished)]
