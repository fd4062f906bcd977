"""The reaper (node_kit/reaper.py) and the manifest's script rule, on their own with real processes:
a run's environment is exactly its base, its own variables and the marker; what a command leaves
behind is ended; a command dies with its reaper and kill_tree finds the rest; a script outside the
snapshot never gets past check_manifest (the CLI's and the upload path's check)."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from xt_submit.node_kit.reaper import process_start_time as start_time  # None once gone or a zombie

from xt_submit.domain.manifest import check_manifest
from xt_submit.domain.messages import ContractError, decode_manifest
from xt_submit.node_kit import reaper

PATIENCE_SECONDS = 20
ROOT = Path(__file__).resolve().parents[2]

TREE = textwrap.dedent('''
    import json, os, subprocess, sys, time
    CHILD = "import signal, subprocess, sys, time\\n" \\
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n" \\
            "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\\n" \\
            "print(g.pid, flush=True)\\n" \\
            "time.sleep(300)\\n"
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    grandchild = int(child.stdout.readline())
    print(json.dumps({"script": os.getpid(), "child": child.pid, "grandchild": grandchild}), flush=True)
    time.sleep(float(sys.argv[1]))
''')


def wait_for(condition, what):
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {PATIENCE_SECONDS}s"
        time.sleep(0.02)


def start_reaper(tmp_path, argv, own=None, environ=None, grace=0.5):
    """The reaper as a node starts it: own session, console to a file; returns (process, exit file, console)."""
    spec, exit_file, console = tmp_path / reaper.SPEC_FILE, tmp_path / "exit_code", tmp_path / "console.log"
    text = reaper.launch_spec(own or {}).replace(f"grace {reaper.GRACE_SECONDS}", f"grace {grace}")
    spec.write_text(text)
    with open(console, "ab") as out:
        process = subprocess.Popen([sys.executable, "-S", "-I", reaper.__file__, str(exit_file), str(spec), *argv],
                                   cwd=tmp_path, env=environ, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return process, exit_file, console


def tree_pids(console):
    """The pids TREE printed once its child and grandchild are up: {name: (pid, start)}."""
    wait_for(lambda: b"grandchild" in console.read_bytes(), "the command's tree started")
    pids = json.loads(console.read_text().splitlines()[0])
    return {name: (pid, start_time(pid)) for name, pid in pids.items()}


def alive(processes):
    return {name for name, (pid, start) in processes.items() if start is not None and start_time(pid) == start}


def test_the_command_gets_exactly_the_base_its_own_variables_and_the_marker(tmp_path):
    environ = {"PATH": os.environ["PATH"], "HOME": "/home/ann", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC",
               "SECRET": "hunter2", "CUDA_VISIBLE_DEVICES": "3", "TERM": "xterm", "AZURE_CLIENT_SECRET": "s3cr3t",
               "PWD": "/elsewhere", "SSH_CONNECTION": "10.0.0.1 22 10.0.0.2 5000"}
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    own = {"XT_RUN_NAME": "run1.1", "OMP_NUM_THREADS": "4", "ODD": "a b\nc %s \\ é"}
    process, exit_file, console = start_reaper(tmp_path, [sys.executable, "-S", "-c", dump], own, environ)
    process.wait(timeout=PATIENCE_SECONDS)
    assert exit_file.read_text().split("\n")[0] == "0"
    got = json.loads(console.read_text())
    base = {name: environ[name] for name in ("PATH", "HOME", "LANG", "LC_ALL", "TZ")}
    assert got == {**base, **own, "XT_REAPER_PID": str(process.pid)}
    assert not (tmp_path / reaper.SPEC_FILE).exists()  # the run's variables stay in no file


def test_what_a_finished_command_leaves_behind_is_ended_before_its_exit_code_is_written(tmp_path):
    process, exit_file, console = start_reaper(tmp_path, [sys.executable, "-c", TREE, "0.3"], grace=0.5)
    processes = tree_pids(console)
    assert alive(processes) == {"script", "child", "grandchild"}
    process.wait(timeout=PATIENCE_SECONDS)  # it waits for the grace (the child ignores SIGTERM), then SIGKILLs
    assert exit_file.read_text().split("\n")[0] == "0" and alive(processes) == set()


def test_a_sigterm_to_the_reaper_reaches_the_whole_tree_and_sigkill_follows(tmp_path):
    process, exit_file, console = start_reaper(tmp_path, [sys.executable, "-c", TREE, "300"], grace=0.5)
    processes = tree_pids(console)
    reaper.kill_tree(process.pid, signal.SIGTERM)  # as a cancel does
    process.wait(timeout=PATIENCE_SECONDS)
    assert exit_file.read_text().split("\n")[0] == str(-signal.SIGTERM) and alive(processes) == set()


def test_a_command_dies_with_its_reaper_and_kill_tree_finds_the_rest(tmp_path):
    process, exit_file, console = start_reaper(tmp_path, [sys.executable, "-c", TREE, "300"])
    processes = tree_pids(console)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=PATIENCE_SECONDS)
    wait_for(lambda: "script" not in alive(processes), "the command died with its reaper")
    assert alive(processes) == {"child", "grandchild"} and not exit_file.exists()  # orphans, one in its own session
    reaper.kill_tree(process.pid, signal.SIGKILL)  # what the supervisor does on seeing a dead reaper
    wait_for(lambda: not alive(processes), f"the orphans gone ({alive(processes)})")


def test_kill_tree_leaves_a_recycled_pid_and_its_group_alone(tmp_path):
    """A pid that is no longer a reaper (recycled by something else) is not signalled, nor its group."""
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        reaper.kill_tree(other.pid, signal.SIGKILL)
        reaper.kill_tree(other.pid, signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):  # a signal, had one been sent, would land at once
            other.wait(timeout=0.3)
    finally:
        other.kill()
        other.wait()


def test_a_missing_command_exits_127_with_one_line_on_the_console(tmp_path):
    process, exit_file, console = start_reaper(tmp_path, ["no-such-command-xt"])
    process.wait(timeout=PATIENCE_SECONDS)
    assert exit_file.read_text().split("\n")[0] == "127"
    assert console.read_text().strip() == "[xt] command not found: no-such-command-xt"


def test_readme_documents_exactly_the_base_environment():
    text = (ROOT / "README.md").read_text()
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    (paragraph,) = [p for p in paragraphs if "base environment" in p and "XT_RUN_PASS_ENV" in p]
    named = set(re.findall(r"`([A-Z][A-Z_]*\*?)`", paragraph))
    assert set(reaper.BASE_ENV) | {prefix + "*" for prefix in reaper.BASE_ENV_PREFIXES} <= named
    assert "TERM" not in set(reaper.BASE_ENV) and "`TERM`" in paragraph  # said to be left out, and why


def test_a_batch_nodes_run_sees_none_of_the_nodes_own_environment(tmp_path, monkeypatch, reliability):
    """The Batch node's entry point, as a node runs it: its process has the task's settings, the pool
    identity's client id and Batch's own variables; the run gets its base and its job's variables only."""
    from xt_submit.adapters.storage.directory import DirectoryStorage
    from xt_submit.domain import layout
    from xt_submit.domain.batch_node import CODE_FILE, TASK_ENV
    from xt_submit.domain.messages import RunTask, SetupSpec, encode
    from xt_submit.entrypoints.batch_node import run_task
    from xt_submit.node_kit import code_archive

    src = tmp_path / "src"
    src.mkdir()
    (src / "dump.py").write_text("import json, os\nprint('ENV=' + json.dumps(dict(os.environ)))\n")
    snapshot = code_archive.snapshot_code(["."], str(src))
    work = tmp_path / "wd"
    (work / CODE_FILE).parent.mkdir(parents=True)
    (work / CODE_FILE).write_bytes(snapshot.data)  # what Batch fetched with the SAS link
    task = RunTask(workspace="ws1", experiment="e", job="job1", run="run1.1", command="python dump.py",
                   code_key=layout.code_key(snapshot.sha256), setup=SetupSpec(environment={"OMP_NUM_THREADS": "4"}))
    node_env = {TASK_ENV: encode(task).decode(), "XT_IDENTITY_CLIENT_ID": "0000-client", "AZ_BATCH_NODE_ID": "tvm-7",
                "IDENTITY_ENDPOINT": "http://169.254.169.254/msi", "AZURE_CLIENT_SECRET": "planted-node-secret",
                "XT_STORAGE_ACCOUNT_URL": "https://team.blob.core.windows.net"}
    for name, value in node_env.items():
        monkeypatch.setenv(name, value)
    sent = []

    class Publisher:
        def send_events(self, events):
            sent.extend(events)

    storage = DirectoryStorage(tmp_path / "storage")
    assert run_task(dict(os.environ), work, storage, Publisher()) == 0
    assert sent[-1].status == "completed", sent[-1]
    console = storage.read(layout.console_key("ws1", "run1.1")).decode()
    env = json.loads(console.split("ENV=", 1)[1])
    assert [name for name in node_env if name in env] == []
    assert env["OMP_NUM_THREADS"] == "4" and env["XT_RUN_NAME"] == "run1.1" and env["XT_NODE_ID"] == "tvm-7"
    assert {name for name in env if not name.startswith("XT_")} - {"OMP_NUM_THREADS", "PYTHONUNBUFFERED"} <= (
        set(reaper.BASE_ENV) | {name for name in env if name.startswith(reaper.BASE_ENV_PREFIXES)})
    reliability.add("isolation: a Batch node's credentials and settings, a run on the node", runs=1,
                    planted_variables=len(node_env), leaked=0)


MANIFEST = {"workspace": "ws1", "experiment": "e", "command": "python train.py"}


@pytest.mark.parametrize("script", ["../other/train.py", "/abs/train.py", "src/../../x.py", "..\\x.py",
                                    "C:/x/train.py", "/usr/bin/python3"])
def test_a_script_outside_the_snapshot_is_refused_by_check_manifest(script, reliability):
    manifest = decode_manifest(json.dumps({**MANIFEST, "script": script}).encode())  # as an upload's
    with pytest.raises(ContractError) as caught:
        check_manifest(manifest)
    message = str(caught.value)
    assert message.startswith(f"xt_manifest.json: script: {script} is ") and "expected a path relative" in message
    assert "\n" not in message
    reliability.add("isolation: script outside the snapshot (../, absolute) refused at submit", inputs_tried=1,
                    submitted=0)


@pytest.mark.parametrize("script", ["train.py", "src/train.py", "./train.py", "src/../train.py", "python", "bash"])
def test_a_script_inside_the_snapshot_or_a_command_name_passes(script):
    check_manifest(decode_manifest(json.dumps({**MANIFEST, "script": script}).encode()))
