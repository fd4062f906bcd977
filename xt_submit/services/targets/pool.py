"""`service: pool`: runs on the user's own boxes over SSH, each box up to its max-runs."""
from __future__ import annotations

import time
from typing import Dict, Iterator, Optional, Tuple

import msgspec

from xt_submit.config import Config, names_of, show
from xt_submit.ports import TaskTable
from xt_submit.services.targets.base import TargetKind, cannot_mount


class PoolTarget(TargetKind):
    def problems(self, cfg: Config, name: str) -> Iterator[str]:
        target = cfg.compute_targets[name]
        if not target.boxes and not cfg.boxes:
            yield f"compute-targets.{name}.boxes: no boxes to run on; add your machines under `boxes` in xt_config.yaml"
        for box in target.boxes:
            if box not in cfg.boxes:
                yield f"compute-targets.{name}.boxes: expected boxes names ({names_of(cfg.boxes)}), got {show(box)}"

    def host_warms(self, cfg: Config, name: str) -> Tuple[str, ...]:
        from xt_submit.domain.boxes import CONNECT_AHEAD, LOCAL_ADDRESS

        remote = any(cfg.boxes[box].address != LOCAL_ADDRESS for box in self._boxes(cfg, name) if box in cfg.boxes)
        # paramiko's import (~40-80 ms), and the boxes' connections (~150 ms each): made while the
        # job is still being sent, not once its runs arrive (the target is registered first)
        return ("ssh", CONNECT_AHEAD + name) if remote else ()

    def where(self, cfg: Config, name: str) -> str:
        target = cfg.compute_targets[name]
        return "boxes: " + (", ".join(target.boxes) if target.boxes else "all (" + ", ".join(cfg.boxes) + ")")

    def mount_problem(self, cfg: Config, name: str, share: str, writable: bool) -> Optional[str]:
        return cannot_mount(cfg, name, share, "its boxes cannot mount this storage")

    def definition(self, cfg: Config, name: str) -> dict:
        from xt_submit.services.targets import setup_spec

        boxes = {}
        for box_name in self._boxes(cfg, name):
            box = cfg.boxes[box_name]
            setup = setup_spec(cfg, box.setup)
            boxes[box_name] = {"address": box.address, "max_runs": box.max_runs, "key": box.key,
                               "host_key": box.host_key, "setup": None if setup is None else msgspec.to_builtins(setup)}
        return {"service": "pool", "boxes": boxes}

    def details(self, cfg: Config, name: str, compute: TaskTable) -> dict:
        health, busy = compute.box_health(), compute.runs_per_node()
        return {"boxes": [{"box": box, "max_runs": cfg.boxes[box].max_runs, "running": busy.get(box, 0),
                           "free": max(0, cfg.boxes[box].max_runs - busy.get(box, 0)), "state": box_state(health, box)}
                          for box in self._boxes(cfg, name) if box in cfg.boxes]}

    @staticmethod
    def _boxes(cfg: Config, name: str):
        return cfg.compute_targets[name].boxes or list(cfg.boxes)  # none named: every box


def box_state(health: Dict[str, dict], box: str) -> str:
    """A box's state as the local host last found it (it is the one that connects)."""
    seen = health.get(box)
    if seen is None:
        return "not contacted yet"
    ago = f"{time.time() - seen['checked_at']:.0f}s ago"
    return f"reachable ({ago})" if seen["reachable"] else f"unreachable ({ago}): {seen['error']}"
