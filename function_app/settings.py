"""The ports the Functions app runs on, built once per worker from its app settings.

Every setting is listed in local.settings.example.json; none holds a secret in the file (in Azure
they are Key Vault references or identity-based connections).
"""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path

from xt_submit import services
from xt_submit.ports import Ports

JOBS_QUEUE = "XT_JOBS_QUEUE"
EVENTS_QUEUE = "XT_EVENTS_QUEUE"


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


@functools.lru_cache(maxsize=1)
def ports() -> Ports:
    from xt_submit.adapters.local_compute import LocalCompute
    from xt_submit.adapters.queue_publisher import QueuePublisher

    storage = services.storage_from("XT_STORAGE", {**_service("XT_STORAGE", "blob"),
                                                   "container": os.environ.get("XT_STORAGE_CONTAINER", "xtdata")})
    queue = services.queue_from("XT_SERVICEBUS", _service("XT_SERVICEBUS", "servicebus"))
    stats = services.stats_from("XT_MONGO", {**_service("XT_MONGO", "mongo"),
                                             "database": os.environ.get("XT_MONGO_DATABASE", "xt")})
    publisher = QueuePublisher(queue, jobs_queue=os.environ.get(JOBS_QUEUE, "jobs"),
                               events_queue=os.environ.get(EVENTS_QUEUE, "events"))
    # Compute: a task table a machine's executor drains (XT_LOCAL_COMPUTE_HOME). Batch comes later.
    compute = LocalCompute(str(Path(os.environ["XT_LOCAL_COMPUTE_HOME"]) / "compute.db"))
    return Ports(storage=storage, stats=stats, compute=compute, publisher=publisher, clock=time.time)
