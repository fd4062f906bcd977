"""What a run's end ships: the files after-dirs names (looked for only where its patterns can match)
and each metric's last value for RunFinished (from what was shipped as it went, or, for a supervisor
that took over, from the node's log read again in pieces)."""
import json
import os

import pytest

from xt_submit.domain import layout
from xt_submit.domain.messages import RunTask
from xt_submit.runtime import wrapper as wrapper_module
from xt_submit.runtime.wrapper import RunWrapper, walk_roots

WS = "ws1"


class Recording:
    """A node that records the arguments of every read_from and the files it fetched."""

    def __init__(self, inner):
        self._inner, self.reads, self.fetched = inner, [], []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def read_from(self, path, offset=0, limit=None):
        self.reads.append((path, offset, limit))
        return self._inner.read_from(path, offset, limit)

    def local_copy(self, path):
        self.fetched.append(path)  # a box's SFTP get
        return self._inner.local_copy(path)


def a_wrapper(parts, node=None, **task_fields):
    task = RunTask(workspace=WS, experiment="e", job="job1", run="run1.1", command="python train.py", code_key="x",
                   **task_fields)
    node_dir = parts.home / "nodes" / "local" / WS / "run1.1"
    node_dir.mkdir(parents=True, exist_ok=True)
    return RunWrapper(task, node_dir, parts.ports.storage, parts.ports.publisher, node=node or parts.local_node)


def write(path, data=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)


def metrics_line(**values):
    return json.dumps({"time": 1.0, "event": "metrics", "data": values}).encode() + b"\n"


@pytest.mark.parametrize("patterns, roots", [
    (["output/**"], ["output"]),
    (["output/**", "logs/**"], ["logs", "output"]),
    (["output/**", "output/sub/*.txt"], ["output"]),
    (["a/b/c.txt", "a/**"], ["a"]),
    (["*.pt"], [""]),  # a wildcard in the first part: anywhere in the code
    (["model.pt", "output/**"], [""]),
    (["out*"], [""]),  # fnmatch's * crosses folders: out* can match output/x and outer.txt
    ([], []),
])
def test_the_folders_after_dirs_patterns_can_match_in(patterns, roots):
    assert walk_roots(patterns) == roots


def test_after_dirs_outside_output_are_captured_and_the_rest_of_the_code_is_not(parts):
    wrapper = a_wrapper(parts, after_dirs=["output/**", "logs/**", "*.pt"], after_omit=["logs/skip.txt"])
    code = wrapper.code_dir
    for rel in ("output/a.txt", "output/deep/b.txt", "logs/l.txt", "logs/skip.txt", "model.pt", "sub/w.pt",
                "train.py", "notes/other.txt"):
        write(os.path.join(code, rel), rel.encode())
    wrapper.finish()
    prefix = layout.output_prefix(WS, "run1.1")
    kept = {key[len(prefix):]: parts.ports.storage.read(key) for key in parts.ports.storage.list(prefix)}
    assert kept == {"a.txt": b"output/a.txt", "deep/b.txt": b"output/deep/b.txt", "logs/l.txt": b"logs/l.txt",
                    "model.pt": b"model.pt", "sub/w.pt": b"sub/w.pt"}


def test_only_the_output_folder_is_listed_for_the_default_after_dirs(parts, monkeypatch):
    wrapper = a_wrapper(parts)
    write(os.path.join(wrapper.code_dir, "output", "model.bin"), b"weights")
    write(os.path.join(wrapper.code_dir, "data", "big.bin"), b"d")
    walked = []
    real_walk = parts.local_node.walk
    monkeypatch.setattr(parts.local_node, "walk", lambda root: walked.append(root) or real_walk(root))
    wrapper.finish()
    assert walked == [wrapper.output_dir]  # once, for both the last live sync and the capture
    assert parts.ports.storage.read(layout.output_prefix(WS, "run1.1") + "model.bin") == b"weights"
    assert parts.ports.storage.read(layout.live_prefix(WS, "run1.1") + "model.bin") == b"weights"


def test_each_output_file_is_fetched_from_the_node_once_for_its_live_and_final_copies(parts):
    node = Recording(parts.local_node)
    wrapper = a_wrapper(parts, node)
    output = os.path.join(wrapper.code_dir, "output")
    write(os.path.join(output, "model.bin"), b"w1")
    write(os.path.join(output, "same.txt"), b"s")
    wrapper.sync()  # while it runs: both live
    write(os.path.join(output, "model.bin"), b"w2")  # changed since, and one new file
    write(os.path.join(output, "deep", "new.txt"), b"n")
    node.fetched.clear()
    wrapper.finish()
    assert sorted(node.fetched) == sorted(os.path.join(output, rel) for rel in ("model.bin", "same.txt", "deep/new.txt"))
    storage = parts.ports.storage
    for prefix in (layout.live_prefix(WS, "run1.1"), layout.output_prefix(WS, "run1.1")):
        assert {key[len(prefix):]: storage.read(key) for key in storage.list(prefix)} == {
            "model.bin": b"w1w2", "same.txt": b"s", "deep/new.txt": b"n"}


def test_a_live_copy_that_failed_to_upload_is_tried_again_by_the_next_sync(parts, monkeypatch):
    wrapper = a_wrapper(parts)
    write(os.path.join(wrapper.code_dir, "output", "model.bin"), b"w")
    storage = parts.ports.storage
    real_upload = storage.upload_file
    failing = [True]

    def upload_once_failing(key, path):
        if failing.pop() if failing else False:
            raise OSError("storage unreachable")
        return real_upload(key, path)

    monkeypatch.setattr(storage, "upload_file", upload_once_failing)
    with pytest.raises(OSError):
        wrapper.sync()
    wrapper.sync()
    assert storage.read(layout.live_prefix(WS, "run1.1") + "model.bin") == b"w"


def test_the_last_metrics_come_from_what_was_shipped_without_reading_the_log_again(parts, monkeypatch):
    monkeypatch.setattr(wrapper_module, "SHIP_CHUNK_BYTES", 4096)
    node = Recording(parts.local_node)
    wrapper = a_wrapper(parts, node)
    write(wrapper.local_log, b"".join(metrics_line(step=i, loss=1 / (i + 1), acc=i / 1000) for i in range(1000)))
    wrapper.sync()
    write(wrapper.local_log, metrics_line(step=1000, loss=0.0001) + metrics_line(lr=0.5))
    finished = wrapper.finish()
    assert finished.metrics == {"loss": 0.0001, "acc": 0.999, "lr": 0.5}
    log_reads = [limit for path, _, limit in node.reads if path == wrapper.local_log]
    assert log_reads and all(limit is not None and limit <= 4096 for limit in log_reads)  # never the whole log


def test_a_supervisor_that_took_over_reads_the_log_again_in_pieces_for_the_last_metrics(parts, monkeypatch):
    monkeypatch.setattr(wrapper_module, "SHIP_CHUNK_BYTES", 4096)
    first = a_wrapper(parts)
    write(first.local_log, b"".join(metrics_line(step=i, loss=1 / (i + 1), acc=i / 1000) for i in range(1000)))
    first.sync()  # shipped, with its offset saved: then the host died
    write(first.local_log, metrics_line(step=1000, loss=0.0001))
    node = Recording(parts.local_node)
    successor = RunWrapper.resume(first.task, first.node_dir, parts.ports.storage, parts.ports.publisher, node=node)
    finished = successor.finish()
    assert finished.metrics == {"loss": 0.0001, "acc": 0.999}  # acc was only logged before the takeover
    log_reads = [limit for path, _, limit in node.reads if path == successor.local_log]
    assert len(log_reads) > 10 and all(limit is not None and limit <= 4096 for limit in log_reads)


def test_the_run_log_opens_with_its_start_in_one_write_and_a_second_start_appends_only_its_own(parts):
    from xt_submit.domain import run_log

    class CountingStorage:
        def __init__(self, inner):
            self._inner, self.writes = inner, []

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def create_log(self, key, data):
            self.writes.append(("create_log", key))
            return self._inner.create_log(key, data)

        def append(self, key, data):
            self.writes.append(("append", key))
            return self._inner.append(key, data)

    key = layout.run_log_key(WS, "run1.1")
    for attempt in (1, 2):  # the second: the task started again (its first host died after starting it)
        wrapper = a_wrapper(parts)
        wrapper.storage = storage = CountingStorage(parts.ports.storage)
        wrapper.start()  # its code is nowhere: the run fails to prepare, after its start is logged
        expected = [("create_log", key)] if attempt == 1 else [("create_log", key), ("append", key)]
        assert [w for w in storage.writes if w[1] == key] == expected
    events = [record["event"] for record in run_log.iter_records(parts.ports.storage.read(key))]
    assert events == ["created", "hparams", "queued", "started", "started"]


def test_a_started_run_is_first_synced_a_sync_period_after_its_start_and_a_resumed_one_at_once(parts, monkeypatch):
    import signal
    import time

    from support.pipeline import make_code_zip

    key, _ = make_code_zip(parts, {"train.py": "print('hello', flush=True)\nimport time; time.sleep(60)\n"})
    monkeypatch.setattr(wrapper_module, "SYNC_SECONDS", 3600.0)
    task = RunTask(workspace=WS, experiment="e", job="job1", run="run1.1", command="python train.py", code_key=key)
    node_dir = parts.home / "nodes" / "local" / WS / "run1.1"
    wrapper = RunWrapper(task, node_dir, parts.ports.storage, parts.ports.publisher, node=parts.local_node)
    wrapper.start()
    storage, console_key = parts.ports.storage, layout.console_key(WS, "run1.1")
    try:
        deadline = time.monotonic() + 60
        while b"hello" not in parts.local_node.read_from(wrapper.console) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not wrapper.supervise()  # running, and printed: nothing shipped before its first sync is due
        assert console_key not in storage.list(layout.run_prefix(WS, "run1.1"))
        adopted = RunWrapper.resume(task, node_dir, storage, parts.ports.publisher, node=parts.local_node)
        assert not adopted.supervise()  # a supervisor that took over ships at once
        assert storage.read(console_key) == b"hello\n"
    finally:
        parts.local_node.kill_group(wrapper.state["pid"], signal.SIGKILL)


def test_a_run_is_reported_started_after_its_launch_and_once_by_a_successor_of_a_supervisor_that_died_between(
        parts, monkeypatch):
    """The start's report (run log opening, RunStarted) follows the launch, so a slot is filled sooner;
    a supervisor that dies between the two leaves the pid saved and the report due: its successor
    makes it, once, before the run's end is reported."""
    import time

    from support.pipeline import make_code_zip
    from xt_submit.domain import run_log
    from xt_submit.domain.messages import EVENTS_QUEUE, RunFinished, RunStarted, decode_event

    class Died(BaseException):
        pass

    def die(self):
        assert self.state["pid"] is not None  # launched, and saved so, before the report
        raise Died()

    key, _ = make_code_zip(parts, {"train.py": "print('hello', flush=True)\n"})
    task = RunTask(workspace=WS, experiment="e", job="job1", run="run1.1", command="python train.py", code_key=key)
    node_dir = parts.home / "nodes" / "local" / WS / "run1.1"
    first = RunWrapper(task, node_dir, parts.ports.storage, parts.ports.publisher, node=parts.local_node)
    with monkeypatch.context() as patch:
        patch.setattr(RunWrapper, "_announce", die)
        with pytest.raises(Died):
            first.start()
    log_key = layout.run_log_key(WS, "run1.1")
    assert log_key not in parts.ports.storage.list(layout.run_prefix(WS, "run1.1"))
    successor = RunWrapper.resume(task, node_dir, parts.ports.storage, parts.ports.publisher, node=parts.local_node)
    deadline = time.monotonic() + 120
    while not successor.supervise() and time.monotonic() < deadline:
        time.sleep(0.02)
    events = [record["event"] for record in run_log.iter_records(parts.ports.storage.read(log_key))]
    assert events == ["created", "hparams", "queued", "started", "ended"]
    sent = [type(decode_event(m["body"])) for m in parts.queue.peek(EVENTS_QUEUE)]
    assert sent == [RunStarted, RunFinished]
    again = RunWrapper.resume(task, node_dir, parts.ports.storage, parts.ports.publisher, node=parts.local_node)
    assert again.supervise()  # a later successor finds it finished and reported: nothing is sent again
    assert [type(decode_event(m["body"])) for m in parts.queue.peek(EVENTS_QUEUE)] == sent
