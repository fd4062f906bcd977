"""The Functions app: indexed as the worker does it, and driven end to end on the Azure path
(Blob Storage on Azurite, Service Bus on the test broker, the MongoDB API on mongoeco) until a
sweep submitted with `xt run` completes with the same records as on the embedded default."""
import functools
import importlib.util
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def load_entry_script():
    """What the worker does, once per process: load the root script named by PYTHON_SCRIPT_FILE_NAME by path."""
    spec = importlib.util.spec_from_file_location("xt_functions_entry", ROOT / "xt_functions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=1)
def indexed_functions():
    """The app's functions, indexed once (indexing twice would register every name twice)."""
    import azure.functions as func

    module = load_entry_script()
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionApp)]
    assert len(apps) == 1  # the worker requires exactly one
    return tuple(apps[0].get_functions())


def test_the_app_indexes_with_its_functions_and_bindings():
    functions = {f.get_function_name(): json.loads(f.get_function_json()) for f in indexed_functions()}
    bindings = {name: [(b["type"], b["direction"], b.get("queueName") or b.get("path") or b.get("schedule"),
                        b.get("connection"), b.get("source")) for b in spec["bindings"]]
                for name, spec in functions.items()}
    assert bindings == {
        "dispatch": [("serviceBusTrigger", "IN", "%XT_JOBS_QUEUE%", "XT_SERVICEBUS", None)],
        "run_events": [("serviceBusTrigger", "IN", "%XT_EVENTS_QUEUE%", "XT_SERVICEBUS", None)],
        "upload_received": [("blobTrigger", "IN", "%XT_STORAGE_CONTAINER%/uploads/{name}", "XT_STORAGE", "EventGrid")],
        "heartbeat_timer": [("timerTrigger", "IN", "0 */1 * * * *", None, None)],
    }
    settings = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    used = {"XT_JOBS_QUEUE", "XT_EVENTS_QUEUE", "XT_STORAGE_CONTAINER", "XT_MONGO", "XT_MONGO_DATABASE",
            "XT_TASKS_QUEUE", "XT_HEARTBEAT_TIMEOUT", "PYTHON_SCRIPT_FILE_NAME"}
    assert used <= set(settings) and settings["PYTHON_SCRIPT_FILE_NAME"] == "xt_functions.py"
    assert not [k for k, v in settings.items() if "AccountKey=" in v or "SharedAccessKey=" in v or "password" in v.lower()]


def azure_config(azurite, broker, mongo, tag):
    return f"""
external-services:
  team-store: {{type: blob, connection-string: "{azurite}", container: xt-{tag}}}
  team-bus: {{type: servicebus, connection-string: "{broker}", jobs-queue: jobs-{tag}, events-queue: events-{tag}, tasks-queue: tasks-{tag}}}
  team-stats: {{type: mongo, connection-string: "{mongo}", database: xt_{tag}}}
xt-services: {{storage: team-store, queue: team-bus, stats: team-stats}}
"""


class AzureDeployment:
    """The Functions app as a deployment runs it (its entry points, its settings), the test broker
    delivering its queues, and the agent (`xt serve` with the team's config) on a machine of its own."""

    def __init__(self, tmp_path, project, azurite, broker, mongo_uri, tag, monkeypatch, agent_env=None):
        from function_app import settings
        from xt_submit.adapters.queue.servicebus import ServiceBusQueue

        self.tag, self.project = tag, project
        for name, value in {"XT_STORAGE": azurite, "XT_STORAGE_CONTAINER": f"xt-{tag}", "XT_SERVICEBUS": broker,
                            "XT_JOBS_QUEUE": f"jobs-{tag}", "XT_EVENTS_QUEUE": f"events-{tag}",
                            "XT_TASKS_QUEUE": f"tasks-{tag}", "XT_MONGO": mongo_uri,
                            "XT_MONGO_DATABASE": f"xt_{tag}"}.items():
            monkeypatch.setenv(name, value)
        settings.ports.cache_clear()
        self.ports = settings.ports()
        self.functions = {f.get_function_name(): f.get_user_function() for f in indexed_functions()}
        self.bus = ServiceBusQueue(broker, max_wait_time=1.0)
        self.agent = subprocess.Popen([sys.executable, "-m", "xt_submit.cli", "serve"], cwd=project.code,
                                      env=dict(project.env, XT_HOME=str(tmp_path / f"agent-{tag}"), **(agent_env or {})),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def deliver(self, queue, function):
        from azure.functions.servicebus import ServiceBusMessage

        for message in self.bus.receive(queue, max_messages=10):
            with self.locked(message):
                self.functions[function](ServiceBusMessage(body=message.body, message_id=str(message.id),
                                                           application_properties={}, user_properties={}))
            self.bus.complete(message)

    @contextlib.contextmanager
    def locked(self, message):
        """Renew the message's lock while its function runs, as the Functions host does (its
        Service Bus trigger renews for up to maxAutoLockRenewalDuration, 5 minutes by default):
        the test broker's locks last 2 s, less than a function may take on a loaded machine."""
        done = threading.Event()

        def renew():
            while not done.wait(0.5):
                self.bus.renew_lock(message)

        renewer = threading.Thread(target=renew, daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()

    def run(self, *args, timeout=120):
        """`xt run ARGS` with the team's config, driven until its job ends; returns the job's name."""
        submit = subprocess.Popen([sys.executable, "-m", "xt_submit.cli", "run", "--json", *args], cwd=self.project.code,
                                  env=self.project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        job, deadline = None, time.time() + timeout
        while time.time() < deadline:
            self.deliver(f"jobs-{self.tag}", "dispatch")
            self.deliver(f"events-{self.tag}", "run_events")
            assert self.agent.poll() is None, self.agent.stderr.read()
            if job is None and submit.poll() is not None:
                out, err = submit.communicate()
                assert submit.returncode == 0, err
                job = json.loads(out)["job"]
            if job and self.ports.stats.get_job("ws1", job)["status"] in ("completed", "error", "cancelled"):
                return job
            time.sleep(0.05)
        pytest.fail("the job did not end through the functions")

    def close(self):
        self.bus.close()
        self.agent.terminate()
        self.agent.wait(timeout=30)


def test_a_sweep_runs_end_to_end_through_the_function_entry_points(tmp_path, project, azurite_connection_string,
                                                                   servicebus_connection_string, mongo_uri, monkeypatch):
    sweep = ["train.py", "--lr=[0.1,0.2]", "--opt=[sgd,adam]"]
    reference = project.json("run", "--wait", *sweep)  # the embedded default, for comparison
    expected = {r["name"].split(".")[1]: r for r in project.json("list", "runs", "--job", reference["job"])}
    project.stop_host()
    (project.code / "xt_config.yaml").write_text(
        azure_config(azurite_connection_string, servicebus_connection_string, mongo_uri, "e2e"))
    azure = AzureDeployment(tmp_path, project, azurite_connection_string, servicebus_connection_string, mongo_uri, "e2e",
                            monkeypatch, agent_env={"INVOCATIONS": str(tmp_path / "azure-invocations.txt")})
    try:
        job = azure.run(*sweep)
        azure.functions["heartbeat_timer"](None)  # the timer runs too, and finds no silent run
    finally:
        azure.close()
    ports = azure.ports
    assert ports.stats.get_job("ws1", job)["status"] == "completed"
    got = {r["name"].split(".")[1]: r for r in ports.stats.list_runs("ws1", job=job)}
    assert sorted(got) == sorted(expected)
    for index, run in got.items():
        reference_run = expected[index]
        for field in ("status", "exit_code", "hparams", "metrics", "command", "experiment"):
            assert run[field] == reference_run[field], (index, field)
        assert ports.storage.list(f"workspaces/ws1/runs/{run['name']}/output/") == [
            f"workspaces/ws1/runs/{run['name']}/output/result.txt"]
    # the CLI reads the same records through the configured services
    listed = project.json("list", "runs", "--job", job)
    assert [r["status"] for r in listed] == ["completed"] * 4


def test_with_the_teams_services_a_pool_sweep_runs_on_the_agents_boxes(tmp_path, project, ssh_boxes,
                                                                       azurite_connection_string,
                                                                       servicebus_connection_string, mongo_uri,
                                                                       monkeypatch):
    """The agent takes the tasks off the queue and runs them on the boxes of its config; each box
    fetches the code itself with a read-only link, and the outputs land in Blob Storage."""
    from test_pool_e2e import POOL_SCRIPT, pool_config

    (project.code / "train.py").write_text(POOL_SCRIPT)
    (project.code / "xt_config.yaml").write_text(
        azure_config(azurite_connection_string, servicebus_connection_string, mongo_uri, "pool")
        + pool_config(ssh_boxes, tmp_path))
    azure = AzureDeployment(tmp_path, project, azurite_connection_string, servicebus_connection_string, mongo_uri,
                            "pool", monkeypatch)
    try:
        job = azure.run("--target", "pool", "train.py", "--lr=[0.1,0.2,0.3,0.4]")
    finally:
        azure.close()
    runs = azure.ports.stats.list_runs("ws1", job=job)
    assert [r["status"] for r in runs] == ["completed"] * 4 and {r["node_id"] for r in runs} == {"box1", "box2"}
    for run in runs:
        where = json.loads(azure.ports.storage.read(f"workspaces/ws1/runs/{run['name']}/output/where.json"))
        assert run["metrics"]["loss"] == pytest.approx(where["lr"] * 10 / 3)
    agent_log = (tmp_path / "agent-pool" / "agent.log").read_text()
    assert "TasksQueued" in agent_log
