"""The box agent (node_kit/box_agent.py) on its own, as a box runs it: a real `python3 -S -I
box_agent.py` process spoken to over its stdin and stdout, starting real runs. (Over SSH, with the
node around it: tests/adapters/test_ssh_node.py and the node contract.)"""
import base64
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xt_submit.node_kit import box_agent

PATIENCE_SECONDS = 60  # a bound, not a deadline: a loaded machine takes long, a broken agent forever


class AgentProcess:
    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.bin_dir = tmp_path / "xt-bin"
        self.process = subprocess.Popen([sys.executable, "-S", "-I", box_agent.__file__, str(self.bin_dir)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env})
        self.told: list = []  # what it told unasked (ended reapers), in order
        self._pending = b""
        self._last_id = 0

    def ask(self, **request) -> dict:
        self._last_id += 1
        self.send({**request, "id": self._last_id})
        return self.next(lambda message: message.get("id") == self._last_id)

    def send(self, request: dict) -> None:
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()

    def next(self, wanted) -> dict:
        """The next message `wanted` takes; the others it told meanwhile are kept in `told`."""
        deadline = time.monotonic() + PATIENCE_SECONDS
        while True:
            while b"\n" in self._pending:
                line, self._pending = self._pending.split(b"\n", 1)
                message = json.loads(line)
                if wanted(message):
                    return message
                self.told.append(message)
            left = deadline - time.monotonic()
            assert left > 0, f"no answer within {PATIENCE_SECONDS}s"
            if select.select([self.process.stdout], [], [], left)[0]:
                chunk = os.read(self.process.stdout.fileno(), 65536)
                assert chunk, f"the agent ended: {self.process.stderr.read().decode()}"
                self._pending += chunk

    def ended(self, pid: int) -> dict:
        for message in self.told:
            if message.get("ended") == pid:
                return message
        return self.next(lambda message: message.get("ended") == pid)

    def close(self) -> int:
        self.process.stdin.close()
        return self.process.wait(PATIENCE_SECONDS)


@pytest.fixture
def agent(tmp_path):
    process = AgentProcess(tmp_path, XT_HOST_SECRET="not-for-runs")
    yield process
    if process.process.poll() is None:
        process.process.kill()
        process.process.wait()


def cached_tree(tmp_path: Path) -> Path:
    cached = tmp_path / "cache" / "abc"
    cached.mkdir(parents=True)
    (cached / "train.py").write_text(
        "import os, sys\n"
        "print('secret' if 'XT_HOST_SECRET' in os.environ else 'clean', os.environ['OWN'],\n"
        "      os.environ['PATH'].endswith(os.pathsep + sys.argv[1]))\n"
        "open('written.txt', 'w').write('mine')\n"
        "sys.exit(3)\n")
    (cached / "data").mkdir()
    (cached / "data" / "x.txt").write_text("shared")
    return cached


def launch_request(tmp_path: Path, argv, copy=None, **extra) -> dict:
    run = tmp_path / "run"
    return {"op": "launch", "copy": copy, "cwd": str(run / "code"), "argv": argv, "env": {"OWN": "own value"},
            "console": str(run / "console.log"), "exit_file": str(run / "exit_code"), "grace": 1.0, **extra}


def copy_spec(tmp_path: Path, cached: Path) -> dict:
    run = tmp_path / "run"
    return {"cached": str(cached), "into": str(run / "code"), "output": str(run / "code" / "output"),
            "empty": [str(run / "log.jsonl")]}


def test_a_launch_copies_the_code_starts_the_run_and_tells_when_its_reaper_ended(agent, tmp_path):
    cached = cached_tree(tmp_path)
    answer = agent.ask(**launch_request(tmp_path, [sys.executable, "train.py", str(agent.bin_dir)],
                                        copy=copy_spec(tmp_path, cached)))
    assert answer["status"] == 0 and answer["pid"] > 0 and answer["start"].isdigit()
    assert agent.ended(answer["pid"]) == {"ended": answer["pid"], "start": answer["start"]}
    run = tmp_path / "run"
    # the exit file is written before the reaper ends: whoever is told can read it at once
    assert (run / "exit_code").read_text().split("\n")[0] == "3"
    # the run's own variables and XT's bin at the end of PATH; nothing else of the agent's environment
    assert (run / "console.log").read_text() == "clean own value True\n"
    assert (run / "code" / "written.txt").read_text() == "mine" and not (cached / "written.txt").exists()
    assert (run / "code" / "data" / "x.txt").read_text() == "shared"
    assert (run / "code" / "output").is_dir() and (run / "log.jsonl").read_bytes() == b""


def test_a_copy_of_a_tree_gone_from_the_cache_or_one_that_fails_says_so(agent, tmp_path):
    gone = agent.ask(op="copy", copy=copy_spec(tmp_path, tmp_path / "cache" / "gone"))
    assert gone == {"id": gone["id"], "status": box_agent.CACHE_MISSING, "err": ""}
    cached = cached_tree(tmp_path)
    (tmp_path / "run").write_text("a file where the run's folder goes")
    failed = agent.ask(op="copy", copy=copy_spec(tmp_path, cached))
    assert failed["status"] == box_agent.PREPARE_FAILED and str(tmp_path / "run") in failed["err"]
    # a launch whose copy failed starts nothing
    launch = agent.ask(**launch_request(tmp_path, [sys.executable, "train.py"], copy=copy_spec(tmp_path, cached)))
    assert launch["status"] == box_agent.PREPARE_FAILED and "pid" not in launch


def test_a_launch_into_a_missing_folder_or_an_unknown_request_is_refused_and_the_agent_goes_on(agent, tmp_path):
    missing = agent.ask(**launch_request(tmp_path, [sys.executable, "-c", "pass"]))
    assert missing["status"] == 1 and missing["err"] == f"{tmp_path / 'run' / 'code'}: no such folder"
    assert "error" in agent.ask(op="format-disk")
    agent.process.stdin.write(b"{not json\n")
    agent.process.stdin.flush()
    assert agent.next(lambda message: message.get("id") is None)["error"].startswith("not a request: ")
    assert "KeyError" in agent.ask(op="launch")["error"]  # no fields: told, not a crash
    (tmp_path / "run" / "code").mkdir(parents=True)
    assert agent.ask(**launch_request(tmp_path, [sys.executable, "-c", "pass"]))["status"] == 0


def test_a_removal_is_answered_once_done_with_its_last_complaint(agent, tmp_path):
    folder = tmp_path / "run-folder"
    (folder / "deep").mkdir(parents=True)
    (folder / "deep" / "f").write_text("x")
    done = agent.ask(op="remove", argv=["rm", "-rf", "--", str(folder)])
    assert done["status"] == 0 and done["err"] == "" and not folder.exists()
    # a flood of complaints (more than a pipe holds) is read as it comes; the last line is told
    flood = "import sys\nfor i in range(20000): print('cannot remove file', i, file=sys.stderr)\nsys.exit(1)\n"
    failed = agent.ask(op="remove", argv=[sys.executable, "-c", flood])
    assert failed["status"] == 1 and failed["err"] == "cannot remove file 19999"


def test_a_signal_sent_right_after_the_launch_reaches_the_run_through_its_reaper(agent, tmp_path):
    (tmp_path / "run" / "code").mkdir(parents=True)
    answer = agent.ask(**launch_request(tmp_path, [sys.executable, "-c", "import time; time.sleep(300)"]))
    assert agent.ask(op="kill", pid=answer["pid"], sig=int(signal.SIGTERM))["status"] == 0
    agent.ended(answer["pid"])
    assert (tmp_path / "run" / "exit_code").read_text().split("\n")[0] == str(-signal.SIGTERM)


def test_runs_outlive_the_agent_and_still_write_how_they_ended(agent, tmp_path):
    """The host's connection drops: the agent's stdin ends, and so does the agent, at once; its runs
    go on under their reapers."""
    (tmp_path / "run" / "code").mkdir(parents=True)
    gate = tmp_path / "gate"
    script = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)\nraise SystemExit(5)\n"
    answer = agent.ask(**launch_request(tmp_path, [sys.executable, "-c", script]))
    assert agent.close() == 0
    gate.write_text("")
    exit_file = tmp_path / "run" / "exit_code"
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not exit_file.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert exit_file.read_text().split("\n")[0] == "5" and answer["pid"] > 0


def copy_here(spec):
    """box_agent's copy in this process, its cp (a big tree's) waited for here."""
    began = box_agent.begin_copy(spec)
    if isinstance(began, tuple):
        return began
    _, err = began.communicate()
    return box_agent.end_copy(spec, began.returncode, err.decode().strip())


@pytest.mark.parametrize("entries", [box_agent.SMALL_TREE_ENTRIES, 0], ids=["small tree: the agent copies", "big tree: cp"])
def test_a_runs_copy_keeps_links_modes_and_times_whoever_makes_it(tmp_path, monkeypatch, entries):
    monkeypatch.setattr(box_agent, "SMALL_TREE_ENTRIES", entries)
    monkeypatch.setattr(box_agent, "_small_trees", {})
    cached = cached_tree(tmp_path)
    (cached / "run.sh").write_text("#!/bin/sh\n")
    (cached / "run.sh").chmod(0o750)
    os.utime(cached / "data" / "x.txt", (1_000_000_000, 1_000_000_000))
    (cached / "link").symlink_to("data/x.txt")
    assert copy_here(copy_spec(tmp_path, cached)) == (0, "")
    code = tmp_path / "run" / "code"
    assert os.readlink(code / "link") == "data/x.txt" and (code / "link").read_text() == "shared"
    assert (code / "run.sh").stat().st_mode & 0o777 == 0o750
    assert (code / "data" / "x.txt").stat().st_mtime == 1_000_000_000
    assert sorted(p.name for p in code.iterdir()) == ["data", "link", "output", "run.sh", "train.py"]
    assert (tmp_path / "run" / "log.jsonl").exists()
    assert box_agent._small_trees == {str(cached): entries > 0}


def test_a_big_trees_copy_goes_on_while_the_agent_answers_other_requests(agent, tmp_path):
    cached = cached_tree(tmp_path)
    for i in range(box_agent.SMALL_TREE_ENTRIES + 1):  # one more than the agent copies itself
        (cached / "data" / f"f{i}.txt").write_text(str(i))
    agent.send({**launch_request(tmp_path, [sys.executable, "train.py", str(agent.bin_dir)],
                                 copy=copy_spec(tmp_path, cached)), "id": "big"})
    agent.send({"id": "look", "op": "read", "path": str(cached / "data" / "f7.txt"), "offset": 0, "limit": None})
    answers = {message["id"]: message for message in (agent.next(lambda m: "id" in m), agent.next(lambda m: "id" in m))}
    assert answers["look"] == {"id": "look", "data": "Nw=="}  # base64 of "7"
    assert answers["big"]["status"] == 0
    agent.ended(answers["big"]["pid"])
    code = tmp_path / "run" / "code"
    last = box_agent.SMALL_TREE_ENTRIES
    assert (code / "data" / f"f{last}.txt").read_text() == str(last) and (tmp_path / "run" / "log.jsonl").exists()
    assert (tmp_path / "run" / "console.log").read_text() == "clean own value True\n"


def test_a_read_and_a_walk_answer_as_sftp_would(agent, tmp_path):
    root = tmp_path / "output"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"0123456789")
    (root / "sub" / "b.txt").write_bytes(b"x" * 40000)
    (root / "link.txt").symlink_to("a.txt")  # a link's target never travels
    (root / "linked-dir").symlink_to(root / "sub")
    os.utime(root / "a.txt", (1_000_000_000.7, 1_000_000_000.7))
    assert agent.ask(op="read", path=str(root / "a.txt"), offset=3, limit=4)["data"] == "MzQ1Ng=="  # "3456"
    big = agent.ask(op="read", path=str(root / "sub" / "b.txt"), offset=0, limit=None)
    assert base64.b64decode(big["data"]) == b"x" * box_agent.READ_BYTES  # one request's worth: the rest over SFTP
    assert agent.ask(op="read", path=str(root / "gone"), offset=0, limit=None)["missing"] is True
    walked = agent.ask(op="walk", root=str(root))["files"]
    assert walked == [["a.txt", 1_000_000_000, 10], ["sub/b.txt", int((root / "sub" / "b.txt").stat().st_mtime), 40000]]
    assert agent.ask(op="walk", root=str(tmp_path / "none"))["files"] == []


def test_an_unpack_fills_the_cache_once_by_its_sha256_and_a_bad_zip_is_told_in_one_line(agent, tmp_path):
    """The box's cache of snapshots is filled by a fork of the agent (no fresh python3 per
    snapshot): the tree named by the zip's sha256, the zip gone; a zip that is not the one named,
    or not safe, is refused with the line that says why, and nothing is left in the cache."""
    import zipfile

    from xt_submit.node_kit import code_archive

    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "train.py").write_text("print('unpacked')\n")
    (project / "pkg" / "mod.py").write_text("X = 1\n")
    snapshot = code_archive.snapshot_code(["."], str(project))
    cache, incoming = tmp_path / "cache", tmp_path / "incoming"
    incoming.mkdir()

    def sent(data: bytes) -> str:
        path = incoming / f"{len(list(incoming.iterdir()))}-{os.urandom(4).hex()}.zip"
        path.write_bytes(data)
        return str(path)

    first = sent(snapshot.data)
    done = agent.ask(op="unpack", zip=first, cache=str(cache), digest=snapshot.sha256, source="code/x.zip")
    assert done == {"id": done["id"], "status": 0, "err": "", "tree": str(cache / snapshot.sha256)}
    assert (cache / snapshot.sha256 / "pkg" / "mod.py").read_text() == "X = 1\n" and not os.path.exists(first)
    again = agent.ask(op="unpack", zip=sent(snapshot.data), cache=str(cache), digest="", source="code/x.zip")
    assert again["status"] == 0 and again["tree"] == done["tree"] and sorted(os.listdir(cache)) == [snapshot.sha256]

    wrong = agent.ask(op="unpack", zip=sent(snapshot.data), cache=str(cache), digest="0" * 64, source="code/y.zip")
    assert wrong["status"] == 1 and wrong["err"] == (f"code/y.zip: the code zip's sha256 is {snapshot.sha256}, "
                                                     f"not the {'0' * 64} it was sent as")
    escaping = tmp_path / "escape.zip"
    with zipfile.ZipFile(escaping, "w") as archive:
        archive.writestr("../outside.py", "print('escaped')\n")
    bad = agent.ask(op="unpack", zip=sent(escaping.read_bytes()), cache=str(cache), digest="", source="code/z.zip")
    assert bad["status"] == 1 and bad["err"].startswith("code/z.zip: ") and "\n" not in bad["err"]
    assert not (tmp_path / "outside.py").exists()
    junk = agent.ask(op="unpack", zip=sent(b"not a zip"), cache=str(cache), digest="", source="code/j.zip")
    assert junk["status"] == 1 and junk["err"].startswith("code/j.zip: not a zip file")
    assert sorted(os.listdir(cache)) == [snapshot.sha256] and list(incoming.iterdir()) == []  # no half trees, no zips
    assert agent.ask(op="walk", root=str(cache / snapshot.sha256))["files"][1][0] == "train.py"  # it goes on serving
