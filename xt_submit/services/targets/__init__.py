"""Compute targets from the config: what each kind of target (its `service`) needs before runs go
to it, what this machine registers to run them, and how busy it is.

Only names and settings are registered (addresses, key *paths*, host keys): no key ever leaves
the files the user keeps it in. A new kind of target is one module here (a TargetKind) plus one
line in KINDS (and its `service` name in config.ComputeTarget).
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional

from xt_submit.config import Config
from xt_submit.domain.messages import SetupSpec
from xt_submit.domain.setup_script import pin_installed
from xt_submit.ports import TaskTable
from xt_submit.services.targets.base import TargetError, TargetKind
from xt_submit.services.targets.batch import BatchTarget
from xt_submit.services.targets.local import LocalTarget
from xt_submit.services.targets.pool import PoolTarget

__all__ = ["KINDS", "TargetError", "TargetKind", "check_target", "definition", "kind_of", "problems", "register",
           "setup_spec", "status"]

KINDS: Dict[str, TargetKind] = {
    "local": LocalTarget(),
    "pool": PoolTarget(),
    "batch": BatchTarget(),
}


def kind_of(cfg: Config, name: str) -> TargetKind:
    return KINDS[cfg.compute_targets[name].service]


def problems(cfg: Config, name: str) -> Iterator[str]:
    """What the target needs before runs can be sent to it (checked when one is: a draft entry may load)."""
    return kind_of(cfg, name).problems(cfg, name)


def check_target(cfg: Config, name: str) -> None:
    for problem in problems(cfg, name):
        raise TargetError(problem)


def setup_spec(cfg: Config, name: Optional[str]) -> Optional[SetupSpec]:
    if name is None:
        return None
    entry = cfg.setups[name]
    return SetupSpec(activate=entry.activate, pip_packages=pin_installed(entry.pip_packages, f"setups.{name}.pip-packages"),
                     conda_packages=list(entry.conda_packages), environment=dict(entry.environment))


def definition(cfg: Config, name: str) -> dict:
    """What the host needs to run this target's tasks."""
    return kind_of(cfg, name).definition(cfg, name)


def register(compute: TaskTable, cfg: Config, name: str) -> None:
    check_target(cfg, name)
    compute.register_target(name, definition(cfg, name))


def status(cfg: Config, name: str, compute: TaskTable) -> dict:
    """How busy a target this machine runs is: {target, service, queued, running, ...}."""
    kind = kind_of(cfg, name)
    counts = compute.counts_by_state(kind.pool_of(name))
    summary = {"target": name, "service": cfg.compute_targets[name].service, "queued": counts.get("queued", 0),
               "running": counts.get("launching", 0) + counts.get("launched", 0)}
    return {**summary, **kind.details(cfg, name, compute)}

