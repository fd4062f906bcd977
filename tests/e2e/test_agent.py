"""The tasks queue between the Functions app and the compute agent: what QueueCompute sends and
what the agent does with it (on the embedded queue here; tests/test_functions_app.py runs the
real agent against Service Bus)."""
import msgspec
import pytest

from xt_submit.adapters.compute.queue import QueueCompute
from xt_submit.bootstrap import agent_parts_on
from xt_submit.runtime.agent import Agent
from xt_submit.config import Config
from xt_submit.domain.messages import (CANCELLED, MAX_MESSAGE_BYTES, RunFinished, RunTask, TasksQueued, decode_event,
                                decode_task_message)


def tasks(n, job="job3", command_bytes=40):
    return [RunTask(workspace="ws1", experiment="e", job=job, run=f"run3.{k}", command="python t.py " + "x" * command_bytes,
                    code_key="code/abc.zip", hparams={"lr": k}, target="local") for k in range(1, n + 1)]


def test_a_big_sweep_is_a_few_messages_each_under_the_size_limit(parts):
    compute = QueueCompute(parts.queue, "tasks")
    compute.submit(tasks(3000, command_bytes=200))
    bodies = [m["body"] for m in parts.queue.peek("tasks", limit=1000)]
    total = sum(len(b) for b in bodies)
    assert len(bodies) <= total // (MAX_MESSAGE_BYTES // 2) + 1 and all(len(b) <= MAX_MESSAGE_BYTES for b in bodies)
    runs = [t.run for b in bodies for t in decode_task_message(b).tasks]
    assert runs == [f"run3.{k}" for k in range(1, 3001)]  # all of them, once, in order


def test_the_agent_queues_tasks_once_and_a_cancel_reports_the_runs_that_never_started(parts):
    agent = Agent(agent_parts_on(parts, "tasks"), Config())
    compute = QueueCompute(parts.queue, "tasks")
    compute.submit(tasks(3))
    compute.submit(tasks(3))  # a redelivered dispatch hands them out again
    while agent.take():
        pass
    assert parts.compute.counts_by_state(None) == {"queued": 3}
    assert compute.cancel("ws1", ["run3.1", "run3.2"]) == []  # only the agent knows which never started
    while agent.take():
        pass
    assert parts.compute.counts_by_state(None) == {"queued": 1, "cancelled": 2}
    finished = [decode_event(m.body) for m in parts.queue.receive("events", max_messages=10)]
    assert sorted((e.run, e.status) for e in finished if isinstance(e, RunFinished)) == [
        ("run3.1", CANCELLED), ("run3.2", CANCELLED)]


@pytest.mark.parametrize("body", [b"{}", b"not json", msgspec.json.encode({"type": "tasks_queued", "tasks": [{}]})])
def test_a_task_message_that_can_never_apply_is_dead_lettered_with_the_reason(parts, body):
    agent = Agent(agent_parts_on(parts, "tasks"), Config())
    parts.queue.send("tasks", [body])
    agent.take()
    (dead,) = parts.queue.peek("tasks/$DeadLetterQueue")
    assert dead["reason"].startswith("task message: ") and parts.queue.count("tasks") == 0


def test_tasks_queued_round_trips():
    message = TasksQueued(tasks=tasks(2))
    assert decode_task_message(msgspec.json.encode(message)) == message


def test_a_task_for_a_target_this_machine_does_not_run_ends_as_an_error_saying_so(parts):
    agent = Agent(agent_parts_on(parts, "tasks"), Config())
    QueueCompute(parts.queue, "tasks").submit([msgspec.structs.replace(t, target="cpu") for t in tasks(2)])
    agent.take()
    agent.step()
    finished = [decode_event(m.body) for m in parts.queue.receive("events", max_messages=10)]
    assert [(e.run, e.status) for e in finished] == [("run3.1", "error"), ("run3.2", "error")]
    assert finished[0].reason == "target 'cpu' is not one this machine runs (its config has no local or pool target of that name)"
    assert parts.compute.active_count() == 0  # nothing left to run, nothing run here
