"""What every kind of compute target answers."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator, Optional

from xt_submit.config import Config
from xt_submit.domain.errors import OneLineError
from xt_submit.ports import TaskTable


class TargetError(OneLineError):
    pass


class TargetKind(ABC):
    # True: this machine's task table holds the target's tasks (the local host, or with a team's
    # services the `xt serve` agent, runs them); False: the Functions app hands them elsewhere.
    runs_here: bool = True

    @abstractmethod
    def problems(self, cfg: Config, name: str) -> Iterator[str]:
        """What the config lacks before runs can go to the target (one line each, naming the field)."""

    def check_submittable(self, cfg: Config, name: str) -> None:
        """Raise TargetError when a job for the target cannot reach it from this config's services."""

    @abstractmethod
    def where(self, cfg: Config, name: str) -> str:
        """Where its runs go, for `xt list targets`."""

    def definition(self, cfg: Config, name: str) -> dict:
        """What this machine registers to run the target's tasks."""
        return {"service": cfg.compute_targets[name].service}

    def pool_of(self, name: str) -> Optional[str]:
        """The task table's pool of the target's tasks (None: this machine's own runs)."""
        return name

    def details(self, cfg: Config, name: str, compute: TaskTable) -> dict:
        """What `xt view status` adds to the counts for the target."""
        return {}
