"""The composition root: the one module that builds adapters.

Everything else receives its adapters built (handlers get `Ports`, the runtime gets `Parts`);
which adapter backs a port is decided here, from a service description, through the registries
below. The same descriptions come from `xt_config.yaml` (`xt-services` names an
`external-services` entry) and from the Functions app's settings; the embedded default needs none.

    external-services:
      team-store: {type: blob, connection-string: "...", container: xtdata}      # or account-url + identity
      team-bus:   {type: servicebus, connection-string: "...", jobs-queue: xt-jobs, events-queue: xt-events}
      team-stats: {type: mongo, connection-string: "mongodb://...", database: xt}

A new store or queue is one adapter module plus one line in its registry; a new kind of node is
one adapter plus a line in `make_node`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple, cast

from xt_submit.domain.errors import OneLineError
from xt_submit.ports import (AgentParts, MessageQueue, Node, NodeFactory, Parts, Ports, Publisher, StatsStore, Storage,
                             TaskTable)

if TYPE_CHECKING:
    from xt_submit.adapters.queue.servicebus import ServiceBusQueue

EMBEDDED = "embedded"
DEFAULT_CONTAINER = "xtdata"
DEFAULT_DATABASE = "xt"


class ServiceError(OneLineError):
    pass


def xt_home(configured: Optional[str] = None) -> Path:
    """XT_HOME env > general.xt-home in config > the per-user data dir."""
    home = os.environ.get("XT_HOME") or configured
    if not home:
        import platformdirs

        home = platformdirs.user_data_dir("xt", appauthor=False)
    path = Path(home).expanduser().resolve()
    if path.exists() and not path.is_dir():  # else every command fails on some file below it, saying "File exists"
        source = "XT_HOME" if os.environ.get("XT_HOME") else "general.xt-home"
        raise ServiceError(f"{source}: expected a folder for XT's state, but {path} is a file")
    return path


# --- adapters by kind: one line per kind ----------------------------------------------------------
def _signed_in(credential):
    """The sign-in to use where a service has no connection string (the Functions app: its identity)."""
    if credential is not None:
        return credential
    from xt_submit.adapters.vault import credential_for

    return credential_for("auto")


def _blob_storage(name: str, spec: Dict[str, Any], credential) -> Storage:
    from xt_submit.adapters.storage.blob import BlobStorage

    container = spec.get("container", DEFAULT_CONTAINER)
    if spec.get("connection-string"):
        storage = BlobStorage(container, connection_string=spec["connection-string"])
    elif spec.get("account-url"):
        storage = BlobStorage(container, account_url=spec["account-url"], credential=_signed_in(credential))
    else:
        raise ServiceError(f"external-services.{name}: expected connection-string or account-url")
    storage.ensure_container()
    return storage


def _servicebus_queue(name: str, spec: Dict[str, Any], credential, max_wait_time: float = 1.0) -> MessageQueue:
    from xt_submit.adapters.queue.servicebus import ServiceBusQueue

    if spec.get("connection-string"):
        return ServiceBusQueue(spec["connection-string"], max_wait_time=max_wait_time)
    if spec.get("namespace"):
        return ServiceBusQueue(namespace=spec["namespace"], credential=_signed_in(credential), max_wait_time=max_wait_time)
    raise ServiceError(f"external-services.{name}: expected connection-string or namespace")


def _mongo_stats(name: str, spec: Dict[str, Any], credential) -> StatsStore:
    from xt_submit.adapters.stats.mongo import MongoStats

    if not spec.get("connection-string"):
        raise ServiceError(f"external-services.{name}: expected connection-string")
    return MongoStats(spec["connection-string"], database=spec.get("database", DEFAULT_DATABASE))


STORAGE_KINDS: Dict[str, Callable[..., Storage]] = {"blob": _blob_storage, "storage": _blob_storage}
QUEUE_KINDS: Dict[str, Callable[..., MessageQueue]] = {"servicebus": _servicebus_queue}
STATS_KINDS: Dict[str, Callable[..., StatsStore]] = {"mongo": _mongo_stats}


def _build(kinds: Dict[str, Callable], name: str, spec: Dict[str, Any], *args):
    builder = kinds.get(str(spec.get("type")))
    if builder is None:
        raise ServiceError(f"external-services.{name}.type: expected {' or '.join(kinds)} here, got {spec.get('type')!r}")
    return builder(name, spec, *args)


def storage_from(name: str, spec: Dict[str, Any], credential=None) -> Storage:
    return _build(STORAGE_KINDS, name, spec, credential)


def queue_from(name: str, spec: Dict[str, Any], credential=None) -> MessageQueue:
    return _build(QUEUE_KINDS, name, spec, credential)


def stats_from(name: str, spec: Dict[str, Any], credential=None) -> StatsStore:
    return _build(STATS_KINDS, name, spec, credential)


def queue_names(spec: Dict[str, Any]) -> Dict[str, str]:
    return {"jobs_queue": spec.get("jobs-queue", "jobs"), "events_queue": spec.get("events-queue", "events"),
            "tasks_queue": spec.get("tasks-queue", "tasks")}


def publisher_for(queue: MessageQueue, jobs_queue: str = "jobs", events_queue: str = "events") -> Publisher:
    from xt_submit.adapters.queue.publisher import QueuePublisher

    return QueuePublisher(queue, jobs_queue=jobs_queue, events_queue=events_queue)


def task_table(home: Path) -> TaskTable:
    from xt_submit.adapters.compute.tasks import LocalCompute

    return LocalCompute(str(home / "compute.db"))


def node_factory(home: Path) -> NodeFactory:
    """A pool's box as a Node: this machine for `localhost`, else the box over SSH."""

    def make_node(box: str, settings: dict, runs_folder: str) -> Node:
        from xt_submit.domain.boxes import LOCAL_ADDRESS  # here: a command that makes no node never loads it

        if settings["address"] == LOCAL_ADDRESS:
            return local_node(home / "nodes" / box, name=box)
        from xt_submit.adapters.nodes.ssh import SshNode

        return SshNode(box, settings["address"], settings.get("key"), settings.get("host_key"), runs_folder=runs_folder)

    return make_node


def warm(names) -> None:
    """Load what a host's first run of a kind would wait for ("ssh": paramiko, for a pool's boxes);
    a name it does not know is left alone (a client newer than this host)."""
    if "ssh" in names:
        from xt_submit.adapters.nodes import ssh

        ssh.load_paramiko()


def box_node(home: Path, name: str, box) -> Node:
    """A config `boxes` entry as its Node, as the host would reach it (for `xt list boxes --check`)."""
    settings = {"address": box.address, "key": box.key, "host_key": box.host_key}
    return node_factory(home)(name, settings, "runs")


def local_node(folder: Path, name: str = "local", fork_here: bool = False) -> Node:
    """fork_here: for a process that starts one run (LocalNode says why)."""
    from xt_submit.adapters.nodes.local import LocalNode

    return LocalNode(str(folder), name=name, fork_here=fork_here)


# --- the embedded default and the config's choice -----------------------------------------------
def embedded(home: Path) -> Parts:
    from xt_submit.adapters.queue.sqlite import SqliteQueue
    from xt_submit.adapters.stats.sqlite import SqliteStats
    from xt_submit.adapters.storage.directory import DirectoryStorage

    home.mkdir(parents=True, exist_ok=True)
    storage = DirectoryStorage(home / "storage")
    queue = SqliteQueue(str(home / "queue.db"))
    compute = task_table(home)
    publisher = publisher_for(queue)
    # A new or recreated stats.db (deleted, found corrupt) rebuilds itself from storage before any
    # name is handed out or any report read: the index is never behind the source of truth.
    stats = SqliteStats(str(home / "stats.db"), rebuild=lambda index: _reindexed(
        Ports(storage=storage, stats=index, compute=compute, publisher=publisher)))
    ports = Ports(storage=storage, stats=stats, compute=compute, publisher=publisher)
    return Parts(home, ports, queue, compute, local_node=local_node(home / "nodes" / "local"),
                 make_node=node_factory(home), served_here=True)


def _reindexed(ports: Ports) -> Optional[str]:
    """What `xt admin reindex` does, for an index that starts empty; what it restored, or None."""
    from xt_submit.domain.layout import WORKSPACES_PREFIX

    keys = ports.storage.list(WORKSPACES_PREFIX)
    if not keys:  # a new home: nothing to rebuild, nor the handlers to import for it
        return None
    from xt_submit.handlers.reindex import rebuild_workspace, workspaces_in_storage

    jobs = runs = 0
    for workspace in workspaces_in_storage(ports, keys=keys):  # the listing made here, not made again
        counts = rebuild_workspace(ports, workspace)
        jobs, runs = jobs + counts["jobs"], runs + counts["runs"]
    return f"rebuilt the index from storage: {jobs} jobs, {runs} runs" if jobs else None


def from_config(cfg, signed=None) -> Parts:
    """The parts `xt_config.yaml` selects: each of storage, queue and stats is the embedded
    default or the external service `xt-services` names. Compute is this machine's task table
    (batch targets are the Functions app's). `signed`: a sign-in from signed_in(cfg) to share, so a
    caller that needs it too signs in once (an interactive sign-in would otherwise ask twice)."""
    base = embedded(xt_home(cfg.general.xt_home))
    chosen = cfg.xt_services
    if (chosen.storage, chosen.queue, chosen.stats) == (EMBEDDED, EMBEDDED, EMBEDDED):
        return base
    credential, spec = signed or signed_in(cfg)
    storage = (base.ports.storage if chosen.storage == EMBEDDED
               else storage_from(chosen.storage, spec(chosen.storage), credential))
    stats = base.ports.stats if chosen.stats == EMBEDDED else stats_from(chosen.stats, spec(chosen.stats), credential)
    if chosen.queue == EMBEDDED:
        queue, publisher = base.queue, base.ports.publisher
    else:
        queue_spec = spec(chosen.queue)
        queue = queue_from(chosen.queue, queue_spec, credential)
        names = queue_names(queue_spec)
        publisher = publisher_for(queue, jobs_queue=names["jobs_queue"], events_queue=names["events_queue"])
    ports = Ports(storage=storage, stats=stats, compute=base.compute, publisher=publisher)
    return base._replace(ports=ports, queue=queue, served_here=chosen.queue == EMBEDDED)


def signed_in(cfg) -> Tuple[Any, Callable[[str], dict]]:
    """One sign-in, as general.authentication says, for the vault and every service without a key;
    returns it and `spec(name)`: an external-services entry with its `$vault` values resolved."""
    from xt_submit.adapters import vault as vaults

    credential = vaults.credential_for(cfg.general.authentication)
    vault = None
    if cfg.xt_services.vault:
        vault = vaults.VaultSecrets(cfg.external_services[cfg.xt_services.vault]["url"], credential)

    def spec(name: str) -> dict:
        return vaults.resolve(name, cfg.external_services[name], vault)

    return credential, spec


def clear_cached_secrets() -> bool:
    from xt_submit.adapters.vault import clear_cache

    return clear_cache()


# --- the compute agent (`xt serve` with a team's services) --------------------------------------
def agent_parts(cfg) -> AgentParts:
    signed = signed_in(cfg)
    parts = from_config(cfg, signed)
    credential, spec = signed
    queue_spec = spec(cfg.xt_services.queue)
    tasks = queue_from(cfg.xt_services.queue, queue_spec, credential)
    return agent_parts_on(parts, queue_names(queue_spec)["tasks_queue"], tasks)


def agent_parts_on(parts: Parts, tasks_queue: str, tasks: Optional[MessageQueue] = None) -> AgentParts:
    tasks = tasks or parts.queue
    return AgentParts(parts, tasks_queue, tasks, task_table(parts.home),
                      publisher_for(tasks, events_queue=parts.ports.publisher.events_queue))


# --- run wrappers on a node ---------------------------------------------------------------------
def node_parts(home: Path) -> Tuple[Storage, Publisher]:
    """(storage, publisher) for a run wrapper on this machine with the embedded default."""
    from xt_submit.adapters.queue.sqlite import SqliteQueue
    from xt_submit.adapters.storage.directory import DirectoryStorage

    return DirectoryStorage(home / "storage"), publisher_for(SqliteQueue(str(home / "queue.db")))


def batch_node_parts(env: Mapping[str, str], credential=None) -> Tuple[Storage, Publisher, MessageQueue]:
    """Storage, the events publisher and its queue on a Batch node, signed in with the pool's managed identity."""
    from azure.identity import ManagedIdentityCredential

    from xt_submit.adapters.queue.servicebus import ServiceBusQueue
    from xt_submit.adapters.storage.blob import BlobStorage

    credential = credential or ManagedIdentityCredential(client_id=env["XT_IDENTITY_CLIENT_ID"])
    storage = BlobStorage(env["XT_STORAGE_CONTAINER"], account_url=env["XT_STORAGE_ACCOUNT_URL"], credential=credential)
    queue = ServiceBusQueue(namespace=env["XT_SERVICEBUS_NAMESPACE"], credential=credential)
    return storage, publisher_for(queue, events_queue=env["XT_EVENTS_QUEUE"]), queue


def prefetched(storage: Storage, code_key: str, code_file: Path) -> Storage:
    """storage, with the run's code zip taken from the file Batch already fetched."""
    from xt_submit.adapters.storage.prefetched import PrefetchedCode

    return PrefetchedCode(storage, code_key, code_file)


# --- Batch targets ------------------------------------------------------------------------------
def batch_compute_for(cfg, name: str, storage: Storage, signed=None):
    """A `batch` target of the user's config, signed in as the user (for `xt view status`)."""
    from xt_submit.adapters.compute.batch import batch_compute_from, node_services_from
    from xt_submit.services import targets

    targets.kind_of(cfg, name).check_submittable(cfg, name)
    target = cfg.compute_targets[name]
    credential, spec = signed or signed_in(cfg)
    storage_name, queue_name = cfg.xt_services.storage, cfg.xt_services.queue
    queue_spec = spec(queue_name)
    services = node_services_from(f"external-services.{storage_name}", spec(storage_name),
                                  f"external-services.{queue_name}", queue_spec, queue_names(queue_spec)["events_queue"])
    return batch_compute_from(name, target, target.account or "", spec(target.account or ""), credential, storage, services,
                              node_package_key="")


def remote_target_status(cfg, name: str) -> dict:
    """`xt view status` of a target the Functions app dispatches (batch), from the service itself,
    with one sign-in for the team's storage and for Batch."""
    signed = signed_in(cfg)
    return batch_compute_for(cfg, name, from_config(cfg, signed).ports.storage, signed).status()


# --- the Functions app ---------------------------------------------------------------------------
# Its app settings (each is listed in local.settings.example.json; none holds a secret there: in
# Azure they are Key Vault references or identity-based connections).
JOBS_QUEUE_SETTING = "XT_JOBS_QUEUE"
EVENTS_QUEUE_SETTING = "XT_EVENTS_QUEUE"
TASKS_QUEUE_SETTING = "XT_TASKS_QUEUE"
UPLOADS_QUEUE_SETTING = "XT_UPLOADS_QUEUE"  # Event Grid delivers the storage's BlobCreated events for uploads/ here
# {"<target>": {"target": <a compute-targets entry>, "account": <its external-services entry, type batch>}}
BATCH_TARGETS_SETTING = "XT_BATCH_TARGETS"
BATCH_NODE_PACKAGE_SETTING = "XT_BATCH_NODE_PACKAGE"  # storage key of the xt-pipeline wheel the pools' nodes install


def _app_service(settings: Mapping[str, str], prefix: str, kind: str, **extra: str) -> dict:
    """`XT_STORAGE` / `XT_SERVICEBUS` / `XT_MONGO` settings as a service description: a connection
    string, or (identity-based) `<PREFIX>__serviceUri` / `<PREFIX>__fullyQualifiedNamespace`."""
    spec = {"type": kind, **extra}
    if settings.get(prefix):
        spec["connection-string"] = settings[prefix]
    elif settings.get(f"{prefix}__serviceUri") or settings.get(f"{prefix}__blobServiceUri"):
        spec["account-url"] = settings.get(f"{prefix}__serviceUri") or settings[f"{prefix}__blobServiceUri"]
    elif settings.get(f"{prefix}__fullyQualifiedNamespace"):
        spec["namespace"] = settings[f"{prefix}__fullyQualifiedNamespace"]
    return spec


def _app_storage_spec(settings: Mapping[str, str]) -> dict:
    return _app_service(settings, "XT_STORAGE", "blob", container=settings.get("XT_STORAGE_CONTAINER", DEFAULT_CONTAINER))


def _app_batch_computes(settings: Mapping[str, str], storage: Storage) -> Dict[str, Any]:
    """The batch targets of XT_BATCH_TARGETS, signed in as the app's managed identity."""
    import json

    import msgspec

    from xt_submit.adapters.compute.batch import batch_compute_from, node_services_from
    from xt_submit.adapters.vault import credential_for
    from xt_submit.config import ComputeTarget

    try:
        entries = json.loads(settings.get(BATCH_TARGETS_SETTING) or "{}")
    except ValueError:
        raise ServiceError(f"{BATCH_TARGETS_SETTING}: expected JSON: {{target: {{target: ..., account: ...}}}}") from None
    if not entries:
        return {}
    node_services = node_services_from("XT_STORAGE", _app_storage_spec(settings),
                                       "XT_SERVICEBUS", _app_service(settings, "XT_SERVICEBUS", "servicebus"),
                                       settings.get(EVENTS_QUEUE_SETTING, "events"))
    if not settings.get(BATCH_NODE_PACKAGE_SETTING):
        raise ServiceError(f"{BATCH_NODE_PACKAGE_SETTING}: expected the storage key of the xt-pipeline wheel for batch nodes")
    credential, computes = credential_for("auto"), {}
    for name, entry in entries.items():
        try:
            target = msgspec.convert(entry["target"], ComputeTarget)
            account = entry["account"]
        except (KeyError, TypeError, msgspec.ValidationError) as exc:
            raise ServiceError(f"{BATCH_TARGETS_SETTING}.{name}: expected {{target: <compute target>, account: <batch "
                               f"account>}} ({str(exc).splitlines()[0]})") from None
        computes[name] = batch_compute_from(name, target, target.account or "", account, credential, storage, node_services,
                                            settings[BATCH_NODE_PACKAGE_SETTING])
    return computes


class AppQueues(NamedTuple):  # as ports.Parts: not a dataclass, whose class costs start-up more
    """The Service Bus queues the Functions app's triggers read, and the client it re-sends a
    failed message with (scheduled later, to back off). Built apart from the ports: when a store
    is down, the app can still back off."""

    bus: "ServiceBusQueue"
    names: Dict[str, str]  # trigger -> queue name: dispatch, run_events, upload_received
    container: str  # the storage container whose uploads/ the upload trigger announces


def app_queues(settings: Mapping[str, str]) -> AppQueues:
    """The app's queues from its app settings (no connection is made until a message is sent)."""
    bus = queue_from("XT_SERVICEBUS", _app_service(settings, "XT_SERVICEBUS", "servicebus"))
    names = {"dispatch": settings.get(JOBS_QUEUE_SETTING, "jobs"), "run_events": settings.get(EVENTS_QUEUE_SETTING, "events"),
             "upload_received": settings.get(UPLOADS_QUEUE_SETTING, "uploads")}
    return AppQueues(bus=cast("ServiceBusQueue", bus), names=names,
                     container=settings.get("XT_STORAGE_CONTAINER", DEFAULT_CONTAINER))


def app_ports(settings: Mapping[str, str], queue: MessageQueue) -> Ports:
    """The ports the Functions app's handlers take, from its app settings, sending on `queue`."""
    from xt_submit.adapters.compute.queue import QueueCompute
    from xt_submit.adapters.compute.router import ComputeRouter

    storage = storage_from("XT_STORAGE", _app_storage_spec(settings))
    stats = stats_from("XT_MONGO", _app_service(settings, "XT_MONGO", "mongo",
                                                database=settings.get("XT_MONGO_DATABASE", DEFAULT_DATABASE)))
    publisher = publisher_for(queue, jobs_queue=settings.get(JOBS_QUEUE_SETTING, "jobs"),
                              events_queue=settings.get(EVENTS_QUEUE_SETTING, "events"))
    # Compute: batch targets on their pools (signed in as the app's managed identity); local and
    # pool targets on the tasks queue, for the machine whose `xt serve` agent runs them.
    local = QueueCompute(queue, settings.get(TASKS_QUEUE_SETTING, "tasks"))
    return Ports(storage=storage, stats=stats, compute=ComputeRouter(local, _app_batch_computes(settings, storage)),
                 publisher=publisher)
