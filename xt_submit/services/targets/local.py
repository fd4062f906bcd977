"""`service: local`: runs on this machine, at most `concurrent` per job."""
from __future__ import annotations

from typing import Iterator, Optional

from xt_submit.config import Config
from xt_submit.services.targets.base import TargetKind


class LocalTarget(TargetKind):
    def problems(self, cfg: Config, name: str) -> Iterator[str]:
        return iter(())

    def where(self, cfg: Config, name: str) -> str:
        return "this machine"

    def pool_of(self, name: str) -> Optional[str]:
        return None
