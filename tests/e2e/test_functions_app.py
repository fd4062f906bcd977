"""The Functions app, run as the Functions host runs it: the Python worker (azure_functions_runtime)
started on the repository root over the host's gRPC contract, its functions' bindings read from the
worker's metadata, and every invocation an InvocationRequest (tests/support/functions_host.py).
Driven end to end on the Azure path (Blob Storage on Azurite, Service Bus on the test broker, the
MongoDB API on mongoeco) until a sweep submitted with `xt run`, or a zip dropped into uploads/,
completes with the same records as on the embedded default."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.functions_host import ServiceBusTrigger, blob_created_event

ROOT = Path(__file__).resolve().parents[2]
TRIGGER_QUEUES = {"dispatch": "jobs", "run_events": "events", "upload_received": "uploads"}


def test_the_worker_indexes_the_app_with_its_functions_and_bindings(functions_host):
    bindings = {name: [(b["type"], b["direction"], b.get("queueName") or b.get("schedule"), b.get("connection"))
                       for b in spec] for name, spec in functions_host.bindings().items()}
    assert bindings == {
        "dispatch": [("serviceBusTrigger", "IN", "%XT_JOBS_QUEUE%", "XT_SERVICEBUS")],
        "run_events": [("serviceBusTrigger", "IN", "%XT_EVENTS_QUEUE%", "XT_SERVICEBUS")],
        # Event Grid delivers the storage's BlobCreated events for uploads/ to this queue: the
        # function gets the blob's name, never its bytes
        "upload_received": [("serviceBusTrigger", "IN", "%XT_UPLOADS_QUEUE%", "XT_SERVICEBUS")],
        "heartbeat_timer": [("timerTrigger", "IN", "0 */1 * * * *", None)],
    }
    settings = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    used = {"XT_JOBS_QUEUE", "XT_EVENTS_QUEUE", "XT_UPLOADS_QUEUE", "XT_STORAGE_CONTAINER", "XT_MONGO",
            "XT_MONGO_DATABASE", "XT_TASKS_QUEUE", "XT_HEARTBEAT_TIMEOUT", "PYTHON_SCRIPT_FILE_NAME"}
    assert used <= set(settings) and settings["PYTHON_SCRIPT_FILE_NAME"] == "xt_functions.py"
    assert not [k for k, v in settings.items() if "AccountKey=" in v or "SharedAccessKey=" in v or "password" in v.lower()]


def test_host_json_leaves_retries_to_the_app_and_never_samples_its_audit_lines():
    host = json.loads((ROOT / "host.json").read_text())
    # host.json's retry block does not apply to Service Bus triggers: the app backs off itself
    assert "retry" not in host
    excluded = host["logging"]["applicationInsights"]["samplingSettings"]["excludedTypes"].split(";")
    assert {"Trace", "Exception"} <= set(excluded)  # the audit lines are Traces, failures Exceptions
    assert host["extensions"]["serviceBus"]["autoCompleteMessages"] is True


def azure_config(azurite, broker, mongo, tag):
    return f"""
external-services:
  team-store: {{type: blob, connection-string: "{azurite}", container: xt-{tag}}}
  team-bus: {{type: servicebus, connection-string: "{broker}", jobs-queue: jobs-{tag}, events-queue: events-{tag}, tasks-queue: tasks-{tag}}}
  team-stats: {{type: mongo, connection-string: "{mongo}", database: xt_{tag}}}
xt-services: {{storage: team-store, queue: team-bus, stats: team-stats}}
"""


class AzureDeployment:
    """The Functions app as a deployment runs it (the worker, its settings, the host's Service Bus
    trigger delivering its queues), and the agent (`xt serve` with the team's config) on a machine
    of its own."""

    def __init__(self, tmp_path, project, azurite, broker, mongo_uri, tag, monkeypatch, functions_host, agent_env=None,
                 agent=True):
        from function_app import settings

        self.tag, self.project, self.host = tag, project, functions_host
        self.container = f"xt-{tag}"
        for name, value in {"XT_STORAGE": azurite, "XT_STORAGE_CONTAINER": self.container, "XT_SERVICEBUS": broker,
                            "XT_JOBS_QUEUE": f"jobs-{tag}", "XT_EVENTS_QUEUE": f"events-{tag}",
                            "XT_UPLOADS_QUEUE": f"uploads-{tag}", "XT_TASKS_QUEUE": f"tasks-{tag}",
                            "XT_MONGO": mongo_uri, "XT_MONGO_DATABASE": f"xt_{tag}"}.items():
            monkeypatch.setenv(name, value)
        settings.reset()
        self.queues = settings.queues()
        self.bus = self.queues.bus
        self.ports = settings.ports()
        self.trigger = ServiceBusTrigger(functions_host, broker)
        self.agent = subprocess.Popen([sys.executable, "-m", "xt_submit.cli", "serve"], cwd=project.code,
                                      env=dict(project.env, XT_HOME=str(tmp_path / f"agent-{tag}"), **(agent_env or {})),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) if agent else None

    def deliver_all(self) -> int:
        return sum(self.trigger.deliver(f"{queue}-{self.tag}", function) for function, queue in TRIGGER_QUEUES.items())

    def drive(self, until, what: str, timeout=120):
        """Deliver every queue until `until()` is true."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.deliver_all()
            assert self.agent is None or self.agent.poll() is None, self.agent.stderr.read()
            value = until()
            if value:
                return value
            time.sleep(0.05)
        pytest.fail(f"{what} did not happen through the functions (failures: {self.trigger.failures})")

    def job_ended(self, job):
        return job and self.ports.stats.get_job("ws1", job)["status"] in ("completed", "error", "cancelled")

    def run(self, *args, timeout=120):
        """`xt run ARGS` with the team's config, driven until its job ends; returns the job's name."""
        submit = subprocess.Popen([sys.executable, "-m", "xt_submit.cli", "run", "--json", *args], cwd=self.project.code,
                                  env=self.project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        job = []

        def ended():
            if not job and submit.poll() is not None:
                out, err = submit.communicate()
                assert submit.returncode == 0, (err, self.trigger.failures, self.host.audit.lines[-5:])
                job.append(json.loads(out)["job"])
            return job and self.job_ended(job[0]) and job[0]

        return self.drive(ended, "the job's end", timeout)

    def timer(self):
        response = self.host.timer_invocation("heartbeat_timer")
        assert self.host.succeeded(response), self.host.failure(response)

    def close(self):
        self.trigger.close()
        if self.agent is not None:
            self.agent.terminate()
            self.agent.wait(timeout=30)


def test_a_sweep_runs_end_to_end_through_the_worker(tmp_path, project, azurite_connection_string,
                                                  servicebus_connection_string, mongo_uri, monkeypatch, functions_host):
    sweep = ["train.py", "--lr=[0.1,0.2]", "--opt=[sgd,adam]"]
    reference = project.json("run", "--wait", *sweep)  # the embedded default, for comparison
    expected = {r["name"].split(".")[1]: r for r in project.json("list", "runs", "--job", reference["job"])}
    project.stop_host()
    (project.code / "xt_config.yaml").write_text(
        azure_config(azurite_connection_string, servicebus_connection_string, mongo_uri, "e2e"))
    azure = AzureDeployment(tmp_path, project, azurite_connection_string, servicebus_connection_string, mongo_uri, "e2e",
                            monkeypatch, functions_host, agent_env={"INVOCATIONS": str(tmp_path / "azure-invocations.txt")})
    try:
        job = azure.run(*sweep)
        azure.timer()  # the timer runs too, and finds no silent run
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
    # the app published the job's page when its last run ended; --link gives a read-only link to it
    from xt_submit.domain import layout

    page = ports.storage.read(layout.job_report_key("ws1", job)).decode()
    assert page.startswith("<!DOCTYPE html>") and all(name in page for name in (r["name"] for r in listed))
    assert [line["key"] for line in functions_host.audit.lines if line["outcome"] == "report published"] == [
        layout.job_report_key("ws1", job)]  # once: when the job's last run ended
    link = project.xt("report", "--job", job, "--link").stdout.strip()
    assert link.startswith("http") and "sig=" in link and layout.job_report_key("ws1", job) in link


def test_with_the_teams_services_a_pool_sweep_runs_on_the_agents_boxes(tmp_path, project, ssh_boxes,
                                                                       azurite_connection_string,
                                                                       servicebus_connection_string, mongo_uri,
                                                                       monkeypatch, functions_host):
    """The agent takes the tasks off the queue and runs them on the boxes of its config; each box
    fetches the code itself with a read-only link, and the outputs land in Blob Storage."""
    from test_pool_e2e import POOL_SCRIPT, pool_config

    (project.code / "train.py").write_text(POOL_SCRIPT)
    (project.code / "xt_config.yaml").write_text(
        azure_config(azurite_connection_string, servicebus_connection_string, mongo_uri, "pool")
        + pool_config(ssh_boxes, tmp_path))
    azure = AzureDeployment(tmp_path, project, azurite_connection_string, servicebus_connection_string, mongo_uri,
                            "pool", monkeypatch, functions_host)
    try:
        job = azure.run("--target", "pool", "train.py", "--lr=[0.1,0.2,0.3,0.4]")
    finally:
        azure.close()
    runs = azure.ports.stats.list_runs("ws1", job=job)
    assert [r["status"] for r in runs] == ["completed"] * 4, [(r["status"], r["reason"]) for r in runs]
    assert {r["node_id"] for r in runs} == {"box1", "box2"}
    for run in runs:
        where = json.loads(azure.ports.storage.read(f"workspaces/ws1/runs/{run['name']}/output/where.json"))
        assert run["metrics"]["loss"] == pytest.approx(where["lr"] * 10 / 3)
    agent_log = (tmp_path / "agent-pool" / "agent.log").read_text()
    assert "TasksQueued" in agent_log


# --- failures: backoff by re-sending later, dead-lettering with the reason ---------------------------
def _free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _heartbeat(tag):
    from xt_submit.domain.messages import RunHeartbeat, encode

    return encode(RunHeartbeat(workspace="ws1", job="job1", run="run1.1", node_id="n1", at=1.0))


def _store_down(monkeypatch):
    """The stats store goes away (nothing listens there): every handler touching it fails
    transiently, and so does building the ports; a new instance of the app picks it up."""
    from function_app import settings

    monkeypatch.setenv("XT_MONGO", f"mongodb://127.0.0.1:{_free_port()}/?serverSelectionTimeoutMS=300&connectTimeoutMS=300")
    settings.reset()


def test_a_transient_failure_is_retried_later_not_at_once(tmp_path, project, azurite_connection_string,
                                                         servicebus_connection_string, mongo_uri, monkeypatch,
                                                         functions_host):
    from function_app import settings
    from xt_submit.domain.delivery import RETRY_DELAYS_SECONDS

    from xt_submit.domain.messages import JobManifest
    from xt_submit.domain.records import new_runs

    azure = AzureDeployment(tmp_path, project, azurite_connection_string, servicebus_connection_string, mongo_uri,
                            "retry", monkeypatch, functions_host, agent=False)
    manifest = JobManifest(workspace="ws1", experiment="e", script="train.py", command="python train.py")
    azure.ports.stats.insert_runs(new_runs(manifest, job="job1", number=1, plan=[("run1.1", "python train.py", {})],
                                           created=1.0))  # the run the heartbeat is about
    _store_down(monkeypatch)
    try:
        azure.bus.send("events-retry", [_heartbeat("retry")])
        assert azure.trigger.deliver("events-retry", "run_events") == 1
        failed_at = time.monotonic()
        (retrying,) = [line for line in functions_host.audit.lines if line["outcome"] == "retrying"
                       and line.get("run") == "run1.1"][-1:]
        assert retrying["level"] == "ERROR" and retrying["attempt"] == 1
        assert retrying["retry_in_s"] == RETRY_DELAYS_SECONDS[0] and "ServerSelectionTimeoutError" in retrying["reason"]
        assert azure.trigger.failures == []  # this delivery completed: no immediate redelivery
        assert azure.trigger.deliver("events-retry", "run_events") == 0  # the copy is not visible yet
        monkeypatch.setenv("XT_MONGO", mongo_uri)  # the store is back (a new instance picks it up)
        settings.reset()
        azure.drive(lambda: any(line["outcome"] == "ok" and line.get("run") == "run1.1"
                                for line in functions_host.audit.lines), "the retried heartbeat", timeout=60)
        assert time.monotonic() - failed_at >= RETRY_DELAYS_SECONDS[0] - 1.0  # the broker's timer ticks at 0.25 s
    finally:
        azure.close()
    assert azure.bus.peek("events-retry/$DeadLetterQueue") == []


def test_a_permanent_failure_is_dead_lettered_with_its_reason_and_handled_once(
        tmp_path, project, azurite_connection_string, servicebus_connection_string, mongo_uri, monkeypatch,
        functions_host):
    azure = AzureDeployment(tmp_path, project, azurite_connection_string, servicebus_connection_string, mongo_uri,
                            "poison", monkeypatch, functions_host, agent=False)
    body = b'{"type": "job_submitted", "version": 1}'  # fields missing: can never succeed
    try:
        azure.bus.send("jobs-poison", [body])
        azure.drive(lambda: azure.bus.peek("jobs-poison/$DeadLetterQueue"), "the dead-lettering", timeout=60)
    finally:
        azure.close()
    (dead,) = azure.bus.peek("jobs-poison/$DeadLetterQueue")
    assert dead["body"] == body
    assert dead["reason"].startswith("dispatch: ") and "submission_id" in dead["reason"]
    outcomes = [line["outcome"] for line in functions_host.audit.lines if line["function"] == "dispatch"
                and line["outcome"] in ("dead-lettered", "dead-lettering")]
    # handled once; then the flagged copy is refused on each delivery until Service Bus dead-letters it
    assert outcomes == ["dead-lettered"] + ["dead-lettering"] * 5


def test_a_message_past_its_last_retry_is_dead_lettered(tmp_path, project, azurite_connection_string,
                                                        servicebus_connection_string, mongo_uri, monkeypatch,
                                                        functions_host):
    from xt_submit.domain.delivery import ATTEMPT_PROPERTY, RETRY_DELAYS_SECONDS

    azure = AzureDeployment(tmp_path, project, azurite_connection_string, servicebus_connection_string,
                            mongo_uri, "lastretry", monkeypatch, functions_host, agent=False)
    _store_down(monkeypatch)
    try:
        azure.bus.send_later("events-lastretry", _heartbeat("x"), delay_seconds=0, message_id="m1",
                                   properties={ATTEMPT_PROPERTY: len(RETRY_DELAYS_SECONDS)})
        azure.drive(lambda: azure.bus.peek("events-lastretry/$DeadLetterQueue"), "the dead-lettering", timeout=60)
    finally:
        azure.close()
    (dead,) = azure.bus.peek("events-lastretry/$DeadLetterQueue")
    assert dead["reason"].startswith(f"run_events: gave up after {len(RETRY_DELAYS_SECONDS) + 1} attempts: "
                                     "ServerSelectionTimeoutError")


def test_a_zip_dropped_into_uploads_runs_through_event_grid_and_the_worker(
        tmp_path, project, azurite_connection_string, servicebus_connection_string, mongo_uri, monkeypatch,
        functions_host):
    """Another system drops a zip made by `xt run --to-zip` into uploads/ on Azurite; Event Grid's
    BlobCreated event (its documented schema, sent here as Event Grid would) reaches the uploads
    queue; the upload, dispatch and run-event functions run in the worker, the agent runs the runs,
    the stats land in the Mongo peer, and the result beside the zip names the job."""
    from azure.storage.blob import BlobServiceClient

    (project.code / "xt_config.yaml").write_text(
        azure_config(azurite_connection_string, servicebus_connection_string, mongo_uri, "drop"))
    drop = tmp_path / "drop.zip"
    project.xt("run", "--to-zip", str(drop), "train.py", "--lr=[0.1,0.2]")
    azure = AzureDeployment(tmp_path, project, azurite_connection_string, servicebus_connection_string, mongo_uri,
                            "drop", monkeypatch, functions_host)
    service = BlobServiceClient.from_connection_string(azurite_connection_string)
    service.get_blob_client(azure.container, "uploads/ci-7.zip").upload_blob(drop.read_bytes())
    azure.bus.send("uploads-drop", [blob_created_event(service.url, azure.container, "uploads/ci-7.zip",
                                                             drop.stat().st_size)])

    def result():
        try:
            found = json.loads(azure.ports.storage.read("uploads/ci-7.result.json"))
        except Exception:  # not written yet
            return None
        return found if found["status"] == "submitted" and azure.job_ended(found["job"]) else None

    try:
        outcome = azure.drive(result, "the dropped job's end")
    finally:
        azure.close()
    runs = azure.ports.stats.list_runs("ws1", job=outcome["job"])
    assert sorted((r["hparams"]["lr"], r["status"]) for r in runs) == [(0.1, "completed"), (0.2, "completed")]
    assert sorted(outcome["runs"]) == sorted(r["name"] for r in runs)
    audited = {(line["function"], line.get("event"), line["outcome"]) for line in functions_host.audit.lines
               if line.get("workspace") == "ws1" or line["function"] == "upload_received"}
    assert {("upload_received", "UploadReceived", "ok"), ("dispatch", "JobSubmitted", "ok"),
            ("run_events", "RunFinished", "ok")} <= audited
