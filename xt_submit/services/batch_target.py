"""A `batch` compute target from the user's config: the check that a job sent to it can reach
Batch at all, and the Functions app's settings that carry the config's batch targets."""
from __future__ import annotations

import hashlib
import json
import os

import msgspec

from xt_submit.config import target_problems
from xt_submit.domain.errors import OneLineError
from xt_submit.ports import Storage

EMBEDDED = "embedded"


class BatchTargetError(OneLineError):
    pass


def check_submittable(cfg, name: str) -> None:
    """Batch jobs are dispatched by the team's Functions app, which listens on its Service Bus;
    nodes write with their managed identity to the team's storage."""
    for role in ("queue", "storage"):
        if getattr(cfg.xt_services, role) == EMBEDDED:
            raise BatchTargetError(f"xt-services.{role}: {name} is a batch target, whose runs report to the team's "
                                   f"services; expected an external-services name here, got 'embedded'")


def app_settings(cfg, storage, wheel: str) -> dict:
    """The Functions app's settings for this config's batch targets: the targets themselves (no
    secret: a batch account entry holds addresses and ids only) and the nodes' wheel, uploaded."""
    names = [name for name, target in cfg.compute_targets.items() if target.service == "batch"]
    if not names:
        raise BatchTargetError("compute-targets: no target of service batch in this config")
    for name in names:
        check_submittable(cfg, name)
        for problem in target_problems(cfg, name):
            raise BatchTargetError(problem)
    if not os.path.isfile(wheel) or not wheel.endswith(".whl"):
        raise BatchTargetError(f"--wheel: expected an xt-pipeline .whl file, got {wheel!r}")
    targets = {name: {"target": msgspec.to_builtins(cfg.compute_targets[name]),
                      "account": cfg.external_services[cfg.compute_targets[name].account]} for name in names}
    return {"XT_BATCH_TARGETS": json.dumps(targets, separators=(",", ":")),
            "XT_BATCH_NODE_PACKAGE": publish_node_package(storage, wheel)}


def publish_node_package(storage: Storage, wheel_path: str) -> str:
    """Upload the xt-pipeline wheel the pools' start tasks install (content-addressed: an unchanged
    wheel is not uploaded twice); returns its storage key."""
    with open(wheel_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    key = f"tools/{digest}/{os.path.basename(wheel_path)}"
    if not storage.exists(key):
        storage.upload_file(key, wheel_path)
    return key
