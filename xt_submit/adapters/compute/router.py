"""The Compute port over several targets (the Functions app's): each task goes to its target's
compute (a batch target's pool), the rest to the tasks queue for the machine that runs them."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

from xt_submit.ports import Compute


class ComputeRouter(Compute):
    def __init__(self, local: Compute, by_target: Dict[str, Compute]) -> None:
        self.local = local
        self.by_target = by_target

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
        """Events only compute can see (Batch preemptions), for the timer to publish."""
        return [event for compute in self.by_target.values() for event in compute.check_tasks()]
