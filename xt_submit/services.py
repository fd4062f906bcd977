"""Choosing the adapter behind each port from a service description.

The same descriptions come from `xt_config.yaml` (`xt-services` names an `external-services`
entry) and from the Functions app's settings. The embedded default needs none.

    external-services:
      team-store: {type: blob, connection-string: "...", container: xtdata}      # or account-url + identity
      team-bus:   {type: servicebus, connection-string: "...", jobs-queue: xt-jobs, events-queue: xt-events}
      team-stats: {type: mongo, connection-string: "mongodb://...", database: xt}
"""
from __future__ import annotations

from typing import Any, Dict

from xt_submit.errors import OneLineError

DEFAULT_CONTAINER = "xtdata"
DEFAULT_DATABASE = "xt"


class ServiceError(OneLineError):
    pass


def _require(name: str, spec: Dict[str, Any], kinds: tuple) -> None:
    if spec.get("type") not in kinds:
        raise ServiceError(f"external-services.{name}.type: expected {' or '.join(kinds)} here, got {spec.get('type')!r}")


def _signed_in(credential):
    """The sign-in to use where a service has no connection string (the Functions app: its identity)."""
    if credential is not None:
        return credential
    from xt_submit.secrets import credential_for

    return credential_for("auto")


def storage_from(name: str, spec: Dict[str, Any], credential=None):
    from xt_submit.adapters.blob_storage import BlobStorage

    _require(name, spec, ("blob", "storage"))
    container = spec.get("container", DEFAULT_CONTAINER)
    if spec.get("connection-string"):
        storage = BlobStorage(container, connection_string=spec["connection-string"])
    elif spec.get("account-url"):
        storage = BlobStorage(container, account_url=spec["account-url"], credential=_signed_in(credential))
    else:
        raise ServiceError(f"external-services.{name}: expected connection-string or account-url")
    storage.ensure_container()
    return storage


def queue_from(name: str, spec: Dict[str, Any], credential=None, max_wait_time: float = 1.0):
    from xt_submit.adapters.servicebus_queue import ServiceBusQueue

    _require(name, spec, ("servicebus",))
    if spec.get("connection-string"):
        return ServiceBusQueue(spec["connection-string"], max_wait_time=max_wait_time)
    if spec.get("namespace"):
        return ServiceBusQueue(namespace=spec["namespace"], credential=_signed_in(credential), max_wait_time=max_wait_time)
    raise ServiceError(f"external-services.{name}: expected connection-string or namespace")


def stats_from(name: str, spec: Dict[str, Any]):
    from xt_submit.adapters.mongo_stats import MongoStats

    _require(name, spec, ("mongo",))
    if not spec.get("connection-string"):
        raise ServiceError(f"external-services.{name}: expected connection-string")
    return MongoStats(spec["connection-string"], database=spec.get("database", DEFAULT_DATABASE))


def queue_names(spec: Dict[str, Any]) -> Dict[str, str]:
    return {"jobs_queue": spec.get("jobs-queue", "jobs"), "events_queue": spec.get("events-queue", "events"),
            "tasks_queue": spec.get("tasks-queue", "tasks")}
