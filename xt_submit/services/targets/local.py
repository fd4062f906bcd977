"""`service: local`: runs on this machine, at most `concurrent` per job."""
from __future__ import annotations

from typing import Iterator, Optional

from xt_submit.config import EMBEDDED, Config
from xt_submit.services.targets.base import TargetKind, cannot_mount


class LocalTarget(TargetKind):
    def problems(self, cfg: Config, name: str) -> Iterator[str]:
        return iter(())

    def where(self, cfg: Config, name: str) -> str:
        return "this machine"

    def mount_problem(self, cfg: Config, name: str, share: str, writable: bool) -> Optional[str]:
        if cfg.xt_services.storage == EMBEDDED:
            return None  # the share is a folder of this machine's storage, writable if the job says so
        return cannot_mount(cfg, name, share, f"storage {cfg.xt_services.storage} is not a folder on this machine")

    def pool_of(self, name: str) -> Optional[str]:
        return None
