"""The ports the Functions app runs on, built once per worker from its app settings.

Every setting is listed in local.settings.example.json; none holds a secret in the file (in Azure
they are Key Vault references or identity-based connections).
"""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Dict, List, Sequence

from xt_submit import services
from xt_submit.errors import OneLineError
from xt_submit.ports import Ports

JOBS_QUEUE = "XT_JOBS_QUEUE"
EVENTS_QUEUE = "XT_EVENTS_QUEUE"
TASKS_QUEUE = "XT_TASKS_QUEUE"
# {"<target>": {"target": <a compute-targets entry>, "account": <its external-services entry, type batch>}}
BATCH_TARGETS = "XT_BATCH_TARGETS"
BATCH_NODE_PACKAGE = "XT_BATCH_NODE_PACKAGE"  # storage key of the xt-pipeline wheel the pools' nodes install


class SettingsError(OneLineError):
    pass


def _service(prefix: str, kind: str) -> dict:
    """`XT_STORAGE` / `XT_SERVICEBUS` / `XT_MONGO` settings as a service description: a connection
    string, or (identity-based) `<PREFIX>__serviceUri` / `<PREFIX>__fullyQualifiedNamespace`."""
    spec = {"type": kind}
    if os.environ.get(prefix):
        spec["connection-string"] = os.environ[prefix]
    elif os.environ.get(f"{prefix}__serviceUri") or os.environ.get(f"{prefix}__blobServiceUri"):
        spec["account-url"] = os.environ.get(f"{prefix}__serviceUri") or os.environ[f"{prefix}__blobServiceUri"]
    elif os.environ.get(f"{prefix}__fullyQualifiedNamespace"):
        spec["namespace"] = os.environ[f"{prefix}__fullyQualifiedNamespace"]
    return spec


class ComputeRouter:
    """The Compute port over several targets: each task goes to its target's compute (a batch
    target's pool), the rest to the local task table."""

    def __init__(self, local, by_target: Dict[str, Any]) -> None:
        self.local = local
        self.by_target = by_target

    def submit(self, tasks: Sequence[Any]) -> None:
        groups: Dict[str, List[Any]] = {}
        for task in tasks:
            groups.setdefault(task.target if task.target in self.by_target else "", []).append(task)
        for target, group in groups.items():
            (self.by_target[target] if target else self.local).submit(group)

    def cancel(self, workspace: str, runs: Sequence[str]) -> List[str]:
        """The run names do not say their target: each compute stops those it holds."""
        not_started = list(self.local.cancel(workspace, runs))
        for compute in self.by_target.values():
            not_started += [run for run in compute.cancel(workspace, runs) if run not in not_started]
        return not_started

    def check_tasks(self) -> list:
        """Events only compute can see (Batch preemptions), for the timer to publish."""
        return [event for compute in self.by_target.values() for event in compute.check_tasks()]


def _batch_computes(storage) -> Dict[str, Any]:
    """The batch targets of XT_BATCH_TARGETS, signed in as the app's managed identity."""
    import msgspec

    from xt_submit.adapters.batch_compute import batch_compute_from, node_services_from
    from xt_submit.config import ComputeTarget
    from xt_submit.secrets import credential_for

    try:
        entries = json.loads(os.environ.get(BATCH_TARGETS) or "{}")
    except ValueError:
        raise SettingsError(f"{BATCH_TARGETS}: expected JSON: {{target: {{target: ..., account: ...}}}}") from None
    if not entries:
        return {}
    node_services = node_services_from("XT_STORAGE", {**_service("XT_STORAGE", "blob"),
                                                      "container": os.environ.get("XT_STORAGE_CONTAINER", "xtdata")},
                                       "XT_SERVICEBUS", _service("XT_SERVICEBUS", "servicebus"),
                                       os.environ.get(EVENTS_QUEUE, "events"))
    if not os.environ.get(BATCH_NODE_PACKAGE):
        raise SettingsError(f"{BATCH_NODE_PACKAGE}: expected the storage key of the xt-pipeline wheel for batch nodes")
    credential, computes = credential_for("auto"), {}
    for name, entry in entries.items():
        try:
            target = msgspec.convert(entry["target"], ComputeTarget)
            account = entry["account"]
        except (KeyError, TypeError, msgspec.ValidationError) as exc:
            raise SettingsError(f"{BATCH_TARGETS}.{name}: expected {{target: <compute target>, account: <batch "
                                f"account>}} ({str(exc).splitlines()[0]})") from None
        computes[name] = batch_compute_from(name, target, target.account, account, credential, storage, node_services,
                                            os.environ[BATCH_NODE_PACKAGE])
    return computes


@functools.lru_cache(maxsize=1)
def ports() -> Ports:
    from xt_submit.adapters.queue_compute import QueueCompute
    from xt_submit.adapters.queue_publisher import QueuePublisher

    storage = services.storage_from("XT_STORAGE", {**_service("XT_STORAGE", "blob"),
                                                   "container": os.environ.get("XT_STORAGE_CONTAINER", "xtdata")})
    queue = services.queue_from("XT_SERVICEBUS", _service("XT_SERVICEBUS", "servicebus"))
    stats = services.stats_from("XT_MONGO", {**_service("XT_MONGO", "mongo"),
                                             "database": os.environ.get("XT_MONGO_DATABASE", "xt")})
    publisher = QueuePublisher(queue, jobs_queue=os.environ.get(JOBS_QUEUE, "jobs"),
                               events_queue=os.environ.get(EVENTS_QUEUE, "events"))
    # Compute: batch targets on their pools (signed in as the app's managed identity); local and
    # pool targets on the tasks queue, for the machine whose `xt serve` agent runs them.
    local = QueueCompute(queue, os.environ.get(TASKS_QUEUE, "tasks"))
    compute = ComputeRouter(local, _batch_computes(storage))
    return Ports(storage=storage, stats=stats, compute=compute, publisher=publisher, clock=time.time)
