"""Wires the ports once, from where the embedded default keeps its state (XT_HOME)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from xt_submit.ports import Ports


def xt_home(configured: Optional[str] = None) -> Path:
    """XT_HOME env > general.xt-home in config > the per-user data dir."""
    home = os.environ.get("XT_HOME") or configured
    if not home:
        import platformdirs

        home = platformdirs.user_data_dir("xt", appauthor=False)
    return Path(home).expanduser().resolve()


@dataclass(frozen=True)
class Embedded:
    """The embedded default's parts: the ports plus the queue and executor the local host drives."""

    home: Path
    ports: Ports
    queue: object
    compute: object


def embedded(home: Path) -> Embedded:
    from xt_submit.adapters.directory_storage import DirectoryStorage
    from xt_submit.adapters.local_compute import LocalCompute
    from xt_submit.adapters.queue_publisher import QueuePublisher
    from xt_submit.adapters.sqlite_queue import SqliteQueue
    from xt_submit.adapters.sqlite_stats import SqliteStats

    home.mkdir(parents=True, exist_ok=True)
    queue = SqliteQueue(str(home / "queue.db"))
    compute = LocalCompute(str(home / "compute.db"))
    ports = Ports(storage=DirectoryStorage(home / "storage"), stats=SqliteStats(str(home / "stats.db")),
                  compute=compute, publisher=QueuePublisher(queue), clock=time.time)
    return Embedded(home, ports, queue, compute)


def from_config(cfg, signed=None) -> Embedded:
    """The parts `xt_config.yaml` selects: each of storage, queue and stats is the embedded
    default or the external service `xt-services` names. Compute is this machine's task table
    (batch targets are the Functions app's). `signed`: a sign-in from signed_in(cfg) to share, so a
    caller that needs it too signs in once (an interactive sign-in would otherwise ask twice)."""
    from xt_submit import services
    from xt_submit.adapters.local_compute import LocalCompute
    from xt_submit.adapters.queue_publisher import QueuePublisher

    base = embedded(xt_home(cfg.general.xt_home))
    chosen = cfg.xt_services
    if (chosen.storage, chosen.queue, chosen.stats) == ("embedded", "embedded", "embedded"):
        return base
    credential, spec = signed or signed_in(cfg)
    storage = (base.ports.storage if chosen.storage == "embedded"
               else services.storage_from(chosen.storage, spec(chosen.storage), credential))
    stats = base.ports.stats if chosen.stats == "embedded" else services.stats_from(chosen.stats, spec(chosen.stats))
    if chosen.queue == "embedded":
        queue, publisher = base.queue, base.ports.publisher
    else:
        queue_spec = spec(chosen.queue)
        queue = services.queue_from(chosen.queue, queue_spec, credential)
        names = services.queue_names(queue_spec)
        publisher = QueuePublisher(queue, jobs_queue=names["jobs_queue"], events_queue=names["events_queue"])
    compute: LocalCompute = base.compute
    ports = Ports(storage=storage, stats=stats, compute=compute, publisher=publisher, clock=time.time)
    return Embedded(base.home, ports, queue, compute)


def signed_in(cfg):
    """One sign-in, as general.authentication says, for the vault and every service without a key;
    returns it and `spec(name)`: an external-services entry with its `$vault` values resolved."""
    from xt_submit import secrets

    credential = secrets.credential_for(cfg.general.authentication)
    vault = None
    if cfg.xt_services.vault:
        vault = secrets.VaultSecrets(cfg.external_services[cfg.xt_services.vault]["url"], credential)

    def spec(name: str) -> dict:
        return secrets.resolve(name, cfg.external_services[name], vault)

    return credential, spec


def node_ports(home: Path):
    """(storage, publisher) for a run wrapper on this machine: a node needs nothing else."""
    from xt_submit.adapters.directory_storage import DirectoryStorage
    from xt_submit.adapters.queue_publisher import QueuePublisher
    from xt_submit.adapters.sqlite_queue import SqliteQueue

    return DirectoryStorage(home / "storage"), QueuePublisher(SqliteQueue(str(home / "queue.db")))
