"""Azure Batch compute (azure-batch): the Compute port for a compute target of service `batch`.

One pool per target, reused by every job and sized by an autoscale formula on pending tasks
(capped at the target's `nodes`, down to zero when idle); one Batch job per XT job, one task per
run. A task gets its code as a read-only SAS resource file and reports with the pool's
user-assigned managed identity: no key, write SAS or connection string reaches a node.

The pool is created through Azure Resource Manager, because only ARM can give a pool a managed
identity (the Batch data plane cannot); everything else goes through the Batch data plane.
Low-priority preemptions are found by `check_tasks` (the Functions app's timer calls it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shlex
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence

import msgspec

from xt_submit.domain import layout
from xt_submit.domain.errors import OneLineError
from xt_submit.domain.batch_node import CODE_FILE, TASK_ENV
from xt_submit.domain.messages import RunPreempted, RunTask, SetupSpec, encode
from xt_submit.ports import Compute

log = logging.getLogger("xt.batch")

ARM_ENDPOINT = "https://management.azure.com"
ARM_POOL_API_VERSION = "2024-07-01"
DEFAULT_IMAGE = "canonical:0001-com-ubuntu-server-jammy:22_04-lts:latest"
DEFAULT_NODE_AGENT = "batch.node.ubuntu 22.04"
AUTOSCALE_INTERVAL = "PT5M"  # the service's shortest
CODE_URL_SECONDS = 7 * 24 * 3600 - 3600  # a user delegation key lives at most 7 days: queued tasks fetch within it
TASKS_PER_REQUEST = 100  # addtaskcollection's limit
VENV = "$AZ_BATCH_NODE_SHARED_DIR/xt-venv"  # the shared dir is readable and writable by every task on the node
NODE_COMMAND = f'/bin/bash -c "{VENV}/bin/python -m xt_submit.entrypoints.batch_node"'
# A target with mount-shares: true gets a pool that mounts the storage container read-only with
# blobfuse, signed in as the nodes' identity, at $AZ_BATCH_NODE_MOUNTS_DIR/<STORAGE_MOUNT_PATH>: a job's
# `mount` share is a folder of it. Opt-in: a mount that fails (no role on the container, no blobfuse on
# the image) makes the node unusable, jobs without shares too. Batch sets mounts only when it creates a
# pool, so turning it on later needs the pool deleted (XT recreates it; its runs say so meanwhile).
STORAGE_MOUNT_PATH = "xt-storage"
STORAGE_MOUNT = f"$AZ_BATCH_NODE_MOUNTS_DIR/{STORAGE_MOUNT_PATH}"
BLOBFUSE_OPTIONS = "-o ro -o allow_other -o attr_timeout=240 -o entry_timeout=240 -o negative_timeout=120"
SHARE_CACHE = "$AZ_BATCH_NODE_SHARED_DIR/xt-share-cache"  # downloaded shares, for every task of the node


class BatchSetupError(OneLineError):
    """A batch target or account that cannot work as configured."""


@dataclass(frozen=True)
class NodeServices:
    """Where a node writes, by address only: it signs in with the pool's managed identity."""

    storage_account_url: str
    container: str
    servicebus_namespace: str
    events_queue: str


def node_services_from(storage_field: str, storage_spec: Dict[str, Any], queue_field: str,
                       queue_spec: Dict[str, Any], events_queue: str) -> NodeServices:
    """The services a node reports to; a service known only by a connection string cannot be
    reached with an identity (and its secret must never travel to a node)."""
    if not storage_spec.get("account-url"):
        raise BatchSetupError(f"{storage_field}: a batch target needs the storage account-url (its nodes sign in "
                              "with a managed identity), not a connection string")
    if not queue_spec.get("namespace"):
        raise BatchSetupError(f"{queue_field}: a batch target needs the Service Bus namespace (its nodes sign in "
                              "with a managed identity), not a connection string")
    return NodeServices(storage_spec["account-url"], storage_spec.get("container", "xtdata"),
                        queue_spec["namespace"], events_queue)


@dataclass(frozen=True)
class BatchAccount:
    """An `external-services` entry of type batch."""

    name: str
    account_url: str  # https://<account>.<region>.batch.azure.com
    resource_id: str  # ARM id of the account: pools are created there
    node_identity: str  # ARM id of the user-assigned identity the pool's nodes run as
    node_identity_client_id: str
    node_agent: str = DEFAULT_NODE_AGENT

    @classmethod
    def from_spec(cls, name: str, spec: Dict[str, Any]) -> "BatchAccount":
        if spec.get("type") != "batch":
            raise BatchSetupError(f"external-services.{name}.type: expected batch, got {spec.get('type')!r}")
        expected = {
            "account-url": "https://<account>.<region>.batch.azure.com",
            "resource-id": "the Batch account's resource id (/subscriptions/.../batchAccounts/<account>)",
            "node-identity": "the resource id of the user-assigned managed identity for the pool's nodes",
            "node-identity-client-id": "the client id of that managed identity",
        }
        for key, what in expected.items():
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise BatchSetupError(f"external-services.{name}.{key}: expected {what}")
        for secret in ("account-key", "connection-string"):
            if secret in spec:
                raise BatchSetupError(f"external-services.{name}.{secret}: not used: Batch is reached with a sign-in")
        return cls(name, spec["account-url"].rstrip("/"), spec["resource-id"].rstrip("/"), spec["node-identity"],
                   spec["node-identity-client-id"], spec.get("node-agent", DEFAULT_NODE_AGENT))


def batch_job_id(workspace: str, job: str) -> str:
    """Batch ids are at most 64 letters, digits, '-' and '_'."""
    name = f"xt-{workspace}-{job}"
    if len(name) <= 64:
        return name
    return f"xt-{hashlib.sha256(workspace.encode()).hexdigest()[:16]}-{job}"


def batch_task_id(run: str) -> str:
    return run.replace(".", "-")


def autoscale_formula(nodes: int, slots_per_node: int, low_pri: bool) -> str:
    """Nodes for the pending (queued + running) tasks, at most `nodes`; none when nothing is pending.
    Running tasks count, so a busy node is never taken away; taskcompletion lets a run finish."""
    wanted, other = ("$TargetLowPriorityNodes", "$TargetDedicatedNodes") if low_pri else \
        ("$TargetDedicatedNodes", "$TargetLowPriorityNodes")
    return "\n".join([
        "$pending = max(0, $PendingTasks.GetSample(1));",
        f"{wanted} = min({nodes}, ceil($pending / {slots_per_node}));",
        f"{other} = 0;",
        "$NodeDeallocationOption = taskcompletion;",
    ])


def parse_image(image: Optional[str]) -> Dict[str, str]:
    """`publisher:offer:sku[:version]` (Marketplace) or a Compute Gallery image's resource id."""
    image = image or DEFAULT_IMAGE
    if image.startswith("/"):
        return {"virtualMachineImageId": image}
    parts = image.split(":")
    if len(parts) not in (3, 4) or not all(parts):
        raise BatchSetupError(f"compute-targets: image: expected publisher:offer:sku[:version] or an image resource id, "
                              f"got {image!r}")
    return {"publisher": parts[0], "offer": parts[1], "sku": parts[2], "version": parts[3] if len(parts) == 4 else "latest"}


def start_task_command(setup: Optional[SetupSpec], package_file: str) -> str:
    """Make the node's venv (on top of the setup's activated environment) with xt-pipeline[azure]
    and the setup's pip packages; runs as the pool's admin auto-user once per node."""
    steps = ["set -e"]
    if setup and setup.activate:
        steps.append(setup.activate)
    steps += [
        "command -v apt-get >/dev/null && ! python3 -m venv --help >/dev/null 2>&1 && "
        "{ apt-get update -q && apt-get install -y -q python3-venv; } || true",
        f'python3 -m venv --system-site-packages "{VENV}"',
        f'"{VENV}/bin/python" -m pip install --quiet --upgrade pip',
        f'"{VENV}/bin/python" -m pip install --quiet "$AZ_BATCH_TASK_WORKING_DIR/{package_file}[azure]" '
        + " ".join(shlex.quote(p) for p in (setup.pip_packages if setup else [])),
        f'chmod -R a+rX "{VENV}"',  # runs use it as the non-admin auto-user
    ]
    return "/bin/bash -c " + shlex.quote("\n".join(steps))


def _env(values: Dict[str, str]) -> List[Dict[str, str]]:
    return [{"name": k, "value": v} for k, v in sorted(values.items())]


class BatchCompute(Compute):
    """The Compute port on one Batch pool (one compute target)."""

    def __init__(self, client, *, target_name: str, target, account: BatchAccount, storage, services: NodeServices,
                 node_package_key: str, arm=None) -> None:
        self.client = client  # azure.batch.BatchClient
        self.arm = arm  # an azure-core PipelineClient on Resource Manager (pool creation only)
        self.target_name = target_name
        self.target = target  # config.ComputeTarget
        self.account = account
        self.storage = storage
        self.services = services
        self.node_package_key = node_package_key
        self.pool_id = f"xt-{target_name}"[:64]
        self.slots = target.concurrent
        self.nodes = target.nodes or 1
        self.retries = target.preemption_retries

    # --- the Compute port ----------------------------------------------------------------------
    def submit(self, tasks: Sequence[RunTask]) -> None:
        """One Batch job per XT job, one task per run; a redelivery adds nothing twice."""
        by_job: Dict[tuple, List[RunTask]] = {}
        for task in tasks:
            by_job.setdefault((task.workspace, task.job), []).append(task)
        for job_tasks in by_job.values():
            self.ensure_pool(job_tasks[0].setup)
            self._submit_job(job_tasks)

    def cancel(self, workspace: str, runs: Sequence[str]) -> List[str]:
        """Terminate the runs' tasks; returns those that had not started (they will never report)."""
        from azure.core.exceptions import ResourceNotFoundError

        not_started = []
        for run in runs:
            job_id, task_id = batch_job_id(workspace, layout.job_of_run(run)), batch_task_id(run)
            try:
                task = self.client.get_task(job_id, task_id, select=["id", "state", "executionInfo"])
                if task.state == "completed":
                    continue
                self.client.terminate_task(job_id, task_id)
            except ResourceNotFoundError:
                continue  # not a task of this pool (another target's run), or long gone
            if task.state == "active" and not (task.execution_info and task.execution_info.requeue_count):
                not_started.append(run)
        return not_started

    # --- the pool ------------------------------------------------------------------------------
    def ensure_pool(self, setup: Optional[SetupSpec] = None) -> None:
        """Create the target's pool when missing; otherwise bring its formula and start task up to date
        (a running node keeps its setup; nodes that join later get the new one)."""
        from azure.batch import models
        from azure.core.exceptions import ResourceNotFoundError

        start_task = self._start_task(setup)
        formula = autoscale_formula(self.nodes, self.slots, self.target.low_pri)
        # the service rewrites a start task in its own casing and defaults: compare our fingerprint of it
        metadata = [{"name": "xt-target", "value": self.target_name},
                    {"name": "xt-start-task", "value": hashlib.sha256(json.dumps(start_task, sort_keys=True)
                                                                      .encode()).hexdigest()[:16]}]
        try:
            pool = self.client.get_pool(self.pool_id, select=["id", "autoScaleFormula", "metadata"])
        except ResourceNotFoundError:
            self._create_pool(start_task, formula, metadata)
            return
        if pool.auto_scale_formula != formula:  # the target's nodes or concurrent changed
            from datetime import timedelta

            self.client.enable_pool_auto_scale(self.pool_id, models.BatchPoolEnableAutoScaleOptions(
                auto_scale_formula=formula, auto_scale_evaluation_interval=timedelta(minutes=5)))
        if [{"name": m.name, "value": m.value} for m in pool.metadata or []] != metadata:
            self.client.update_pool(self.pool_id, models.BatchPoolUpdateOptions({"startTask": start_task,
                                                                                 "metadata": metadata}))

    def _start_task(self, setup: Optional[SetupSpec]) -> Dict[str, Any]:
        """The data-plane shape of the pool's start task. The package is read with the node's identity,
        not a SAS: the pool outlives any SAS expiry."""
        if not self.storage.exists(self.node_package_key):
            raise BatchSetupError(f"node package: {self.node_package_key} not found in storage (upload the "
                                  "xt-pipeline wheel with batch_compute.publish_node_package)")
        package_file = "xt/" + self.node_package_key.rsplit("/", 1)[-1]
        return {
            "commandLine": start_task_command(setup, package_file),
            "resourceFiles": [{"httpUrl": self._blob_url(self.node_package_key), "filePath": package_file,
                               "identityReference": {"resourceId": self.account.node_identity}}],
            "environmentSettings": _env(dict(setup.environment) if setup else {}),
            "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "admin"}},
            "maxTaskRetryCount": 2,
            "waitForSuccess": True,
        }

    def _blob_url(self, key: str) -> str:
        return f"{self.services.storage_account_url.rstrip('/')}/{self.services.container}/{key}"

    def _create_pool(self, start_task: Dict[str, Any], formula: str, metadata: List[Dict[str, str]]) -> None:
        """PUT through Resource Manager with If-None-Match: a pool made meanwhile is kept as it is."""
        from azure.core.exceptions import HttpResponseError
        from azure.core.rest import HttpRequest

        image = parse_image(self.target.image)
        arm_start = json.loads(json.dumps(start_task).replace('"scope": "pool"', '"scope": "Pool"')
                               .replace('"elevationLevel": "admin"', '"elevationLevel": "Admin"'))
        properties: Dict[str, Any] = {
            "displayName": f"xt target {self.target_name}",
            "vmSize": self.target.vm_size,
            "taskSlotsPerNode": self.slots,
            "taskSchedulingPolicy": {"nodeFillType": "Spread"},
            "deploymentConfiguration": {"virtualMachineConfiguration": {
                "imageReference": image, "nodeAgentSkuId": self.account.node_agent}},
            "scaleSettings": {"autoScale": {"formula": formula, "evaluationInterval": AUTOSCALE_INTERVAL}},
            "startTask": arm_start,
            "metadata": metadata,
        }
        if self.target.mount_shares:
            properties["mountConfiguration"] = [self._storage_mount()]
        body = {"identity": {"type": "UserAssigned", "userAssignedIdentities": {self.account.node_identity: {}}},
                "properties": properties}
        url = f"{ARM_ENDPOINT}{self.account.resource_id}/pools/{self.pool_id}?api-version={ARM_POOL_API_VERSION}"
        request = HttpRequest("PUT", url, json=body, headers={"If-None-Match": "*"})
        response = self.arm.send_request(request)
        if response.status_code in (409, 412):
            return  # made by a concurrent dispatch
        if response.status_code >= 400:
            raise HttpResponseError(response=response)
        log.info("created batch pool %s for target %s", self.pool_id, self.target_name)

    def _storage_mount(self) -> Dict[str, Any]:
        """The pool's blobfuse mount of the storage container (ARM's MountConfiguration), by identity: no key."""
        from urllib.parse import urlsplit

        url = urlsplit(self.services.storage_account_url)
        host = url.hostname or ""
        # https://<account>.blob.core.windows.net, or an emulator's http://127.0.0.1:10000/<account>
        account_name = host.split(".", 1)[0] if ".blob." in host else url.path.strip("/").split("/", 1)[0]
        return {"azureBlobFileSystemConfiguration": {
            "accountName": account_name, "containerName": self.services.container,
            "relativeMountPath": STORAGE_MOUNT_PATH, "blobfuseOptions": BLOBFUSE_OPTIONS,
            "identityReference": {"resourceId": self.account.node_identity}}}

    # --- jobs and tasks ------------------------------------------------------------------------
    def _submit_job(self, tasks: List[RunTask]) -> None:
        from azure.batch import models
        from azure.core.exceptions import ResourceExistsError

        first = tasks[0]
        job_id = batch_job_id(first.workspace, first.job)
        try:
            self.client.create_job(models.BatchJobCreateOptions({
                "id": job_id, "displayName": f"{first.workspace}/{first.job}",
                "poolInfo": {"poolId": self.pool_id},
                "onAllTasksComplete": "noaction",  # until every task is added: an empty job counts as complete
                "commonEnvironmentSettings": _env(self._node_environment()),
                "metadata": [{"name": "xt-workspace", "value": first.workspace}, {"name": "xt-job", "value": first.job}],
            }))
        except ResourceExistsError:
            pass  # a redelivered dispatch: add whatever tasks are missing
        code_url = self.storage.read_url(first.code_key, expiry_seconds=CODE_URL_SECONDS)
        bodies = [self._task_body(task, code_url) for task in tasks]
        for start in range(0, len(bodies), TASKS_PER_REQUEST):
            self._add_tasks(job_id, bodies[start:start + TASKS_PER_REQUEST])
        self.client.update_job(job_id, models.BatchJobUpdateOptions({"onAllTasksComplete": "terminatejob"}))

    def _add_tasks(self, job_id: str, bodies: List[Dict[str, Any]], attempts: int = 3) -> None:
        from azure.batch import models

        for _ in range(attempts):
            result = self.client.create_task_collection(job_id, models.BatchTaskGroup({"value": bodies}))
            failed = {}
            for item in result.result_values or []:
                code = item.error.code if item.error else ""
                if item.status != "success" and code != "TaskExists":
                    failed[item.task_id] = f"{item.status} {code}".strip()
            if not failed:
                return
            if any(not reason.startswith("serverError") for reason in failed.values()):
                raise BatchSetupError(f"batch job {job_id}: tasks refused: "
                                      + ", ".join(f"{t} ({r})" for t, r in sorted(failed.items())[:5]))
            bodies = [body for body in bodies if body["id"] in failed]  # the service's own errors: try those again
        raise BatchSetupError(f"batch job {job_id}: tasks not added after {attempts} attempts: {', '.join(sorted(failed))}")

    def _task_body(self, task: RunTask, code_url: str) -> Dict[str, Any]:
        # The start task installed the setup's activate + pip packages into the node's venv; a run
        # keeps only its environment (installing per run would race the other runs on the node).
        setup = task.setup and SetupSpec(environment=dict(task.setup.environment))
        node_task = msgspec.structs.replace(task, setup=setup, share_cache_dir=SHARE_CACHE,
                                            storage_mount=STORAGE_MOUNT if self.target.mount_shares else "")
        return {
            "id": batch_task_id(task.run), "displayName": task.run,
            "commandLine": NODE_COMMAND,
            "resourceFiles": [{"httpUrl": code_url, "filePath": CODE_FILE}],
            "environmentSettings": _env({TASK_ENV: encode(node_task).decode()}),
            "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}},
            "requiredSlots": 1,
            "constraints": {"maxTaskRetryCount": 0},  # a failed run reports itself; preemption requeues are Batch's
        }

    def _node_environment(self) -> Dict[str, str]:
        s = self.services
        return {"XT_STORAGE_ACCOUNT_URL": s.storage_account_url, "XT_STORAGE_CONTAINER": s.container,
                "XT_SERVICEBUS_NAMESPACE": s.servicebus_namespace, "XT_EVENTS_QUEUE": s.events_queue,
                "XT_IDENTITY_CLIENT_ID": self.account.node_identity_client_id}

    # --- the periodic check --------------------------------------------------------------------
    def _xt_jobs(self) -> Iterable[Any]:
        """This pool's active XT jobs."""
        for job in self.client.list_jobs(filter="state eq 'active'", select=["id", "poolInfo", "metadata"]):
            meta = {item.name: item.value for item in job.metadata or []}
            if job.pool_info and job.pool_info.pool_id == self.pool_id and "xt-workspace" in meta:
                yield job.id, meta["xt-workspace"], meta["xt-job"]

    def check_tasks(self) -> List[RunPreempted]:
        """RunPreempted for each run whose task Batch requeued after a preemption and that waits to
        run again. Past the target's preemption-retries the task is terminated (never run again) and
        the report repeats on every check until the job ends, so a lost report is made good."""
        from azure.core.exceptions import ResourceNotFoundError

        events = []
        for job_id, workspace, job in self._xt_jobs():
            try:
                tasks = list(self.client.list_tasks(job_id, select=["id", "displayName", "state", "executionInfo",
                                                                    "nodeInfo"]))
            except ResourceNotFoundError:
                continue  # deleted since it was listed
            for task in tasks:
                info = task.execution_info
                requeues = (info.requeue_count or 0) if info else 0
                if not requeues or task.state not in ("active", "completed"):
                    continue
                if task.state == "completed" and requeues <= self.retries:
                    continue  # it ran again and finished: its node reported
                if task.state == "active" and requeues > self.retries:
                    try:
                        self.client.terminate_task(job_id, task.id)
                    except ResourceNotFoundError:
                        pass
                requeued_at = info.last_requeue_time.timestamp() if info.last_requeue_time else 0.0
                events.append(RunPreempted(workspace=workspace, job=job, run=task.display_name or task.id,
                                           node_id=task.node_info.node_id if task.node_info else "",
                                           preemptions=requeues, retries=self.retries, requeued_at=requeued_at))
        return events

    # --- status --------------------------------------------------------------------------------
    def status(self) -> Dict[str, Any]:
        """The pool at a glance, for `xt view status TARGET` (the pool may not exist yet)."""
        from azure.core.exceptions import ResourceNotFoundError

        report: Dict[str, Any] = {"target": self.target_name, "pool": self.pool_id, "vm_size": self.target.vm_size,
                                  "low_pri": self.target.low_pri, "allocation_state": None, "current_nodes": 0,
                                  "target_nodes": 0, "nodes_busy": 0, "nodes_idle": 0, "queued_tasks": 0,
                                  "running_tasks": 0}
        try:
            pool = self.client.get_pool(self.pool_id)
        except ResourceNotFoundError:
            report["allocation_state"] = "none"
            return report
        report.update(allocation_state=pool.allocation_state,
                      current_nodes=(pool.current_dedicated_nodes or 0) + (pool.current_low_priority_nodes or 0),
                      target_nodes=(pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0))
        for counts in self.client.list_pool_node_counts(filter=f"poolId eq '{self.pool_id}'"):
            for kind in (counts.dedicated, counts.low_priority):
                if kind is not None:
                    report["nodes_busy"] += kind.running or 0
                    report["nodes_idle"] += kind.idle or 0
        for job_id, _, _ in self._xt_jobs():
            task_counts = self.client.get_job_task_counts(job_id).task_counts
            report["queued_tasks"] += task_counts.active or 0
            report["running_tasks"] += task_counts.running or 0
        return report


def batch_compute_from(target_name: str, target, account_name: str, account_spec: Dict[str, Any], credential,
                       storage, services: NodeServices, node_package_key: str, transport=None) -> BatchCompute:
    """The adapter for one `batch` compute target, signed in with `credential` (an azure-identity
    credential: the user's, or the Functions app's managed identity)."""
    from azure.batch import BatchClient
    from azure.core import PipelineClient
    from azure.core.pipeline.policies import (BearerTokenCredentialPolicy, HeadersPolicy, NetworkTraceLoggingPolicy,
                                              RetryPolicy, UserAgentPolicy)

    if target.service != "batch":
        raise BatchSetupError(f"compute-targets.{target_name}.service: expected batch, got {target.service!r}")
    if not target.vm_size:
        raise BatchSetupError(f"compute-targets.{target_name}.vm-size: required for a batch target")
    if target.account != account_name:
        raise BatchSetupError(f"compute-targets.{target_name}.account: expected {account_name!r}, got {target.account!r}")
    account = BatchAccount.from_spec(account_name, account_spec)
    parse_image(target.image)  # a bad image fails now, not at the first submit
    transport_kwargs = {"transport": transport} if transport is not None else {}
    client = BatchClient(account.account_url, credential, **transport_kwargs)
    arm = PipelineClient(ARM_ENDPOINT, policies=[
        HeadersPolicy(), UserAgentPolicy("xt-pipeline"), RetryPolicy(),
        BearerTokenCredentialPolicy(credential, f"{ARM_ENDPOINT}/.default"), NetworkTraceLoggingPolicy()],
        **transport_kwargs)
    return BatchCompute(client, target_name=target_name, target=target, account=account, storage=storage,
                        services=services, node_package_key=node_package_key, arm=arm)
