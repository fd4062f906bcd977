"""The Azure Batch compute adapter through the real azure-batch SDK, against a transport that
answers like the Batch service and ARM (tests/peers/batch_service.py): no Batch emulator exists.
Code SAS URLs come from real Blob Storage (Azurite)."""
import json
import re
import time
import urllib.parse
import uuid

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport

from xt_submit import handlers
from support.azurite import AZURITE_KEY
from xt_submit.node_kit import code_archive
from xt_submit.domain import layout
from xt_submit.adapters.compute.batch import BatchSetupError, NodeServices, batch_compute_from, node_services_from
from xt_submit.services.batch_target import publish_node_package
from xt_submit.config import ComputeTarget
from xt_submit.domain.messages import JobSubmitted, RunTask, decode_task
from xt_submit.ports import Ports

from peers.batch_service import ACCOUNT_URL, FakeBatchService

ACCOUNT = {"type": "batch", "account-url": ACCOUNT_URL,
           "resource-id": "/subscriptions/sub1/resourceGroups/xt-vision/providers/Microsoft.Batch/batchAccounts/xtacct",
           "node-identity": "/subscriptions/sub1/resourceGroups/xt-vision/providers/Microsoft.ManagedIdentity/"
                            "userAssignedIdentities/xt-nodes",
           "node-identity-client-id": "11111111-2222-3333-4444-555555555555"}
SERVICES = NodeServices("https://xtvision.blob.core.windows.net", "xtdata", "xt-vision.servicebus.windows.net", "xt-events")
POOL = "/pools/xt-gpu"


class StaticCredential:
    def get_token(self, *scopes, **kwargs):
        return AccessToken("test-token", int(time.time()) + 3600)


@pytest.fixture
def blob(azurite_connection_string):
    from xt_submit.adapters.storage.blob import BlobStorage

    storage = BlobStorage(f"xt-batch-{uuid.uuid4().hex[:8]}", connection_string=azurite_connection_string)
    storage.ensure_container()
    return storage


@pytest.fixture
def fake():
    return FakeBatchService()


def target(**overrides):
    fields = dict(service="batch", vm_size="Standard_NC6s_v3", image="microsoft-dsvm:ubuntu-hpc:2204:latest", nodes=4,
                  low_pri=True, concurrent=2, account="team-batch", preemption_retries=1)
    fields.update(overrides)
    return ComputeTarget(**fields)


def compute_for(fake, blob, tmp_path, **overrides):
    session = requests.Session()
    session.mount("https://", fake)
    wheel = tmp_path / "xt_pipeline-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"a wheel")
    package = publish_node_package(blob, str(wheel))
    return batch_compute_from("gpu", target(**overrides), "team-batch", ACCOUNT, StaticCredential(), blob, SERVICES,
                              package, transport=RequestsTransport(session=session))


def ports_for(compute, blob, tmp_path):
    from xt_submit.adapters.stats.sqlite import SqliteStats

    return Ports(storage=blob, stats=SqliteStats(str(tmp_path / "stats.db")), compute=compute, publisher=None)


def dispatch(ports, tmp_path, submission, hp_space):
    from support.pipeline import make_manifest

    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "train.py").write_text("print('hi')\n")
    snap = code_archive.snapshot_code(["."], str(src))
    ports.storage.write(layout.code_key(snap.sha256), snap.data)
    manifest = make_manifest(layout.code_key(snap.sha256), snap.sha256, hp_space=hp_space, target="gpu", concurrent=2)
    return handlers.dispatch_job(JobSubmitted(submission_id=submission, manifest=manifest, submitted_at=1.0), ports)


def all_text(fake):
    return json.dumps([[r[0], r[2], r[3], r[4]] for r in fake.requests])


def test_a_sweep_becomes_one_job_of_tasks_on_a_pool_reused_by_the_next_job(fake, blob, tmp_path):
    compute = compute_for(fake, blob, tmp_path)
    ports = ports_for(compute, blob, tmp_path)
    fake.throttle = [("POST", "/jobs", 429), ("POST", r"/jobs/[^/]+/addtaskcollection", 503)]
    first = dispatch(ports, tmp_path, "sub-1", {"lr": [0.1, 0.2, 0.3]})

    # the pool: missing (404 PoolNotFound), so created once through ARM, with the nodes' identity
    assert [r[0] for r in fake.calls(path=POOL)] == ["GET"]
    (put,) = [r for r in fake.requests if r[0] == "PUT"]
    assert put[2].endswith("/batchAccounts/xtacct/pools/xt-gpu") and put[3]["api-version"]
    assert put[4]["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {ACCOUNT["node-identity"]: {}}}
    props = put[4]["properties"]
    assert props["vmSize"] == "Standard_NC6s_v3" and props["taskSlotsPerNode"] == 2
    assert props["deploymentConfiguration"]["virtualMachineConfiguration"]["imageReference"] == {
        "publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204", "version": "latest"}
    formula = props["scaleSettings"]["autoScale"]["formula"]
    assert "$TargetLowPriorityNodes = min(4, ceil($pending / 2));" in formula and "$TargetDedicatedNodes = 0;" in formula
    start = props["startTask"]
    (package,) = start["resourceFiles"]
    assert package["identityReference"] == {"resourceId": ACCOUNT["node-identity"]} and "?" not in package["httpUrl"]
    assert "xt-venv" in start["commandLine"] and "[azure]" in start["commandLine"] and start["waitForSuccess"]
    # no mount-shares: no blobfuse mount (one that fails leaves the node unusable), no mount for the runs
    assert "mountConfiguration" not in props

    # one Batch job per XT job (created after one 429), its tasks in one collection (after one 503)
    assert len(fake.calls("POST", "/jobs")) == 2 and len(fake.calls("POST", r"/jobs/[^/]+/addtaskcollection")) == 2
    job = fake.jobs["xt-ws1-job1"]
    assert job["poolInfo"] == {"poolId": "xt-gpu"} and job["onAllTasksComplete"] == "terminatejob"
    assert {e["name"]: e["value"] for e in job["commonEnvironmentSettings"]} == {
        "XT_STORAGE_ACCOUNT_URL": SERVICES.storage_account_url, "XT_STORAGE_CONTAINER": "xtdata",
        "XT_SERVICEBUS_NAMESPACE": SERVICES.servicebus_namespace, "XT_EVENTS_QUEUE": "xt-events",
        "XT_IDENTITY_CLIENT_ID": ACCOUNT["node-identity-client-id"]}
    tasks = fake.tasks["xt-ws1-job1"]
    assert sorted(tasks) == ["run1-1", "run1-2", "run1-3"] == sorted(batch_ids(first.runs))
    task = tasks["run1-2"]
    assert task["displayName"] == "run1.2" and "xt_submit.entrypoints.batch_node" in task["commandLine"]
    (code,) = task["resourceFiles"]
    url = urllib.parse.urlsplit(code["httpUrl"])
    assert url.path.endswith("/code/" + url.path.rsplit("/", 1)[1]) and code["filePath"] == "xt/code.zip"
    assert urllib.parse.parse_qs(url.query)["sp"] == ["r"]  # read-only, this one blob
    run_task = decode_task({e["name"]: e["value"] for e in task["environmentSettings"]}["XT_TASK"].encode())
    assert run_task.run == "run1.2" and run_task.command.endswith("--lr=0.2") and run_task.target == "gpu"
    assert run_task.storage_mount == "" and run_task.share_cache_dir == "$AZ_BATCH_NODE_SHARED_DIR/xt-share-cache"

    # the second job reuses the pool: no second create, no resize while the target is unchanged
    dispatch(ports, tmp_path, "sub-2", {"lr": [0.5, 0.6]})
    assert len([r for r in fake.requests if r[0] == "PUT"]) == 1 and len(fake.pools) == 1
    assert sorted(fake.tasks["xt-ws1-job2"]) == ["run2-1", "run2-2"]
    assert not fake.calls("POST", POOL + "/enableautoscale") and not fake.calls("PATCH", POOL)

    # a redelivered dispatch adds nothing twice (JobExists, TaskExists)
    handlers.dispatch_job(JobSubmitted(submission_id="sub-2", manifest=manifest_of(ports, "job2"), submitted_at=1.0),
                          ports)
    assert len(fake.calls("POST", "/jobs")) == 4  # the second answered 409 JobExists
    assert sorted(fake.tasks["xt-ws1-job2"]) == ["run2-1", "run2-2"]

    # the target grows: the same pool is resized to the new cap
    bigger = compute_for(fake, blob, tmp_path, nodes=8)
    bigger.submit([decode_task(json.dumps({**json.loads(run_task_json(task)), "job": "job3", "run": "run3.1"}).encode())])
    (resize,) = fake.calls("POST", POOL + "/enableautoscale")
    assert "min(8, " in resize[4]["autoScaleFormula"] and fake.pools["xt-gpu"]["autoScaleFormula"] == resize[4]["autoScaleFormula"]
    assert len([r for r in fake.requests if r[0] == "PUT"]) == 1

    # no secret anywhere the service was sent: no key, no connection string, no SAS that can write
    text = all_text(fake)
    assert AZURITE_KEY not in text and "AccountKey" not in text and "SharedAccessKey" not in text
    assert set(re.findall(r"[?&]sp=([a-z]+)", text)) == {"r"}


def batch_ids(runs):
    return [run.replace(".", "-") for run in runs]


def run_task_json(task):
    return {e["name"]: e["value"] for e in task["environmentSettings"]}["XT_TASK"]


def manifest_of(ports, job):
    from xt_submit.domain.messages import decode_manifest

    return decode_manifest(ports.storage.read(layout.manifest_key("ws1", job)))


def test_preemption_requeues_then_the_run_ends_as_an_error_past_the_retries(fake, blob, tmp_path):
    compute = compute_for(fake, blob, tmp_path)  # preemption-retries: 1
    ports = ports_for(compute, blob, tmp_path)
    dispatch(ports, tmp_path, "sub-1", {"lr": [0.1, 0.2]})
    fake.start("xt-ws1-job1", "run1-1")
    fake.start("xt-ws1-job1", "run1-2")
    assert compute.check_tasks() == []

    fake.preempt("xt-ws1-job1", "run1-1", at=1_700_000_100.0)
    (event,) = compute.check_tasks()
    assert (event.run, event.job, event.workspace, event.preemptions, event.retries, event.node_id) == (
        "run1.1", "job1", "ws1", 1, 1, "tvm-1")
    assert event.requeued_at == 1_700_000_100.0
    handlers.run_preempted(event, ports)
    assert ports.stats.get_run("ws1", "run1.1")["status"] == "preempted"
    assert not fake.calls("POST", r"/jobs/.*/terminate")  # Batch's requeue stands

    fake.start("xt-ws1-job1", "run1-1")  # it runs again on another node ...
    assert compute.check_tasks() == []
    fake.preempt("xt-ws1-job1", "run1-1", at=1_700_000_200.0)  # ... and is preempted once more
    (event,) = compute.check_tasks()
    assert event.preemptions == 2
    assert [r[2] for r in fake.calls("POST", r"/jobs/.*/terminate")] == ["/jobs/xt-ws1-job1/tasks/run1-1/terminate"]
    assert fake.tasks["xt-ws1-job1"]["run1-1"]["state"] == "completed"  # never requeued again
    handlers.run_preempted(event, ports)
    run = ports.stats.get_run("ws1", "run1.1")
    assert run["status"] == "error" and "2 preemptions, more than preemption-retries (1)" in run["reason"]
    (again,) = compute.check_tasks()  # repeated until the job ends, in case the first report was lost
    assert again == event and len(fake.calls("POST", r"/jobs/.*/terminate")) == 1


def test_cancel_terminates_tasks_and_returns_the_runs_that_never_started(fake, blob, tmp_path):
    compute = compute_for(fake, blob, tmp_path)
    ports = ports_for(compute, blob, tmp_path)
    dispatch(ports, tmp_path, "sub-1", {"lr": [0.1, 0.2, 0.3]})
    fake.start("xt-ws1-job1", "run1-2")
    fake.tasks["xt-ws1-job1"]["run1-3"]["state"] = "completed"
    assert compute.cancel("ws1", ["run1.1", "run1.2", "run1.3", "run9.1"]) == ["run1.1"]
    assert sorted(r[2] for r in fake.calls("POST", r"/jobs/.*/terminate")) == [
        "/jobs/xt-ws1-job1/tasks/run1-1/terminate", "/jobs/xt-ws1-job1/tasks/run1-2/terminate"]
    assert {t["state"] for t in fake.tasks["xt-ws1-job1"].values()} == {"completed"}
    assert fake.jobs["xt-ws1-job1"]["state"] == "completed"  # all tasks done: Batch ends the job
    assert fake.calls("GET", "/jobs/xt-ws1-job9/tasks/run9-1")  # answered 404 JobNotFound: not this pool's run


def test_status_reports_the_pool_its_nodes_and_its_tasks(fake, blob, tmp_path):
    compute = compute_for(fake, blob, tmp_path)
    assert compute.status()["allocation_state"] == "none"  # no pool yet (404)
    ports = ports_for(compute, blob, tmp_path)
    dispatch(ports, tmp_path, "sub-1", {"lr": [0.1, 0.2, 0.3]})
    dispatch(ports, tmp_path, "sub-2", {"lr": [0.4, 0.5]})
    fake.start("xt-ws1-job1", "run1-1")
    fake.pools["xt-gpu"].update(currentLowPriorityNodes=2, targetLowPriorityNodes=3, busyNodes=1, idleNodes=1)
    assert compute.status() == {"target": "gpu", "pool": "xt-gpu", "vm_size": "Standard_NC6s_v3", "low_pri": True,
                                "allocation_state": "steady", "current_nodes": 2, "target_nodes": 3, "nodes_busy": 1,
                                "nodes_idle": 1, "queued_tasks": 4, "running_tasks": 1}
    assert compute.check_tasks() == []
    assert [r for r in fake.calls("GET", "/jobs/xt-ws1-job1/tasks") if "skip" in r[3]]  # lists follow odata.nextLink


def test_services_known_only_by_connection_strings_are_refused_in_one_line():
    with pytest.raises(BatchSetupError) as info:
        node_services_from("external-services.team-store", {"type": "blob", "connection-string": "secret"},
                           "external-services.team-bus", {"type": "servicebus", "namespace": "ns"}, "events")
    assert str(info.value).startswith("external-services.team-store: a batch target needs the storage account-url")
    assert "secret" not in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(BatchSetupError, match="^XT_SERVICEBUS: a batch target needs the Service Bus namespace"):
        node_services_from("XT_STORAGE", {"account-url": "https://a"}, "XT_SERVICEBUS", {"connection-string": "x"}, "e")
    with pytest.raises(BatchSetupError, match="^external-services.team-batch.node-identity: expected the resource id"):
        batch_compute_from("gpu", target(), "team-batch", {**ACCOUNT, "node-identity": ""}, StaticCredential(), None,
                           SERVICES, "tools/x.whl")
    with pytest.raises(BatchSetupError, match="^compute-targets.gpu.vm-size: required"):
        batch_compute_from("gpu", target(vm_size=None), "team-batch", ACCOUNT, StaticCredential(), None, SERVICES, "k")


def test_the_node_entry_point_runs_the_task_from_its_resource_file(fake, blob, tmp_path):
    """What the task's command line does on a node, with the code Batch fetched and no download of it."""
    from xt_submit.adapters.storage.directory import DirectoryStorage
    from xt_submit.entrypoints.batch_node import run_task

    compute = compute_for(fake, blob, tmp_path)
    dispatch(ports_for(compute, blob, tmp_path), tmp_path, "sub-1", {"lr": [0.1]})
    task = fake.tasks["xt-ws1-job1"]["run1-1"]
    work = tmp_path / "node" / "wd"
    (work / "xt").mkdir(parents=True)
    run = decode_task(run_task_json(task).encode())
    (work / "xt" / "code.zip").write_bytes(blob.read(run.code_key))  # what Batch fetched with the SAS URL
    storage = DirectoryStorage(tmp_path / "node-storage")  # holds no code: the zip must come from the resource file
    sent = []

    class Publisher:
        def send_events(self, events):
            sent.extend(events)

    env = {**{e["name"]: e["value"] for e in task["environmentSettings"]}, "AZ_BATCH_NODE_ID": "tvm-7"}
    assert run_task(env, work, storage, Publisher()) == 0
    assert [type(e).__name__ for e in sent] == ["RunStarted", "RunFinished"]
    assert sent[-1].status == "completed" and sent[-1].node_id == "tvm-7"
    assert b"hi" in storage.read(layout.console_key("ws1", "run1.1"))
    assert isinstance(run, RunTask) and run.setup is None


def test_the_functions_app_routes_batch_targets_to_their_pool_and_the_rest_locally(fake, blob, tmp_path):
    from xt_submit.adapters.compute.router import ComputeRouter
    from xt_submit.adapters.compute.tasks import LocalCompute

    local = LocalCompute(str(tmp_path / "compute.db"))
    router = ComputeRouter(local, {"gpu": compute_for(fake, blob, tmp_path)})
    ports = ports_for(router, blob, tmp_path)
    dispatch(ports, tmp_path, "sub-1", {"lr": [0.1, 0.2]})  # target gpu
    code_key = manifest_of(ports, "job1").code_key
    router.submit([RunTask(workspace="ws1", experiment="e", job="job2", run="run2.1", command="python train.py",
                           code_key=code_key, target="local")])
    assert sorted(fake.tasks["xt-ws1-job1"]) == ["run1-1", "run1-2"] and "xt-ws1-job2" not in fake.jobs
    assert [t.run for t in local.launchable(10)] == ["run2.1"]
    assert router.cancel("ws1", ["run1.1", "run2.1"]) == ["run2.1", "run1.1"]
    fake.preempt("xt-ws1-job1", "run1-2")
    assert [e.run for e in router.check_tasks()] == ["run1.2"]


def test_a_batch_target_needs_the_teams_queue_and_storage(tmp_path):
    from xt_submit.services.targets import TargetError, kind_of
    from xt_submit.config import load_config

    (tmp_path / "xt_config.yaml").write_text(
        "external-services: {team-batch: {type: batch}}\n"
        "compute-targets: {gpu: {service: batch, account: team-batch, vm-size: Standard_NC6}}\n")
    with pytest.raises(TargetError, match=r"^xt-services.queue: gpu is a batch target, whose runs report to the "
                                               r"team's services; expected an external-services name here, got 'embedded'$"):
        cfg = load_config(cwd=tmp_path)
        kind_of(cfg, "gpu").check_submittable(cfg, "gpu")


def test_admin_batch_settings_upload_the_wheel_and_name_the_targets_for_the_app(blob, tmp_path):
    import json as jsonlib

    import msgspec

    from xt_submit.services.batch_target import app_settings
    from xt_submit.services.targets import TargetError
    from xt_submit.config import load_config

    account = {"type": "batch", "account-url": "https://teamxt.westus2.batch.azure.com",
               "resource-id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Batch/batchAccounts/teamxt",
               "node-identity": "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/n",
               "node-identity-client-id": "00000000-0000-0000-0000-000000000001"}
    (tmp_path / "xt_config.yaml").write_text(jsonlib.dumps({
        "external-services": {"team-batch": account,
                              "team-store": {"type": "blob", "account-url": "https://teamxt.blob.core.windows.net"},
                              "team-bus": {"type": "servicebus", "namespace": "teamxt.servicebus.windows.net"}},
        "xt-services": {"storage": "team-store", "queue": "team-bus"},
        "compute-targets": {"gpu": {"service": "batch", "account": "team-batch", "vm-size": "Standard_NC6s_v3",
                                    "nodes": 3, "low-pri": True}}}))
    cfg = load_config(cwd=tmp_path)
    wheel = tmp_path / "xt_pipeline-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    settings = app_settings(cfg, blob, str(wheel))
    assert blob.read(settings["XT_BATCH_NODE_PACKAGE"]) == wheel.read_bytes()
    targets = jsonlib.loads(settings["XT_BATCH_TARGETS"])
    assert targets["gpu"]["account"] == account
    assert msgspec.convert(targets["gpu"]["target"], ComputeTarget) == cfg.compute_targets["gpu"]  # as the app reads it
    with pytest.raises(TargetError, match=r"^--wheel: expected an xt-pipeline .whl file, got '/nowhere.whl'$"):
        app_settings(cfg, blob, "/nowhere.whl")


def test_a_mount_shares_pool_mounts_the_container_and_a_run_sees_its_shares_under_the_mounts_dir(
        fake, blob, tmp_path, monkeypatch):
    """With mount-shares: true, the pool's MountConfiguration as ARM documents it (blobfuse, by the nodes'
    identity, read-only), and on the node: a `mount` share is a folder of that mount, a `download` one a
    copy in the node's shared cache; XT_DATA_DIR / XT_MODEL_DIR say where, and no key travels."""
    from support.pipeline import make_manifest
    from xt_submit.adapters.storage.directory import DirectoryStorage
    from xt_submit.domain.messages import ShareSpec
    from xt_submit.entrypoints.batch_node import run_task

    compute = compute_for(fake, blob, tmp_path, mount_shares=True)
    ports = ports_for(compute, blob, tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(
        "import os\n"
        "print('data', os.environ['XT_DATA_DIR'], open(os.path.join(os.environ['XT_DATA_DIR'], 'x.txt')).read())\n"
        "print('model', os.environ['XT_MODEL_DIR'], open(os.path.join(os.environ['XT_MODEL_DIR'], 'w.bin')).read())\n")
    snap = code_archive.snapshot_code(["."], str(src))
    blob.write(layout.code_key(snap.sha256), snap.data)
    manifest = make_manifest(layout.code_key(snap.sha256), snap.sha256, hp_space={"lr": [0.1]}, target="gpu",
                             data=ShareSpec(path="mnist", action="mount"),
                             model=ShareSpec(path="ckpt", action="download"))
    handlers.dispatch_job(JobSubmitted(submission_id="sub-shares", manifest=manifest, submitted_at=1.0), ports)

    (put,) = [r for r in fake.requests if r[0] == "PUT"]
    assert put[4]["properties"]["mountConfiguration"] == [{"azureBlobFileSystemConfiguration": {
        "accountName": "xtvision", "containerName": "xtdata", "relativeMountPath": "xt-storage",
        "blobfuseOptions": "-o ro -o allow_other -o attr_timeout=240 -o entry_timeout=240 -o negative_timeout=120",
        "identityReference": {"resourceId": ACCOUNT["node-identity"]}}}]
    task = fake.tasks["xt-ws1-job1"]["run1-1"]
    run = decode_task(run_task_json(task).encode())
    assert run.data == ShareSpec(path="mnist", action="mount") and run.model.action == "download"
    assert run.storage_mount == "$AZ_BATCH_NODE_MOUNTS_DIR/xt-storage"
    assert run.share_cache_dir == "$AZ_BATCH_NODE_SHARED_DIR/xt-share-cache"

    # the node: Batch's mounts and shared dirs, blobfuse's view of the container, the node's storage client
    mounts, shared = tmp_path / "mounts", tmp_path / "shared"
    monkeypatch.setenv("AZ_BATCH_NODE_MOUNTS_DIR", str(mounts))
    monkeypatch.setenv("AZ_BATCH_NODE_SHARED_DIR", str(shared))
    data_dir = mounts / "xt-storage" / layout.share_prefix("ws1", "data", "mnist")
    data_dir.mkdir(parents=True)
    (data_dir / "x.txt").write_text("seven")
    storage = DirectoryStorage(tmp_path / "node-storage")
    storage.write(layout.share_prefix("ws1", "model", "ckpt") + "w.bin", b"weights")
    work = tmp_path / "node" / "wd"
    (work / "xt").mkdir(parents=True)
    (work / "xt" / "code.zip").write_bytes(blob.read(run.code_key))
    sent = []

    class Publisher:
        def send_events(self, events):
            sent.extend(events)

    env = {e["name"]: e["value"] for e in task["environmentSettings"]}
    assert run_task(env, work, storage, Publisher()) == 0
    assert sent[-1].status == "completed", sent[-1].reason
    console = storage.read(layout.console_key("ws1", "run1.1")).decode()
    assert f"data {str(data_dir).rstrip('/')} seven" in console
    (cached,) = (shared / "xt-share-cache").glob("[0-9a-f]*")
    assert f"model {cached} weights" in console and "model share" in console and "downloaded 1 files" in console
    assert AZURITE_KEY not in all_text(fake) and "accountKey" not in all_text(fake) and "sasKey" not in all_text(fake)
