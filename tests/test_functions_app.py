"""The Functions app: indexed as the worker does it, and driven end to end on the Azure path
(Blob Storage on Azurite, Service Bus on the test broker, the MongoDB API on mongoeco) until a
sweep submitted with `xt run` completes with the same records as on the embedded default."""
import functools
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
            "XT_LOCAL_COMPUTE_HOME", "XT_HEARTBEAT_TIMEOUT", "PYTHON_SCRIPT_FILE_NAME"}
    assert used <= set(settings) and settings["PYTHON_SCRIPT_FILE_NAME"] == "xt_functions.py"
    assert not [k for k, v in settings.items() if "AccountKey=" in v or "SharedAccessKey=" in v or "password" in v.lower()]


def azure_config(azurite, broker, mongo, tag):
    return f"""
external-services:
  team-store: {{type: blob, connection-string: "{azurite}", container: xt-{tag}}}
  team-bus: {{type: servicebus, connection-string: "{broker}", jobs-queue: jobs-{tag}, events-queue: events-{tag}}}
  team-stats: {{type: mongo, connection-string: "{mongo}", database: xt_{tag}}}
xt-services: {{storage: team-store, queue: team-bus, stats: team-stats}}
"""


def test_a_sweep_runs_end_to_end_through_the_function_entry_points(tmp_path, project, azurite_connection_string,
                                                                   servicebus_connection_string, mongo_uri, monkeypatch):
    from azure.functions.servicebus import ServiceBusMessage

    from function_app import settings
    from xt_submit.adapters.local_compute import LocalCompute, LocalExecutor
    from xt_submit.adapters.queue_publisher import QueuePublisher
    from xt_submit.adapters.servicebus_queue import ServiceBusQueue

    sweep = ["train.py", "--lr=[0.1,0.2]", "--opt=[sgd,adam]"]
    reference = project.json("run", "--wait", *sweep)  # the embedded default, for comparison
    expected = {r["name"].split(".")[1]: r for r in project.json("list", "runs", "--job", reference["job"])}
    project.stop_host()
    compute_home = tmp_path / "azure-compute"  # the machine that runs the Azure path's tasks

    (project.code / "xt_config.yaml").write_text(
        azure_config(azurite_connection_string, servicebus_connection_string, mongo_uri, "e2e"))
    submit = subprocess.Popen([sys.executable, "-m", "xt_submit.cli", "run", "--json", *sweep], cwd=project.code,
                              env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # the app's settings, as a deployment would set them
    for name, value in {"XT_STORAGE": azurite_connection_string, "XT_STORAGE_CONTAINER": "xt-e2e",
                        "XT_SERVICEBUS": servicebus_connection_string, "XT_JOBS_QUEUE": "jobs-e2e",
                        "XT_EVENTS_QUEUE": "events-e2e", "XT_MONGO": mongo_uri, "XT_MONGO_DATABASE": "xt_e2e",
                        "XT_LOCAL_COMPUTE_HOME": str(compute_home),
                        "INVOCATIONS": str(tmp_path / "azure-invocations.txt")}.items():  # the training script's
        monkeypatch.setenv(name, value)
    settings.ports.cache_clear()
    ports = settings.ports()
    functions = {f.get_function_name(): f.get_user_function() for f in indexed_functions()}
    bus = ServiceBusQueue(servicebus_connection_string, max_wait_time=1.0)
    executor = LocalExecutor(LocalCompute(str(compute_home / "compute.db")), compute_home, ports.storage,
                             QueuePublisher(bus, jobs_queue="jobs-e2e", events_queue="events-e2e"))

    def deliver(queue, function):
        for message in bus.receive(queue, max_messages=10):
            functions[function](ServiceBusMessage(body=message.body, message_id=str(message.id),
                                                  application_properties={}, user_properties={}))
            bus.complete(message)

    job, deadline = None, time.time() + 120
    while time.time() < deadline:
        deliver("jobs-e2e", "dispatch")
        executor.poll()  # the machine that runs the tasks
        deliver("events-e2e", "run_events")
        if job is None and submit.poll() is not None:
            out, err = submit.communicate()
            assert submit.returncode == 0, err
            job = json.loads(out)["job"]
        if job and ports.stats.get_job("ws1", job)["status"] in ("completed", "error", "cancelled"):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the job did not complete through the functions")
    functions["heartbeat_timer"](None)  # the timer runs too, and finds no silent run
    bus.close()

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
