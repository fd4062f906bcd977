"""The Compute port over several targets (the Functions app's): each task goes to its target's
compute (a batch target's pool), the rest to the tasks queue for the machine that runs them."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence

from xt_submit.ports import Compute

log = logging.getLogger("xt.compute")


class ComputeRouter(Compute):
    def __init__(self, local: Compute, by_target: Dict[str, Compute]) -> None:
        self.local = local
        self.by_target = by_target
        self.check_failures: Dict[str, str] = {}  # target -> why its last check_tasks failed

    def submit(self, tasks: Sequence[Any]) -> None:
        groups: Dict[str, List[Any]] = {}
        for task in tasks:
            groups.setdefault(task.target if task.target in self.by_target else "", []).append(task)
        for target, group in groups.items():
            (self.by_target[target] if target else self.local).submit(group)

    def cancel(self, workspace: str, runs: Sequence[str]) -> List[str]:
        """The run names do not say their target: each compute stops those it holds."""
        not_started = list(self.local.cancel(workspace, runs))
        for compute in self.by_target.values():
            not_started += [run for run in compute.cancel(workspace, runs) if run not in not_started]
        return not_started

    def check_tasks(self) -> list:
        """Events only compute can see (Batch preemptions), for the timer to publish. One target's
        failure (its account throttled, a pool deleted) is logged and kept in `check_failures`; the
        other targets are still checked."""
        events: List[Any] = []
        self.check_failures = {}
        for target, compute in self.by_target.items():
            try:
                events += compute.check_tasks()
            except Exception as exc:
                self.check_failures[target] = f"{type(exc).__name__}: {exc}"
                log.error("check_tasks for target %s failed: %s", target, self.check_failures[target])
        return events
