"""The Compute contract: one suite for every adapter the dispatch and cancel handlers hand runs to.

- this machine's task table (LocalCompute, what the local host runs);
- the tasks queue (QueueCompute on the embedded queue), as the agent that takes them sees it;
- a Batch pool (BatchCompute, through the real azure-batch SDK and a transport that answers like
  the Batch service: no Batch emulator exists);
- the Functions app's router over a batch target and the tasks queue.

Each is driven through the port alone; a fixture says, in the adapter's own terms, which runs
will execute and which cancelled runs its side reports as cancelled. What must hold everywhere:
each submitted run executes once however often it was submitted, and each cancelled run that
had not finished is accounted for exactly once, by cancel's answer or by a report.
"""
import uuid
from dataclasses import dataclass
from typing import Callable, List

import pytest
import requests
from azure.core.pipeline.transport import RequestsTransport

from peers.batch_service import FakeBatchService
from xt_submit import bootstrap
from xt_submit.config import Config
from xt_submit.domain.messages import CANCELLED, RunFinished, RunPreempted, RunTask, decode_event
from xt_submit.ports import Compute


@dataclass
class Harness:
    compute: Compute
    scheduled: Callable[[], List[str]]  # the runs that will execute, once each
    reported_cancelled: Callable[[], List[str]]  # runs the adapter's side reports as cancelled, never started


def tasks_of(code_key, target, runs, job="job1"):
    return [RunTask(workspace="ws1", experiment="e", job=job, run=run, command=f"python train.py --i={k}",
                    code_key=code_key, target=target, concurrent=100, created_at=1.0)  # all may start at once
            for k, run in enumerate(runs, start=1)]


def local_harness(parts):
    return Harness(parts.compute, lambda: sorted(t.run for t in parts.compute.launchable(1000)), lambda: [])


def queue_harness(parts):
    from xt_submit.adapters.compute.queue import QueueCompute
    from xt_submit.runtime.agent import Agent

    agent = Agent(bootstrap.agent_parts_on(parts, "tasks"), Config())

    def take_all():
        while agent.take():
            pass

    def scheduled():
        take_all()
        return sorted(t.run for t in parts.compute.launchable(1000))

    def reported():
        take_all()
        events = [decode_event(m["body"]) for m in parts.queue.peek("events", limit=1000)]
        return sorted(e.run for e in events if isinstance(e, RunFinished) and e.status == CANCELLED)

    return Harness(QueueCompute(parts.queue, "tasks"), scheduled, reported)


def batch_harness(parts, tmp_path, request):
    from xt_submit.adapters.compute.batch import NodeServices, batch_compute_from
    from xt_submit.adapters.storage.blob import BlobStorage
    from xt_submit.config import ComputeTarget
    from xt_submit.services.batch_target import publish_node_package

    fake = FakeBatchService()
    session = requests.Session()
    session.mount("https://", fake)
    blob = BlobStorage(f"xt-compute-{uuid.uuid4().hex[:8]}",
                       connection_string=request.getfixturevalue("azurite_connection_string"))
    blob.ensure_container()
    wheel = tmp_path / "xt_pipeline-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"a wheel")
    account = {"type": "batch", "account-url": "https://xtacct.westus2.batch.azure.com",
               "resource-id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Batch/batchAccounts/xtacct",
               "node-identity": "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/"
                                "userAssignedIdentities/xt-nodes",
               "node-identity-client-id": "11111111-2222-3333-4444-555555555555"}
    target = ComputeTarget(service="batch", vm_size="Standard_D2s_v3", nodes=2, account="team-batch")

    class Credential:
        def get_token(self, *scopes, **kwargs):
            from azure.core.credentials import AccessToken

            return AccessToken("test-token", 2_000_000_000)

    compute = batch_compute_from("gpu", target, "team-batch", account, Credential(), blob,
                                 NodeServices("https://x.blob.core.windows.net", "xtdata", "x.servicebus.windows.net",
                                              "events"),
                                 publish_node_package(blob, str(wheel)), transport=RequestsTransport(session=session))

    def scheduled():
        return sorted(task["displayName"] for job in fake.tasks.values() for task in job.values()
                      if task["state"] != "completed")

    return Harness(compute, scheduled, lambda: []), blob


@pytest.fixture(params=["local", "tasks-queue", "batch", "router"])
def harness(request, parts, tmp_path):
    if request.param == "local":
        return local_harness(parts), "local", parts.ports.storage
    if request.param == "tasks-queue":
        return queue_harness(parts), "local", parts.ports.storage
    batch, blob = batch_harness(parts, tmp_path, request)
    if request.param == "batch":
        return batch, "gpu", blob
    from xt_submit.adapters.compute.router import ComputeRouter

    router = ComputeRouter(parts.compute, {"gpu": batch.compute})
    both = Harness(router, lambda: sorted(batch.scheduled() + local_harness(parts).scheduled()), lambda: [])
    return both, "mixed", blob


def submit_runs(harness, runs, job="job1"):
    h, target, storage = harness
    key = code_key_in(storage)
    if target == "mixed":  # odd runs to the batch target, even ones to this machine (the same on a redelivery)
        odd = [run for run in runs if int(run.rsplit(".", 1)[1]) % 2]
        h.compute.submit(tasks_of(key, "gpu", odd, job) + tasks_of(key, "local", [r for r in runs if r not in odd], job))
    else:
        h.compute.submit(tasks_of(key, target, runs, job))


def code_key_in(storage):
    """The code a task names exists (Batch links to it); compute never opens it here."""
    key = "code/contract.zip"
    if not storage.exists(key):
        storage.write(key, b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    return key


def test_each_submitted_run_executes_once_however_often_it_was_submitted(harness):
    h = harness[0]
    runs = [f"run1.{k}" for k in range(1, 7)]
    submit_runs(harness, runs)
    submit_runs(harness, runs)  # a redelivered dispatch submits them all again
    submit_runs(harness, runs[:2])
    assert h.scheduled() == sorted(runs)


def test_runs_of_another_job_keep_their_own_names(harness):
    h = harness[0]
    submit_runs(harness, ["run1.1", "run1.2"])
    submit_runs(harness, ["run2.1", "run2.2"], job="job2")
    assert h.scheduled() == ["run1.1", "run1.2", "run2.1", "run2.2"]


def test_cancel_accounts_for_each_cancelled_run_exactly_once_and_leaves_the_rest(harness):
    h = harness[0]
    runs = [f"run1.{k}" for k in range(1, 7)]
    submit_runs(harness, runs)
    h.scheduled()  # whatever takes the tasks has taken them
    cancelled = runs[1:5]
    answered = h.compute.cancel("ws1", cancelled)
    reported = h.reported_cancelled()
    assert sorted(answered + reported) == sorted(cancelled)  # none started: each is accounted for once
    assert h.scheduled() == sorted(set(runs) - set(cancelled))


def test_cancel_of_runs_it_never_held_is_a_quiet_no(harness):
    h = harness[0]
    submit_runs(harness, ["run1.1"])
    assert h.compute.cancel("ws1", ["run9.1", "run9.2"]) == [] and h.reported_cancelled() == []
    assert h.scheduled() == ["run1.1"]


def test_check_tasks_reports_only_preemptions(harness):
    h = harness[0]
    submit_runs(harness, ["run1.1", "run1.2"])
    assert all(isinstance(event, RunPreempted) for event in h.compute.check_tasks())
