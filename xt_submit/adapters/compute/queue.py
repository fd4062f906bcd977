"""The Compute port as messages on the tasks queue: how the Functions app hands the runs of local
and pool targets to the machine that executes them (an `xt serve` agent, xt_submit/agent.py).

Submitting twice is harmless (the agent's task table ignores a run it has); a cancel reaches the
agent, which stops what runs and reports the runs that never started.
"""
from __future__ import annotations

from typing import List, Sequence

from xt_submit.domain.messages import (MAX_MESSAGE_BYTES, RunTask, TasksCancelled, TasksQueued, check_message_sizes,
                                       encode)
from xt_submit.ports import Compute

TASKS_QUEUE = "tasks"
CANCEL_BATCH = 5_000  # run names per TasksCancelled: a run's name (run<N>.<k>) is a few dozen bytes at most


class QueueCompute(Compute):
    def __init__(self, queue, tasks_queue: str = TASKS_QUEUE) -> None:
        self.queue = queue
        self.tasks_queue = tasks_queue

    def submit(self, tasks: Sequence[RunTask]) -> None:
        """As few messages as fit under the queue's size limit (a big sweep is a few messages, not one per run)."""
        bodies, chunk, size = [], [], 64
        for task in tasks:
            task_size = len(encode(task)) + 1
            if chunk and size + task_size > MAX_MESSAGE_BYTES // 2:  # half: room for the envelope, with margin
                bodies.append(encode(TasksQueued(tasks=chunk)))
                chunk, size = [], 64
            chunk.append(task)
            size += task_size
        if chunk:
            bodies.append(encode(TasksQueued(tasks=chunk)))
        check_message_sizes(self.tasks_queue, bodies)  # a single task too big for a message: refused, saying so
        self.queue.send(self.tasks_queue, bodies)

    def cancel(self, workspace: str, runs: Sequence[str]) -> List[str]:
        """Which runs never started only the agent knows: it reports them (RunFinished, cancelled).
        A whole job's runs go as a few messages, each under the size limit."""
        runs = list(runs)
        batches = [runs[start:start + CANCEL_BATCH] for start in range(0, len(runs), CANCEL_BATCH)] or [[]]
        bodies = [encode(TasksCancelled(workspace=workspace, runs=batch)) for batch in batches]
        check_message_sizes(self.tasks_queue, bodies)
        self.queue.send(self.tasks_queue, bodies)
        return []

    def check_tasks(self) -> list:
        return []
