"""The Functions app's settings that carry the config's batch targets, and the wheel their nodes install."""
from __future__ import annotations

import hashlib
import json
import os

import msgspec

from xt_submit.ports import Storage
from xt_submit.services import targets
from xt_submit.services.targets import TargetError


def app_settings(cfg, storage, wheel: str) -> dict:
    """The Functions app's settings for this config's batch targets: the targets themselves (no
    secret: a batch account entry holds addresses and ids only) and the nodes' wheel, uploaded."""
    names = [name for name, target in cfg.compute_targets.items() if target.service == "batch"]
    if not names:
        raise TargetError("compute-targets: no target of service batch in this config")
    for name in names:
        targets.kind_of(cfg, name).check_submittable(cfg, name)
        targets.check_target(cfg, name)
    if not os.path.isfile(wheel) or not wheel.endswith(".whl"):
        raise TargetError(f"--wheel: expected an xt-pipeline .whl file, got {wheel!r}")
    entries = {name: {"target": msgspec.to_builtins(cfg.compute_targets[name]),
                      "account": cfg.external_services[cfg.compute_targets[name].account]} for name in names}
    return {"XT_BATCH_TARGETS": json.dumps(entries, separators=(",", ":")),
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
