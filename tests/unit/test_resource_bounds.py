"""Resource bounds on the embedded ports (issue 16, class 5): console and run log shipped in bounded
pieces with the console capped per run (the run log never), `xt view console` streamed, a run's
unpacked code gone once it is reported, upload temp files removed, a full disk failing the run with
its reason, and the local host's retries spaced as the Functions app's are."""
import io
import json

import pytest

from xt_submit.domain import layout
from xt_submit.domain.messages import RunTask
from xt_submit.runtime import wrapper as wrapper_module
from xt_submit.runtime.wrapper import RunWrapper

WS = "ws1"
CHUNK = 64 * 1024
CAP = 1024 * 1024


class Recording:
    """Wraps a port and records every call's arguments (to check the size of what moved)."""

    def __init__(self, inner):
        self._inner, self.calls = inner, []

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def small_bounds(monkeypatch):
    monkeypatch.setattr(wrapper_module, "SHIP_CHUNK_BYTES", CHUNK)
    monkeypatch.setattr(wrapper_module, "CONSOLE_MAX_BYTES", CAP)


def a_wrapper(parts, node=None, storage=None):
    task = RunTask(workspace=WS, experiment="e", job="job1", run="run1.1", command="python train.py", code_key="x")
    node_dir = parts.home / "nodes" / "local" / WS / "run1.1"
    node_dir.mkdir(parents=True, exist_ok=True)
    return RunWrapper(task, node_dir, storage or parts.ports.storage, parts.ports.publisher,
                      node=node or parts.local_node)


def stored(parts, key):
    return parts.ports.storage.read(key) if parts.ports.storage.exists(key) else b""


def test_the_console_is_shipped_in_bounded_pieces_and_capped_once_with_a_note(parts, small_bounds):
    node, storage = Recording(parts.local_node), Recording(parts.ports.storage)
    wrapper = a_wrapper(parts, node, storage)
    burst = bytes(range(256)) * (3 * CAP // 256)  # three times the cap, in one pass
    with open(wrapper.console, "wb") as f:
        f.write(burst)
    wrapper.sync()
    console = stored(parts, layout.console_key(WS, "run1.1"))
    note = f"\n[xt] console truncated at {CAP} bytes (XT_CONSOLE_MAX_BYTES); the rest was not stored\n".encode()
    assert console == burst[:CAP] + note
    reads = [call for call in node.calls if call[0] == "read_from" and call[1][0] == wrapper.console]
    assert reads and all(args[2] <= CHUNK for _, args, _ in reads)  # never more than a piece in memory
    appends = [len(args[1]) for name, args, _ in storage.calls if name == "append"]
    assert max(appends) <= CHUNK and len(appends) >= CAP // CHUNK
    # more output later, and a supervisor that took over: the note is not repeated, nothing more stored
    with open(wrapper.console, "ab") as f:
        f.write(b"later\n")
    wrapper.sync()
    successor = RunWrapper.resume(wrapper.task, wrapper.node_dir, parts.ports.storage, parts.ports.publisher,
                                  node=parts.local_node)
    successor.sync()
    assert stored(parts, layout.console_key(WS, "run1.1")) == burst[:CAP] + note


def test_a_console_exactly_at_the_cap_gets_no_note(parts, small_bounds):
    wrapper = a_wrapper(parts)
    with open(wrapper.console, "wb") as f:
        f.write(b"y" * CAP)
    wrapper.sync()
    assert stored(parts, layout.console_key(WS, "run1.1")) == b"y" * CAP


def test_the_run_log_is_never_capped_and_goes_in_whole_lines_even_past_a_chunk(parts, small_bounds):
    wrapper = a_wrapper(parts)
    with open(wrapper.console, "wb") as f:
        f.write(b"c" * (2 * CAP))  # the console is over its cap: the run log still ships all of it
    lines = [json.dumps({"event": "metrics", "data": {"step": i, "loss": 1 / (i + 1)}}).encode() + b"\n"
             for i in range(40000)]  # ~2.4 MB: past the console's cap and many chunks
    huge = json.dumps({"event": "metrics", "data": {f"m{i}": i for i in range(30000)}}).encode() + b"\n"
    assert len(huge) > 4 * CHUNK  # one line longer than a chunk: read on to its end, never split
    body = b"".join(lines[:20000]) + huge + b"".join(lines[20000:])
    with open(wrapper.local_log, "wb") as f:
        f.write(body + b'{"event": "metr')  # a last line still being written
    wrapper.sync()
    key = layout.run_log_key(WS, "run1.1")
    assert stored(parts, key) == body  # every whole line, and not the torn one
    with open(wrapper.local_log, "ab") as f:
        f.write(b'ics", "data": {}}\n')
    wrapper.sync()
    assert stored(parts, key) == body + b'{"event": "metrics", "data": {}}\n'
    assert len(stored(parts, layout.console_key(WS, "run1.1"))) < CAP + 200


def test_view_console_streams_the_console_and_its_json_is_whole(parts):
    from xt_submit.cli.report_commands import _stream_console

    text = "naïve ✓ ünïcode\n" * 50000  # multi-byte characters across piece boundaries

    class Pieces:
        def exists(self, key):
            return True

        def read_chunks(self, key):
            data = text.encode()
            return (data[i:i + 4099] for i in range(0, len(data), 4099))  # splits characters

        def read(self, key):
            raise AssertionError("the console was read whole")

    out = io.StringIO()
    _stream_console(Pieces(), "k", out)
    assert out.getvalue() == text
    out = io.StringIO()
    _stream_console(Pieces(), "k", out, head={"run": "run1.1", "status": "completed"})
    assert json.loads(out.getvalue()) == {"run": "run1.1", "status": "completed", "console": text}


def test_a_failed_upload_leaves_no_temp_file_and_stale_ones_are_swept(tmp_path, monkeypatch):
    import errno
    import os
    import shutil
    import time

    from xt_submit.adapters.storage import directory
    from xt_submit.adapters.storage.directory import DirectoryStorage

    storage = DirectoryStorage(tmp_path / "storage")
    source = tmp_path / "code.zip"
    source.write_bytes(b"z" * 100000)

    def copy_then_fill_the_disk(src, dst):
        with open(dst, "wb") as f:
            f.write(b"z" * 50000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", copy_then_fill_the_disk)
    with pytest.raises(OSError):
        storage.upload_file("code/abc.zip", str(source))
    monkeypatch.undo()
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:1000])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OSError):
        storage.write("code/def.zip", b"z" * 100000)
    monkeypatch.undo()
    code = tmp_path / "storage" / "code"
    assert sorted(p.name for p in code.iterdir()) == []  # neither failure left its temp file

    # a writer killed mid-upload (SIGKILL: no cleanup ran) left one; a live writer is writing another
    stale, live = code / ".tmp-1234-abc.zip", code / ".tmp-5678-def.zip"
    stale.write_bytes(b"z" * 80000)
    live.write_bytes(b"z" * 100)
    old = time.time() - directory.STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    DirectoryStorage(tmp_path / "storage").write("code/ghi.zip", b"fine")  # the next process to write there
    assert sorted(p.name for p in code.iterdir()) == [live.name, "ghi.zip"]


def serve_until_ended(parts, host, jobs, seconds=60):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        host.step()  # an error escaping here is the host crashing
        records = [parts.ports.stats.get_job(WS, job) if parts.ports.stats.list_jobs(WS) else None for job in jobs]
        if all(r and r["status"] in ("completed", "error", "cancelled") for r in records):
            return
        time.sleep(0.02)
    raise AssertionError(f"{jobs} did not end within {seconds}s")


@pytest.mark.parametrize("failing", ["console", "state"])
def test_a_full_disk_fails_the_run_with_its_reason_and_the_host_keeps_serving(parts, monkeypatch, failing, reliability):
    import errno
    from pathlib import Path

    from support.pipeline import make_code_zip, make_manifest
    from xt_submit.domain.messages import JobSubmitted
    from xt_submit.runtime.local_host import LocalHost

    key, sha = make_code_zip(parts, {"train.py": "from xt_submit import Run\nRun().log_metrics({'loss': 0.5})\n"
                                                 "print('hello ' * 100, flush=True)\nimport time; time.sleep(1)\n"})
    full = {"on": True}
    storage, real_append, real_open = parts.ports.storage, parts.ports.storage.append, Path.open

    def no_space(path):
        return OSError(errno.ENOSPC, "No space left on device", str(path))

    def append(key, data):  # the storage disk fills up under the run's console
        if full["on"] and failing == "console" and key == layout.console_key(WS, "run1.1"):
            raise no_space(storage.root / key)
        return real_append(key, data)

    def open_for_state(self, mode="r", *args, **kwargs):  # the node's disk fills up under the supervisor's state
        if (full["on"] and failing == "state" and "run1.1" in str(self) and self.name.startswith("wrapper_state")
                and mode != "r"):
            raise no_space(self)
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(storage, "append", append)
    monkeypatch.setattr(Path, "open", open_for_state)
    manifest = make_manifest(key, sha, hp_space={}, script="train.py", command="python train.py")
    parts.ports.publisher.send_job(JobSubmitted(submission_id="s1", manifest=manifest, submitted_at=1.0))
    host = LocalHost(parts)
    serve_until_ended(parts, host, ["job1"])
    run = parts.ports.stats.get_run(WS, "run1.1")
    assert run["status"] == "error", run
    assert run["reason"].startswith("no space left on device while "), run["reason"]
    assert str(parts.home) in run["reason"]  # names where
    full["on"] = False  # space freed: the same host serves the next job
    parts.ports.publisher.send_job(JobSubmitted(submission_id="s2", manifest=manifest, submitted_at=2.0))
    serve_until_ended(parts, host, ["job2"])
    assert parts.ports.stats.get_run(WS, "run2.1")["status"] == "completed"
    assert parts.queue.peek("events/$DeadLetterQueue") == [] and parts.queue.peek("jobs/$DeadLetterQueue") == []
    reliability.add("resource bounds: disk full (ENOSPC) under a run's console or state; the host keeps serving",
                    faults_injected=1, runs_failed_with_reason=1, runs_served_after=1)


@pytest.mark.parametrize("args, expected", [
    (["report", "--max-points", "99999999999999999999999", "run1.1"], "argument --max-points: expected a whole number from 2 to 100000"),
    (["report", "--console-tail", "-1", "run1.1"], "argument --console-tail: expected a whole number from 0 to 10485760"),
    (["report", "--first", "0", "run1.1"], "argument --first: expected a whole number from 1 to"),
    (["report", "--last", "nan", "run1.1"], "argument --last: expected a whole number from 1 to"),
])
def test_xt_report_numbers_are_bounded_with_a_one_line_error(tmp_path, monkeypatch, capsys, args, expected):
    from xt_submit.cli.main import main

    monkeypatch.setenv("XT_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit) as exited:
        main(args)
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert exited.value.code == 2 and expected in line


def test_an_xt_home_that_is_a_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    from xt_submit.cli.main import main

    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("XT_HOME", str(home))
    assert main(["list", "runs"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"xt: XT_HOME: expected a folder for XT's state, but {home} is a file"
    assert home.read_text() == "not a folder"  # untouched


def test_storage_remembers_a_bounded_number_of_the_folders_it_made_and_makes_a_forgotten_one_again(tmp_path, monkeypatch):
    import os
    import shutil
    import time

    from xt_submit.adapters.storage import directory

    monkeypatch.setattr(directory, "MADE_DIRS_REMEMBERED", 8)
    storage = directory.DirectoryStorage(tmp_path / "s")
    for i in range(50):  # a long-lived host storing for many runs
        storage.write(f"runs/run{i}/run_stats.json", b"x")
    assert len(storage._made_dirs) == 8
    shutil.rmtree(tmp_path / "s" / "runs" / "run0")  # forgotten, and removed meanwhile
    stale = tmp_path / "s" / "runs" / "run1" / ".tmp-left-by-a-dead-writer"
    stale.write_bytes(b"half")
    old = time.time() - directory.STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    storage.write("runs/run0/run_stats.json", b"y")
    storage.append("runs/run1/console.txt", b"z")
    assert storage.read("runs/run0/run_stats.json") == b"y" and storage.read("runs/run1/console.txt") == b"z"
    assert not stale.exists()  # a folder made again is swept again
