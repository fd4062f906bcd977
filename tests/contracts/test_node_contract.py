"""The Node contract: one suite for this machine (LocalNode) and a pool's box over SSH (SshNode,
against a real OpenSSH server on loopback), each made by bootstrap's node factory as the pool
executor makes them. What the run wrapper relies on: the code unpacked where it says, files
appended and read from an offset, changes seen by walk, a launched command's console and exit
code, liveness, a signal that reaches the whole process group, and a share's data folder placed
with none of the code's limits yet nothing that escapes it."""
import os
import posixpath
import signal
import stat
import time
import uuid
import zipfile

import pytest

from xt_submit import bootstrap
from xt_submit.domain.boxes import LOCAL_ADDRESS
from xt_submit.node_kit import code_archive

PATIENCE_SECONDS = 60  # a bound, not a deadline: a loaded machine takes long, a broken node forever


@pytest.fixture(params=["local", "ssh"])
def node(request, tmp_path):
    make_node = bootstrap.node_factory(tmp_path / "home")
    if request.param == "local":
        made = make_node("box0", {"address": LOCAL_ADDRESS}, "runs")
    else:
        boxes = request.getfixturevalue("ssh_boxes")
        box = boxes.boxes["box1"]
        made = make_node("box1", {"address": box.address, "key": str(boxes.client_key), "host_key": box.host_key},
                         f"runs-{uuid.uuid4().hex[:8]}")
    made.connect()
    yield made
    made.close()


@pytest.fixture
def work(node, tmp_path):
    """A run's folder on the node, with the code of a two-file project unpacked in it."""
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "train.py").write_text("print('hi')\n")
    (src / "pkg" / "data.txt").write_text("d" * 100)
    snapshot = code_archive.snapshot_code(["."], str(src))
    zip_path = tmp_path / "code.zip"
    zip_path.write_bytes(snapshot.data)
    local_dir = tmp_path / "supervisor" / "ws1" / "run1.1"
    local_dir.mkdir(parents=True)
    folder = node.work_dir(str(local_dir), "ws1", "run1.1")
    code_dir = posixpath.join(folder, "code")
    node.prepare(str(zip_path), None, code_dir, posixpath.join(code_dir, "output"),
                 [posixpath.join(folder, "run.log")], source="code.zip")
    return folder


def wait_until(condition, what):
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {PATIENCE_SECONDS}s"
        time.sleep(0.05)


def test_prepare_unpacks_the_code_and_makes_the_runs_folders_and_files(node, work):
    code = posixpath.join(work, "code")
    assert node.read_from(posixpath.join(code, "train.py")) == b"print('hi')\n"
    assert node.read_from(posixpath.join(code, "pkg", "data.txt")) == b"d" * 100
    assert node.exists(posixpath.join(code, "output"))
    assert node.exists(posixpath.join(work, "run.log")) and node.read_from(posixpath.join(work, "run.log")) == b""


def data_zip(path, entries):
    """A zip of (name, bytes) entries, deflated; a name ending in '@' is a symbolic link to its bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name.rstrip("@"))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = ((stat.S_IFLNK | 0o777) if name.endswith("@") else (stat.S_IFREG | 0o644)) << 16
            archive.writestr(info, data)
    return str(path)


def test_place_data_unpacks_a_share_with_none_of_the_codes_limits_and_nothing_that_escapes(node, work, tmp_path):
    zeros = 4 * 1024**2  # deflates far past the 200:1 a code zip may have
    shared = data_zip(tmp_path / "share.zip", [("a.txt", b"1"), ("sub/zeros.bin", bytes(zeros))])
    with pytest.raises(code_archive.ArchiveError, match=r"compression ratio above 200:1"):
        node.prepare(shared, None, posixpath.join(work, "as-code"), posixpath.join(work, "as-code", "output"), [],
                     source="share.zip")
    folder = posixpath.join(work, "share_cache", "k1", "f1")
    node.place_data(shared, folder, source="shares/data/d/")
    assert node.read_from(posixpath.join(folder, "a.txt")) == b"1"
    assert {name: signature[1] for name, signature in node.walk(folder)} == {"a.txt": 1, "sub/zeros.bin": zeros}

    for entries, refused in (([("ok.txt", b"x"), ("../escaped.txt", b"x")], "path escapes the target directory"),
                             ([("ok.txt", b"x"), ("link@", b"/etc/passwd")], "symbolic links are not allowed")):
        bad = posixpath.join(work, "share_cache", "k2", "f2")
        with pytest.raises(code_archive.ArchiveError, match=rf"shares/data/d/: .*{refused}"):
            node.place_data(data_zip(tmp_path / "bad.zip", entries), bad, source="shares/data/d/")
        assert not node.exists(bad) and not node.exists(posixpath.join(work, "share_cache", "k2", "escaped.txt"))


def test_append_and_read_from_an_offset(node, work):
    log = posixpath.join(work, "run.log")
    node.append(log, b"first\n")
    node.append(log, b"second\n")
    assert node.read_from(log) == b"first\nsecond\n"
    assert node.read_from(log, offset=6) == b"second\n"
    assert node.read_from(log, offset=13) == b""
    assert node.read_from(posixpath.join(work, "missing")) == b""
    assert not node.exists(posixpath.join(work, "missing"))


def test_read_from_gives_at_most_limit_bytes(node, work):
    log = posixpath.join(work, "run.log")
    node.append(log, b"0123456789" * 10000)
    assert node.read_from(log, offset=5, limit=7) == b"5678901"
    assert node.read_from(log, offset=5, limit=0) == b""
    assert node.read_from(log, offset=99990, limit=50) == b"0123456789"  # fewer where the file ends
    assert node.read_from(log, offset=3, limit=40000) == (b"0123456789" * 10000)[3:40003]
    assert node.read_from(posixpath.join(work, "missing"), limit=5) == b""
    assert node.read_from(log) == b"0123456789" * 10000  # more than one request's worth, to its end
    assert node.read_from(log, offset=40003) == (b"0123456789" * 10000)[40003:]
    assert node.read_from(log, offset=32768, limit=32768) == (b"0123456789" * 10000)[32768:65536]


def test_a_look_answers_each_read_walk_and_exists_as_its_own_call_would(node, work, tmp_path):
    log, output = posixpath.join(work, "run.log"), posixpath.join(work, "code", "output")
    missing = posixpath.join(work, "missing")
    node.append(log, b"0123456789" * 10000)  # more than one agent answer holds: the rest comes over SFTP
    node.append(posixpath.join(output, "a.txt"), b"aa")
    reads = [(log, 0, None), (log, 5, 7), (log, 3, 40000), (log, 99990, 50), (missing, 0, None), (log, 5, 0)]
    walks = [posixpath.join(work, "code"), posixpath.join(work, "no-such-folder")]
    exists = [posixpath.join(work, "code", "train.py"), missing, output]
    look = node.look(reads=reads, walks=walks, exists=exists)
    assert look.reads == [node.read_from(*read) for read in reads]
    assert look.reads[0] == b"0123456789" * 10000 and look.reads[1] == b"5678901" and look.reads[4] == b""
    assert look.walks == [list(node.walk(root)) for root in walks]
    assert sorted(rel for rel, _ in look.walks[0]) == ["output/a.txt", "pkg/data.txt", "train.py"]
    assert look.walks[1] == []
    assert look.exists == [True, False, True]
    assert node.look() == ([], [], [])


def test_release_removes_the_runs_unpacked_code_and_its_copies(node, work):
    code = posixpath.join(work, "code")
    node.append(posixpath.join(work, "console.log"), b"printed\n")
    assert node.exists(posixpath.join(code, "train.py"))
    node.release(work)
    assert not node.exists(code) and not node.exists(posixpath.join(code, "train.py"))
    assert not node.exists(posixpath.join(work, "console.log"))  # in storage by now: a copy no longer needed


def test_walk_names_every_file_below_a_folder_and_sees_a_change(node, work, tmp_path):
    output = posixpath.join(work, "code", "output")
    assert dict(node.walk(output)) == {}
    local = tmp_path / "model.bin"
    local.write_bytes(b"w" * 10)
    node.put(str(local), posixpath.join(output, "model.bin"))
    node.append(posixpath.join(output, "log.txt"), b"x")
    before = dict(node.walk(output))
    assert sorted(before) == ["log.txt", "model.bin"]
    node.append(posixpath.join(output, "log.txt"), b"yy")
    after = dict(node.walk(output))
    assert after["log.txt"] != before["log.txt"] and after["model.bin"] == before["model.bin"]
    assert list(node.walk(posixpath.join(work, "no-such-folder"))) == []
    with node.local_copy(posixpath.join(output, "model.bin")) as path:
        with open(path, "rb") as f:
            assert f.read() == b"w" * 10


def exit_record(node, exit_file):
    """The reaper's exit file: the exit code, then when the command ended (unix seconds)."""
    code, ended = node.read_from(exit_file).split(b"\n")
    return int(code), float(ended)


def test_a_launched_command_writes_its_console_and_its_exit_code(node, work):
    console, exit_file = posixpath.join(work, "console.log"), posixpath.join(work, "exit_code")
    argv = node.python_argv(["python", "-c", "import os; print('lr is', os.environ['XT_LR']); raise SystemExit(3)"])
    launched_at = time.time()
    pid, start = node.launch(argv, posixpath.join(work, "code"), {"XT_LR": "0.1"}, console, exit_file)
    wait_until(lambda: node.exists(exit_file), "the command ended")
    code, ended = exit_record(node, exit_file)
    assert code == 3 and launched_at <= ended <= time.time()  # the boxes in these tests share this clock
    assert b"lr is 0.1" in node.read_from(console)
    wait_until(lambda: not node.alive(pid, start), "the ended command is no longer alive")


def test_a_signal_to_the_group_stops_the_command(node, work):
    console, exit_file = posixpath.join(work, "console.log"), posixpath.join(work, "exit_code")
    script = ("import subprocess, time; subprocess.Popen(['sleep', '300']); print('ready', flush=True); time.sleep(300)")
    pid, start = node.launch(node.python_argv(["python", "-c", script]), posixpath.join(work, "code"), {}, console,
                             exit_file)
    wait_until(lambda: b"ready" in node.read_from(console), "the command started")
    assert node.alive(pid, start)
    signalled_at = time.time()
    node.kill_group(pid, signal.SIGTERM)
    wait_until(lambda: node.exists(exit_file), "the stopped command's exit code")
    code, ended = exit_record(node, exit_file)
    assert code == -signal.SIGTERM and signalled_at <= ended <= time.time()
    wait_until(lambda: not node.alive(pid, start), "the stopped command is no longer alive")


def kill_on_node(node, pid, sig):
    """A signal to one process of the node (not its group, not through its reaper)."""
    if hasattr(node, "run"):
        node.run(f"kill -{int(sig)} {int(pid)}")
    else:
        os.kill(pid, sig)


def test_a_run_has_ended_once_its_reaper_wrote_the_exit_file_or_was_killed_without(node, work):
    console, exit_file = posixpath.join(work, "console.log"), posixpath.join(work, "exit_code")
    argv = node.python_argv(["python", "-c", "import time; print('ready', flush=True); time.sleep(300)"])
    pid, start = node.launch(argv, posixpath.join(work, "code"), {}, console, exit_file)
    wait_until(lambda: b"ready" in node.read_from(console), "the command started")
    assert not node.ended(pid, start, exit_file) and not node.ended(pid, start, exit_file)
    kill_on_node(node, pid, signal.SIGKILL)  # the reaper, killed before it could write its exit file
    wait_until(lambda: node.ended(pid, start, exit_file), "a killed reaper's run is seen as ended")
    assert not node.exists(exit_file)
    quick = node.python_argv(["python", "-c", "pass"])
    pid, start = node.launch(quick, posixpath.join(work, "code"), {}, console, exit_file)
    wait_until(lambda: node.ended(pid, start, exit_file), "a run that exited is seen as ended")
    assert exit_record(node, exit_file)[0] == 0


def test_probe_says_what_python_the_node_has(node):
    assert node.probe()
