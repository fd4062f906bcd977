"""`service: batch`: Azure Batch pools of the team's account; the Functions app dispatches them."""
from __future__ import annotations

from typing import Iterator, Optional

from xt_submit.config import EMBEDDED, Config, names_of, show
from xt_submit.services.targets.base import TargetError, TargetKind


class BatchTarget(TargetKind):
    runs_here = False

    def problems(self, cfg: Config, name: str) -> Iterator[str]:
        target = cfg.compute_targets[name]
        account = cfg.external_services.get(target.account or "", {})
        if account.get("type") != "batch":
            yield (f"compute-targets.{name}.account: expected an external-services entry of type batch "
                   f"({names_of(cfg.external_services)}), got {show(target.account)}")

    def check_submittable(self, cfg: Config, name: str) -> None:
        """Batch jobs are dispatched by the team's Functions app, which listens on its Service Bus;
        nodes write with their managed identity to the team's storage."""
        for role in ("queue", "storage"):
            if getattr(cfg.xt_services, role) == EMBEDDED:
                raise TargetError(f"xt-services.{role}: {name} is a batch target, whose runs report to the team's "
                                  f"services; expected an external-services name here, got 'embedded'")

    def mount_problem(self, cfg: Config, name: str, share: str, writable: bool) -> Optional[str]:
        """A pool mounts the storage container only when its target asks (mount-shares), read-only."""
        if not cfg.compute_targets[name].mount_shares:
            return (f"{share}-action mount: target {name} (batch) mounts no storage; expected "
                    f"compute-targets.{name}.mount-shares: true, or {share}-action download")
        if writable:
            return f"{share}.{share}-writable: target {name} (batch) mounts storage read-only; expected false"
        return None

    def where(self, cfg: Config, name: str) -> str:
        target = cfg.compute_targets[name]
        return f"{target.vm_size or '?'} x {target.nodes or '?'}{' low-pri' if target.low_pri else ''}"
