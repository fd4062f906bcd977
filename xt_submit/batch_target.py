"""A `batch` compute target from the user's config: the Batch adapter signed in as the user (for
`xt view status`), and the check that a job sent to it can reach Batch at all."""
from __future__ import annotations

from xt_submit.bootstrap import signed_in
from xt_submit.config import target_problems
from xt_submit.errors import OneLineError
from xt_submit.services import queue_names

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
    import json
    import os

    import msgspec

    from xt_submit.adapters.batch_compute import publish_node_package

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


def batch_compute_for(cfg, name: str, storage, signed=None):
    from xt_submit.adapters.batch_compute import batch_compute_from, node_services_from

    check_submittable(cfg, name)
    target = cfg.compute_targets[name]
    credential, spec = signed or signed_in(cfg)
    storage_name, queue_name = cfg.xt_services.storage, cfg.xt_services.queue
    queue_spec = spec(queue_name)
    services = node_services_from(f"external-services.{storage_name}", spec(storage_name),
                                  f"external-services.{queue_name}", queue_spec, queue_names(queue_spec)["events_queue"])
    return batch_compute_from(name, target, target.account, spec(target.account), credential, storage, services,
                              node_package_key="")
