"""Environment and processes (issue 16, classes 3 and 4), end to end through the real CLI, host and
runs, locally and on an SSH box: a run's environment is exactly what its job defines, a script
outside the snapshot is refused at submit, and no process of a run outlives it (a cancel, a
normal end, a killed reaper)."""
import json
import os
import signal
import textwrap
import time

import pytest

from xt_submit.node_kit.reaper import process_start_time as start_time  # None once gone or a zombie
from xt_submit.runtime.wrapper import saved_state

# What README's "run environment" paragraph documents, checked against what runs really get.
DOCUMENTED_BASE = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TZ", "TMPDIR"}  # and LC_*
XT_OWN = {"XT_WORKSPACE", "XT_EXPERIMENT", "XT_JOB_ID", "XT_RUN_NAME", "XT_NODE_ID", "XT_OUTPUT_DIR", "XT_RUN_LOG",
          "XT_CHECKPOINT", "XT_STEP_NAME", "XT_REAPER_PID", "PYTHONUNBUFFERED"}
SETUP_ENV = {"XT_TEST_SETTING": "from the setup", "OMP_NUM_THREADS": "2"}
HOST_ONLY = {"SECRET": "hunter2", "CUDA_VISIBLE_DEVICES": "3", "TERM": "xterm-256color"}
PATIENCE_SECONDS = 30  # a bound, not a pause: every wait below polls

ENV_DUMP = textwrap.dedent('''
    import json, os
    os.makedirs(os.environ["XT_OUTPUT_DIR"], exist_ok=True)
    with open(os.path.join(os.environ["XT_OUTPUT_DIR"], "env.json"), "w") as f:
        json.dump(dict(os.environ), f)
''')

# The script, a child that ignores SIGTERM, and the child's own child in a session of its own.
TREE = textwrap.dedent('''
    import json, os, subprocess, sys, time
    CHILD = """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    print(grandchild.pid, flush=True)
    time.sleep(300)
    """
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    grandchild = int(child.stdout.readline())
    out = os.environ["XT_OUTPUT_DIR"]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "pids.tmp"), "w") as f:
        json.dump({"script": os.getpid(), "reaper": os.getppid(), "child": child.pid, "grandchild": grandchild}, f)
    os.replace(os.path.join(out, "pids.tmp"), os.path.join(out, "pids.json"))
    time.sleep(float(sys.argv[1].split("=")[1]) if len(sys.argv) > 1 else 300)  # --sleep=S
''')


def wait_for(condition, what, timeout=PATIENCE_SECONDS):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.05)


def survivors(processes):
    """The processes (name -> (pid, start)) still alive, by pid and start time (a reused pid is not theirs)."""
    return {name: pid for name, (pid, start) in processes.items() if start is not None and start_time(pid) == start}


def live_json(project, run, name):
    path = project.home / "storage" / "workspaces" / "ws1" / "runs" / run / "live" / name
    wait_for(path.exists, f"{name} in the live outputs of {run}", timeout=60)
    return json.loads(path.read_text())


def box_config(ssh_boxes, setup=""):
    box = ssh_boxes.boxes["box1"]
    return (f"compute-targets: {{pool: {{service: pool, boxes: [box1]{setup}}}}}\n"
            f'boxes: {{box1: {{address: "{box.address}", max-runs: 2, key: "{ssh_boxes.client_key}", '
            f'host-key: "{box.host_key}"}}}}\n')


def use_target(project, request, target, setup=""):
    """The project's config for `target` (local, or a pool of one SSH box); the setup (if named) is `iso`."""
    setups = "setups: {iso: {environment: %s}}\n" % json.dumps(SETUP_ENV) if setup else ""
    if target == "local":
        config = "compute-targets: {local: {service: local, concurrent: 2%s}}\n" % (", setup: iso" if setup else "")
    else:
        config = box_config(request.getfixturevalue("ssh_boxes"), ", setup: iso" if setup else "")
    (project.code / "xt_config.yaml").write_text(config + setups)


def started_tree(project, target, *args):
    """Submit TREE on target and wait for its processes: (job, run, {name: (pid, start)})."""
    (project.code / "tree.py").write_text(TREE)
    job = project.json("run", "--target", target, "tree.py", *args)["job"]
    run = job.replace("job", "run") + ".1"
    pids = live_json(project, run, "pids.json")
    processes = {name: (pid, start_time(pid)) for name, pid in pids.items()}
    assert survivors(processes) == pids, "the run's processes were not all alive to begin with"
    return job, run, processes


@pytest.fixture
def quick_kill(project):
    project.env["XT_KILL_GRACE_SECONDS"] = "1"  # SIGKILL follows SIGTERM after 1 s, not 10
    return project


@pytest.mark.parametrize("target", ["local", "pool"])
def test_a_run_sees_exactly_its_jobs_environment_never_the_hosts(project, request, target, reliability):
    project.env.update(HOST_ONLY, TZ="Europe/Paris", XT_RUN_PASS_ENV="LICENSE_SERVER",
                       LICENSE_SERVER="lic.example:27000")
    use_target(project, request, target, setup="iso")
    (project.code / "dump.py").write_text(ENV_DUMP)
    result = project.json("run", "--target", target, "--wait", "dump.py")
    assert result["status"] == "completed", result
    run = result["runs"][0]
    dest = project.root / "dl"
    project.xt("download", run, "--dest", str(dest))
    env = json.loads((dest / run / "env.json").read_text())
    for name in HOST_ONLY:
        assert name not in env, f"{name} of the host's environment reached the run"
    for name, value in SETUP_ENV.items():
        assert env[name] == value
    assert env["LICENSE_SERVER"] == "lic.example:27000"  # passed on by name, as the host's operator asked
    assert env["XT_RUN_NAME"] == run and env["XT_JOB_ID"] == result["job"] and env["XT_WORKSPACE"] == "ws1"
    expected = XT_OWN | set(SETUP_ENV) | {"LICENSE_SERVER"} | ({"PYTHONPATH"} if target == "pool" else set())
    base = {name for name in env if name not in expected}
    # Python itself may set LC_CTYPE (PEP 538's locale coercion) where the locale is plain C
    assert base - DOCUMENTED_BASE == {name for name in base if name.startswith("LC_")} - DOCUMENTED_BASE
    assert {"PATH", "HOME"} <= base, base
    if target == "local":  # this machine's base values are the host's own
        assert {name: env[name] for name in base if name in project.env} == {name: project.env[name] for name in base
                                                                             if name in project.env}
        assert {name for name in project.env if name in DOCUMENTED_BASE or name.startswith("LC_")} <= base
        assert env["TZ"] == "Europe/Paris"
    else:  # a box's are the box's own
        box = request.getfixturevalue("ssh_boxes").boxes["box1"]
        assert env["HOME"] == str(box.home) and env["USER"] == box.user and "SSH_CONNECTION" not in env
    reliability.add(f"isolation: host environment with secrets, a run on {target}", runs=1,
                    planted_variables=len(HOST_ONLY), leaked=0)


@pytest.mark.parametrize("script", ["../elsewhere/train.py", "ABSOLUTE"])
def test_a_script_outside_the_snapshot_is_refused_and_nothing_is_submitted(project, script, reliability):
    (project.root / "elsewhere").mkdir()
    (project.root / "elsewhere" / "train.py").write_text("print('never runs')\n")
    if script == "ABSOLUTE":
        script = str(project.code / "train.py")  # even one inside the project: runs see only the snapshot
    result = project.xt("run", script, "--lr=[0.1,0.2]", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert script in line and "expected" in line, line
    assert not (project.home / "storage" / "code").exists() and project.host_pid() is None
    reliability.add("isolation: script outside the snapshot (../, absolute) refused at submit", inputs_tried=1,
                    submitted=0)


@pytest.mark.parametrize("target", ["local", "pool"])
def test_cancel_leaves_no_process_of_the_run_alive(quick_kill, request, target, reliability):
    project = quick_kill
    use_target(project, request, target)
    job, run, processes = started_tree(project, target)
    project.xt("cancel", "job", job)
    assert project.wait_job(job, timeout=60)["status"] == "cancelled"
    wait_for(lambda: not survivors(processes), f"every process of the cancelled run gone ({survivors(processes)})")
    reliability.add(f"processes: cancel of a run whose child ignores SIGTERM and grandchild left the session ({target})",
                    runs=1, processes=len(processes), processes_left=0)


def test_processes_a_finished_script_leaves_behind_are_ended(quick_kill, reliability):
    project = quick_kill
    use_target(project, None, "local")
    (project.code / "tree.py").write_text(TREE)
    result = project.json("run", "--wait", "tree.py", "--sleep=0")
    assert result["status"] == "completed", result
    pids = live_json(project, result["runs"][0], "pids.json")
    assert {name: pid for name, pid in pids.items() if start_time(pid) is not None} == {}  # all gone once it ended
    reliability.add("processes: a script that exits leaving a SIGTERM-proof child and a setsid grandchild", runs=1,
                    processes_left=0)


@pytest.mark.parametrize("target", ["local", "pool"])
def test_a_killed_reaper_takes_the_run_down_with_it_and_says_so(project, request, target, reliability):
    use_target(project, request, target)
    job, run, processes = started_tree(project, target)
    box = "local" if target == "local" else "box1"
    state = saved_state(project.home / "nodes" / box / "ws1" / run)
    assert state["pid"] == processes["reaper"][0]  # the script's parent is the run's reaper
    os.kill(processes["reaper"][0], signal.SIGKILL)
    wait_for(lambda: not survivors(processes), f"every process of the run gone ({survivors(processes)})")
    record = project.wait_job(job, timeout=60)
    assert record["status"] == "error", record
    view = project.json("view", "run", run)
    assert view["status"] == "error" and "reaper" in view["reason"] and "killed" in view["reason"], view
    reliability.add(f"processes: kill -9 of a run's reaper ({target})", reaper_kills=1, processes=len(processes),
                    processes_left=0, runs_ended_with_reason=1)
