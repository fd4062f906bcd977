"""A compute target from the config, turned into what its runs need: the setup, and (for a pool)
the boxes with their own settings, registered with this machine's host before a job is sent.

Only names and settings are registered (addresses, key *paths*, host keys): no key ever leaves
the files the user keeps it in.
"""
from __future__ import annotations

from typing import Optional

import msgspec

from xt_submit.config import Config, target_problems
from xt_submit.domain.errors import OneLineError
from xt_submit.domain.messages import SetupSpec
from xt_submit.domain.setup_script import pin_installed


class TargetError(OneLineError):
    pass


def setup_spec(cfg: Config, name: Optional[str]) -> Optional[SetupSpec]:
    if name is None:
        return None
    entry = cfg.setups[name]
    return SetupSpec(activate=entry.activate, pip_packages=pin_installed(entry.pip_packages, f"setups.{name}.pip-packages"),
                     conda_packages=list(entry.conda_packages), environment=dict(entry.environment))


def check_target(cfg: Config, name: str) -> None:
    for problem in target_problems(cfg, name):
        raise TargetError(problem)


def definition(cfg: Config, name: str) -> dict:
    """What the host needs to run this target's tasks (the Batch adapter reads its own settings)."""
    target = cfg.compute_targets[name]
    if target.service != "pool":
        return {"service": target.service}
    boxes = {}
    for box_name in target.boxes or list(cfg.boxes):  # none named: every box
        box = cfg.boxes[box_name]
        setup = setup_spec(cfg, box.setup)
        boxes[box_name] = {"address": box.address, "max_runs": box.max_runs, "key": box.key, "host_key": box.host_key,
                           "setup": None if setup is None else msgspec.to_builtins(setup)}
    return {"service": "pool", "boxes": boxes}


def register(compute, cfg: Config, name: str) -> None:
    check_target(cfg, name)
    compute.register_target(name, definition(cfg, name))
