"""The pool executor's run threads against the embedded task table, storage and queue, on a box at
`localhost` (a real LocalNode): a run whose supervision keeps failing backs off and ends as an error."""
import logging
import time

from support.pipeline import make_code_zip, make_manifest
from xt_submit import handlers
from xt_submit.adapters.nodes.local import LocalNode
from xt_submit.domain.messages import ERROR, JobSubmitted, RunFinished, decode_event
from xt_submit.runtime import pool_executor
from xt_submit.runtime.pool_executor import PoolExecutor
from xt_submit.runtime.wrapper import saved_state

WS = "ws1"
SLEEPER = "import time\ntime.sleep(120)\n"


class UnreadableNode(LocalNode):
    """A box that launches runs but whose look at a run always fails, and not as a dropped box."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.looks = 0

    def alive(self, pid, start):
        self.looks += 1
        raise PermissionError(13, "Permission denied", "/proc/reaper")

    def really_alive(self, pid, start):
        return LocalNode.alive(self, pid, start)


def events_queued(parts):
    return [decode_event(m.body) for m in parts.queue.receive(parts.ports.publisher.events_queue, 100)]


def test_a_run_whose_supervision_keeps_failing_backs_off_then_ends_as_an_error(parts, monkeypatch, caplog):
    monkeypatch.setattr(pool_executor, "TICK_SECONDS", 0.01)
    monkeypatch.setattr(pool_executor, "SURPRISE_LIMIT", 4)
    parts.compute.register_target("pool", {"service": "pool", "boxes": {"b1": {"address": "localhost", "max_runs": 1}}})
    key, sha = make_code_zip(parts, {"train.py": SLEEPER})
    handlers.dispatch_job(JobSubmitted(submission_id="sub-1", manifest=make_manifest(key, sha, target="pool",
                                                                                   hp_space={"x": [1]}),
                                       submitted_at=1.0), parts.ports)
    nodes = []

    def make_node(box, settings, runs_folder):
        nodes.append(UnreadableNode(str(parts.home / "nodes" / box), name=box))
        return nodes[-1]

    executor = PoolExecutor(parts.compute, parts.home, parts.ports.storage, parts.ports.publisher, make_node)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="xt.pool"):
        while parts.compute.counts_by_state("pool").get("done", 0) == 0:
            assert time.monotonic() - started < 60, "the run never ended"  # a guard, not a measure
            executor.poll()
            time.sleep(0.005)
    [node] = nodes
    assert node.looks == 4  # tried the limit's number of times, not once per tick forever
    finished = [e for e in events_queued(parts) if isinstance(e, RunFinished)]
    [report] = finished
    assert report.status == ERROR and report.run == "run1.1" and "\n" not in report.reason
    assert report.reason.startswith("supervising the run on box b1 failed 4 times in a row: PermissionError")
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1  # the traceback once; the later tries a line each
    state = saved_state(parts.home / "nodes" / "b1" / WS / "run1.1")
    deadline = time.monotonic() + 10
    while node.really_alive(state["pid"], state["pid_start"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not node.really_alive(state["pid"], state["pid_start"])  # its process was killed, not left running


def test_the_pause_after_a_failed_look_grows_to_a_cap():
    cap = pool_executor.SURPRISE_MOST_SECONDS
    pauses = [pool_executor.surprise_pause(n) for n in range(1, pool_executor.SURPRISE_LIMIT)]  # between tries
    assert pool_executor.surprise_pause(0) == 0 and pauses[0] == pool_executor.TICK_SECONDS
    assert all(b == min(cap, 2 * a) for a, b in zip(pauses, pauses[1:]))
    assert pool_executor.surprise_pause(1000) == cap
    assert 30 <= sum(pauses) <= 300  # rides out a minute's outage, then gives up


def test_the_polling_threads_pause_ends_when_a_run_thread_hands_it_a_call():
    import threading

    calls = pool_executor.MainThreadCalls()
    handed = threading.Timer(0.05, lambda: calls.later(lambda: None))
    begun = time.monotonic()
    handed.start()
    calls.wait(120)  # a pause far longer than any machine takes to hand over a call
    assert time.monotonic() - begun < 60  # woken by the call, not by the pause's end
    assert calls.run_pending()
    calls.later(lambda: None)  # handed over before the pause begins: no pause at all
    begun = time.monotonic()
    calls.wait(120)
    assert time.monotonic() - begun < 60 and calls.run_pending()
    begun = time.monotonic()
    calls.wait(0.05)  # nothing handed over: the whole pause
    assert time.monotonic() - begun >= 0.05


def test_a_box_slot_is_free_for_its_next_run_once_the_process_ended_not_once_it_is_reported(parts, monkeypatch):
    """max-runs counts a box's run processes: a run whose process ended frees its slot while its
    finish (shipping its files, RunFinished) is still under way. Here the first run's finish waits
    until the second run is launched on the same one-slot box; with the slot held until the report
    it never would be (the guard fails the test)."""
    import threading

    from xt_submit.runtime.wrapper import RunWrapper

    parts.compute.register_target("pool", {"service": "pool", "boxes": {"b1": {"address": "localhost", "max_runs": 1}}})
    key, sha = make_code_zip(parts, {"train.py": "print('quick')\n"})
    handlers.dispatch_job(JobSubmitted(submission_id="sub-1", manifest=make_manifest(key, sha, target="pool",
                                                                                   hp_space={"x": [1, 2]}),
                                       submitted_at=1.0), parts.ports)
    second_launched = threading.Event()
    finish = RunWrapper.finish

    def finish_after_the_second_launch(self, end=None):
        if self.task.run == "run1.1":
            assert second_launched.wait(60), "the second run was not launched while the first was finishing"
        return finish(self, end)

    monkeypatch.setattr(RunWrapper, "finish", finish_after_the_second_launch)
    executor = PoolExecutor(parts.compute, parts.home, parts.ports.storage, parts.ports.publisher,
                            lambda box, settings, runs_folder: LocalNode(str(parts.home / "nodes" / box), name=box))
    started = time.monotonic()
    while parts.compute.counts_by_state("pool").get("done", 0) < 2:
        assert time.monotonic() - started < 120, "the runs never ended"  # a guard, not a measure
        executor.poll()
        second = parts.home / "nodes" / "b1" / WS / "run1.2"
        if not second_launched.is_set() and second.is_dir():
            try:
                if saved_state(second).get("pid") is not None:
                    second_launched.set()
            except (OSError, ValueError):
                pass
        time.sleep(0.005)
    finished = {e.run: e.status for e in events_queued(parts) if isinstance(e, RunFinished)}
    assert finished == {"run1.1": "completed", "run1.2": "completed"}
