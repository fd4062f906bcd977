"""What every kind of compute target answers."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator, Optional, Tuple

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

    def mount_problem(self, cfg: Config, name: str, share: str, writable: bool) -> Optional[str]:
        """Why a run on the target cannot see the share as a mount of storage (one line naming the
        field), or None when it can. A kind mounts nothing unless it says so."""
        return cannot_mount(cfg, name, share, "it has no mount of storage")

    def host_warms(self, cfg: Config, name: str) -> Tuple[str, ...]:
        """What a host that starts for a job on the target loads while the job is still being sent
        (names bootstrap.warm knows, and CONNECT_AHEAD + a registered pool): what its first run would
        otherwise wait for."""
        return ()

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


def cannot_mount(cfg: Config, name: str, share: str, why: str) -> str:
    return (f"{share}-action mount: target {name} ({cfg.compute_targets[name].service}) cannot mount the {share} "
            f"share ({why}); use {share}-action download")
