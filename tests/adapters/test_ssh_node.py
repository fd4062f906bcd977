"""A box's connection (host keys, keys, no prompts) against real sshd, and setups as shell text."""
import contextlib
import shlex
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from xt_submit.adapters.nodes import ssh
from xt_submit.adapters.nodes.ssh import COMMAND_CHANNELS, SFTP_SESSIONS, BoxAddress, BoxError, SshNode
from xt_submit.config import ConfigError, load_config
from xt_submit.domain.messages import SetupSpec
from xt_submit.ports import NodeUnreachable
from xt_submit.domain.setup_script import SetupError, pin_installed, setup_digest, with_setup


def node_for(ssh_boxes, **overrides):
    box = ssh_boxes.boxes["box1"]
    settings = {"address": box.address, "key": str(ssh_boxes.client_key), "host_key": box.host_key, **overrides}
    return SshNode("box1", settings["address"], settings["key"], settings["host_key"])


def test_an_explicit_host_key_is_checked(ssh_boxes):
    node = node_for(ssh_boxes)
    node.connect()
    assert node.run("whoami")[1].strip() == ssh_boxes.boxes["box1"].user
    node.close()
    other = ssh_boxes.boxes["box2"].host_key  # a real key, but not this box's
    with pytest.raises(BoxError, match=rf"^box box1 \({ssh_boxes.boxes['box1'].user}@127\.0\.0\.1:\d+\): its host key does not match"):
        node_for(ssh_boxes, host_key=other).connect()


def test_without_host_key_known_hosts_decides(ssh_boxes, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # a user whose known_hosts does not know the box
    with pytest.raises(BoxError, match="unknown host key; add it to ~/.ssh/known_hosts .* or set boxes.box1.host-key"):
        node_for(ssh_boxes, host_key=None).connect()
    box = ssh_boxes.boxes["box1"]
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{box.port} {box.host_key}\n")
    node = node_for(ssh_boxes, host_key=None)
    node.connect()
    assert node.exists(node.home)
    node.close()


def test_a_refused_key_or_a_passphrase_never_prompts(ssh_boxes, tmp_path):
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(BoxError, match="the box refused the key"):
        node_for(ssh_boxes, key=str(stranger)).connect()
    locked = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret-phrase-x", "-f", str(locked)], check=True)
    with pytest.raises(BoxError, match="protected by a passphrase; load it into ssh-agent") as error:
        node_for(ssh_boxes, key=str(locked)).connect()
    assert "s3cret-phrase-x" not in str(error.value)


def test_an_unreachable_box_is_named_and_node_calls_say_unreachable(ssh_boxes):
    from peers.ssh_boxes import free_port

    node = SshNode("gone", f"someone@127.0.0.1:{free_port()}", str(ssh_boxes.client_key), ssh_boxes.boxes["box1"].host_key)
    with pytest.raises(BoxError, match=r"^box gone \(someone@127\.0\.0\.1:\d+\): cannot connect"):
        node.connect()
    with pytest.raises(NodeUnreachable, match="box gone"):
        node.exists("/tmp")


def test_a_box_whose_python3_is_too_old_is_named_with_the_version_expected(ssh_boxes, monkeypatch):
    """The box's python3 is asked its version (site skipped: only the interpreter's matters); one
    older than XT's runs need is refused by name, before anything is shipped or started there."""
    node = node_for(ssh_boxes)
    node.connect()  # this machine's python3 is recent enough: the check passes
    node.close()
    monkeypatch.setattr(ssh, "MIN_PYTHON", (99, 0))  # no python3 is that recent
    with pytest.raises(BoxError, match=r"^box box1 \(.*\): expected python3 99\.0 or newer on the box's PATH$"):
        node_for(ssh_boxes).connect()


@pytest.mark.parametrize(("address", "expected"), [
    ("ann@gpu1:2222", BoxAddress("ann", "gpu1", 2222)),
    ("gpu1", BoxAddress(None, "gpu1", 22)),
])
def test_box_addresses(address, expected):
    parsed = BoxAddress.parse(address, "b")
    assert (parsed.host, parsed.port) == (expected.host, expected.port)
    assert parsed.user == (expected.user or parsed.user)


@pytest.mark.parametrize("address", ["ann@gpu1:port", "ann@:22", "ann@gpu 1", "ann@gpu1:70000"])
def test_a_bad_box_address_is_a_config_error_naming_the_box(tmp_path, address):
    (tmp_path / "xt_config.yaml").write_text(f"boxes: {{gpu1: {{address: '{address}'}}}}\n")
    with pytest.raises(ConfigError, match=r"^xt_config.yaml: boxes.gpu1.address: expected user@host\[:port\]"):
        load_config(cwd=tmp_path)


def test_setup_text_activates_every_run_and_installs_once_under_a_lock():
    setup = SetupSpec(activate="conda activate torch", conda_packages=["pytorch=2.3", "cuda toolkit"],
                      pip_packages=["numpy==1.26.4"])
    script = with_setup("python train.py --lr=0.1", setup, "/home/ann/.xt/setups")
    marker = f"/home/ann/.xt/setups/{setup_digest(setup)}"
    once = (f"test -f {marker}.done || {{ conda install --yes --quiet pytorch=2.3 'cuda toolkit' && "
            f"python -m pip install --quiet numpy==1.26.4 && touch {marker}.done; }}")
    assert script == (f"conda activate torch && mkdir -p /home/ann/.xt/setups && "
                      f"flock {marker}.lock /bin/bash -c {shlex.quote(once)} && python train.py --lr=0.1")
    changed = SetupSpec(activate="conda activate torch", conda_packages=["pytorch=2.4"])
    assert setup_digest(changed) != setup_digest(setup)  # a changed list installs again
    assert with_setup("python t.py", SetupSpec(activate="source ~/venv/bin/activate"), "/m") == \
        "source ~/venv/bin/activate && python t.py"


def test_a_star_pin_takes_the_version_installed_here():
    from importlib import metadata

    assert pin_installed(["msgspec==*", "numpy>=1"], "setups.s.pip-packages") == \
        [f"msgspec=={metadata.version('msgspec')}", "numpy>=1"]
    with pytest.raises(SetupError, match=r"^setups.s.pip-packages: no-such-pkg-xt==\* pins to the version installed "
                                         r"here, but no-such-pkg-xt is not installed$"):
        pin_installed(["no-such-pkg-xt==*"], "setups.s.pip-packages")


def test_a_box_fetches_the_code_itself_from_a_read_only_link(ssh_boxes, azurite_connection_string, tmp_path):
    import uuid
    import zipfile

    from xt_submit.adapters.storage.blob import BlobStorage
    from xt_submit.node_kit.code_archive import ArchiveError

    storage = BlobStorage(f"xt-box-{uuid.uuid4().hex[:8]}", connection_string=azurite_connection_string)
    storage.ensure_container()
    local = tmp_path / "code.zip"
    with zipfile.ZipFile(local, "w") as archive:
        archive.writestr("train.py", "print('hi')\n")
    storage.upload_file("code/abc.zip", str(local))
    node = node_for(ssh_boxes)
    work = f"{node.runs_root}/fetch-test"
    node.prepare(None, storage.read_url("code/abc.zip", expiry_seconds=60), f"{work}/code", f"{work}/code/output",
                 [f"{work}/log.jsonl"], source="code/abc.zip")
    assert node.read_from(f"{work}/code/train.py") == b"print('hi')\n" and node.exists(f"{work}/log.jsonl")
    link = storage.read_url("code/missing.zip", expiry_seconds=60)
    with pytest.raises(ArchiveError, match="^box box1: cannot fetch the code from storage: HTTPError: ") as error:
        node.prepare(None, link, f"{work}/c2", f"{work}/c2/output", [], source="code/missing.zip")
    assert "sig=" not in str(error.value)  # the link (a credential) is never echoed
    node.release(work)
    node.close()


def snapshot_zip(folder, text="print('hi')\n"):
    """A code zip as `xt run` makes it (a snapshot no other test has), and its name in storage (its sha256)."""
    import hashlib
    import uuid

    from xt_submit.node_kit import code_archive

    src = folder / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "train.py").write_text(text)
    (src / "unique.txt").write_text(uuid.uuid4().hex)
    zip_path = folder / "code.zip"
    zip_path.write_bytes(code_archive.snapshot_code(["."], str(src)).data)
    return zip_path, f"code/{hashlib.sha256(zip_path.read_bytes()).hexdigest()}.zip"


def prepare_run(node, zip_path, source, run):
    work = f"{node.runs_root}/cache-test/{run}"
    node.prepare(str(zip_path), None, f"{work}/code", f"{work}/code/output", [f"{work}/log.jsonl"], source=source)
    return work


def cached_trees(node):
    return node.run(f"ls -A {node.home}/code")[1].split()


def test_a_snapshot_is_unpacked_once_per_box_and_later_runs_copy_the_unpacked_tree(ssh_boxes, tmp_path):
    node = node_for(ssh_boxes)
    zip_path, source = snapshot_zip(tmp_path)
    digest = source[len("code/"):-len(".zip")]
    node.connect()
    before = set(cached_trees(node))
    first = prepare_run(node, zip_path, source, "run1")
    assert set(cached_trees(node)) - before == {digest}
    # marked on the box, in the cached tree: a run unpacked from the zip again would not have it
    node.append(f"{node.home}/code/{digest}/unpacked-once", b"1")
    later = [prepare_run(node, zip_path, source, f"run{k}") for k in (2, 3, 4)]
    for work in later:
        assert node.exists(f"{work}/code/unpacked-once") and node.read_from(f"{work}/code/train.py") == b"print('hi')\n"
        assert node.exists(f"{work}/code/output") and node.exists(f"{work}/log.jsonl")
    assert not node.exists(f"{first}/code/unpacked-once")  # copied before the mark: each run has its own tree
    fresh = node_for(ssh_boxes)  # another host's node (nothing known about the box) finds the tree too
    assert fresh.exists(f"{prepare_run(fresh, zip_path, source, 'run5')}/code/unpacked-once")
    assert set(cached_trees(node)) - before == {digest}
    for node_ in (node, fresh):
        node_.run(f"rm -rf {node_.runs_root}/cache-test")
        node_.close()


def test_runs_starting_together_unpack_a_new_snapshot_once(ssh_boxes, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    node = node_for(ssh_boxes)
    zip_path, source = snapshot_zip(tmp_path, "print('together')\n")
    unpacks = []
    send_to_agent = node._send

    def counting_send(request, *args):
        if request["op"] == "unpack":  # the box agent's fork unpacks it
            unpacks.append(request)
        return send_to_agent(request, *args)

    node._send = counting_send
    with ThreadPoolExecutor(4) as threads:
        works = list(threads.map(lambda k: prepare_run(node, zip_path, source, f"together{k}"), range(4)))
    assert len(unpacks) == 1
    for work in works:
        assert node.read_from(f"{work}/code/train.py") == b"print('together')\n"
    assert not [name for name in cached_trees(node) if ".tmp-" in name]  # nothing half-unpacked left behind
    node.run(f"rm -rf {node.runs_root}/cache-test")
    node.close()


def test_a_runs_write_into_its_code_is_seen_by_no_other_run(ssh_boxes, tmp_path):
    node = node_for(ssh_boxes)
    zip_path, source = snapshot_zip(tmp_path, "original\n")
    one, two = (prepare_run(node, zip_path, source, run) for run in ("writer", "reader"))
    # in place (the same inode), as a script that rewrites its own file does: a shared link would pass it on
    assert node.run(f"echo changed > {one}/code/train.py && echo more >> {one}/code/train.py")[0] == 0
    assert node.read_from(f"{one}/code/train.py") == b"changed\nmore\n"
    three = prepare_run(node, zip_path, source, "later")
    assert node.read_from(f"{two}/code/train.py") == b"original\n"
    assert node.read_from(f"{three}/code/train.py") == b"original\n"
    node.run(f"rm -rf {node.runs_root}/cache-test")
    node.close()


def test_a_cached_tree_removed_on_the_box_is_unpacked_again(ssh_boxes, tmp_path):
    node = node_for(ssh_boxes)
    zip_path, source = snapshot_zip(tmp_path, "again\n")
    prepare_run(node, zip_path, source, "before")
    node.run(f"rm -rf {node.home}/code/{source[len('code/'):-len('.zip')]}")  # as the box's clean-up would
    after = prepare_run(node, zip_path, source, "after")
    assert node.read_from(f"{after}/code/train.py") == b"again\n"
    node.run(f"rm -rf {node.runs_root}/cache-test")
    node.close()


def test_a_zip_that_is_not_the_snapshot_it_is_named_for_is_refused(ssh_boxes, tmp_path):
    from xt_submit.node_kit.code_archive import ArchiveError

    node = node_for(ssh_boxes)
    zip_path, _ = snapshot_zip(tmp_path, "tampered\n")
    node.connect()
    on_box = f"{node.home}/incoming/fetched.zip"
    node.put(str(zip_path), on_box)
    work = f"{node.runs_root}/cache-test/named"
    with pytest.raises(ArchiveError, match="^box box1: code/0{64}.zip: the code zip's sha256 is [0-9a-f]{64}, not the 0{64}"):
        node.prepare(None, f"file://{on_box}", f"{work}/code", f"{work}/code/output", [], source=f"code/{'0' * 64}.zip")
    assert not node.exists(f"{work}/code") and not [name for name in cached_trees(node) if name.startswith("0" * 8)]
    node.close()


@contextlib.contextmanager
def box1_with_max_sessions(ssh_boxes, limit):
    """box1 (its user, keys and home) through a second sshd of its own that allows `limit` sessions
    per connection (None: sshd's default, 10); the session's boxes allow 64."""
    from peers.ssh_boxes import SSHD, free_port
    from support.peers import wait_for_port

    box, folder, port = ssh_boxes.boxes["box1"], ssh_boxes.root / "box1", free_port()
    lines = [line for line in (folder / "sshd_config").read_text().splitlines()
             if line and not line.startswith(("Port ", "PidFile ", "MaxSessions "))]
    lines += [f"Port {port}", f"PidFile {folder / f'sshd-{port}.pid'}"] + ([f"MaxSessions {limit}"] if limit else [])
    config = folder / f"sshd-{port}_config"
    config.write_text("\n".join(lines) + "\n")
    with open(folder / f"sshd-{port}.log", "w") as log:
        process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, process, f"sshd with MaxSessions {limit}")
        yield SshNode("box1", f"{box.user}@127.0.0.1:{port}", str(ssh_boxes.client_key), box.host_key)
    finally:
        process.kill()
        process.wait()


# 64: the test boxes'; None: sshd's default (10), which XT's channels and those sshd is still closing
# must fit in. (A box allowing fewer than XT's 8 refuses opens, which the node retries for ~26 s: how
# many it gets through then depends on the machine's speed, so no test holds it to a count.)
@pytest.mark.parametrize("max_sessions", [64, None])
def test_one_node_serves_several_threads_at_once(ssh_boxes, max_sessions):
    from concurrent.futures import ThreadPoolExecutor

    with box1_with_max_sessions(ssh_boxes, max_sessions) as node:
        work = f"{node.runs_root}/threads-test-{max_sessions}"
        node.run(f"mkdir -p {work}")

        def use(k):
            path = f"{work}/file{k}"
            node.append(path, f"line {k}\n".encode())
            code, out, _ = node.run(f"cat {path}")
            return node.read_from(path), node.exists(path), out, code

        transport = node._client.get_transport()
        with ThreadPoolExecutor(8) as threads:  # more than the node's slots: some threads wait for one
            results = list(threads.map(use, range(24)))
        assert results == [(f"line {k}\n".encode(), True, f"line {k}\n", 0) for k in range(24)]
        assert node._client.get_transport() is transport  # never dropped and made again
        node.run(f"rm -rf {work}")
        node.close()


class CountingCondition(threading.Condition):
    """Counts the waits that ran out, each at least as long as it was given."""

    timed_out = 0

    def wait(self, timeout=None):
        woke = super().wait(timeout)
        self.timed_out += not woke
        return woke


class CountingSemaphore(threading.BoundedSemaphore):
    timed_out = 0

    def acquire(self, blocking=True, timeout=None):
        got = super().acquire(blocking, timeout)
        self.timed_out += not got
        return got


def test_a_thread_waiting_long_for_a_slot_held_here_keeps_the_connection(ssh_boxes, monkeypatch):
    """A slot is held by this process's own calls (a long put, an unpack): waiting for it says nothing
    about the box, so no wait, however long, closes the connection the other threads use."""
    from concurrent.futures import ThreadPoolExecutor

    node = node_for(ssh_boxes)
    node._sessions, node._command_channels = CountingCondition(threading.Lock()), CountingSemaphore(COMMAND_CHANNELS)
    work = f"{node.runs_root}/slots-test"
    node.run(f"mkdir -p {work} && echo hi > {work}/f")
    transport = node._client.get_transport()
    held = [node._borrow_session() for _ in range(SFTP_SESSIONS)]  # every slot taken, as other runs' calls take them
    for _ in range(COMMAND_CHANNELS):
        node._command_channels.acquire()
    # how long a thread waited for a slot before it closed the connection, shortened (the sessions in use are
    # open already, so no request here has this bound): the waits below outlast it three times over
    monkeypatch.setattr(ssh, "COMMAND_TIMEOUT_SECONDS", 0.2)
    outlasted = 3 * int(0.2 / ssh.SLOT_CHECK_SECONDS)
    with ThreadPoolExecutor(2) as threads:
        def copied() -> str:  # an SFTP request (a read, a look and an exists go to the box agent)
            with node.local_copy(f"{work}/f") as path:
                return Path(path).read_text()

        reading = threads.submit(copied)
        running = threads.submit(node.run, f"cat {work}/f")
        deadline = time.monotonic() + 60  # a bound, not a deadline: a loaded machine takes long, a broken node forever
        while node._sessions.timed_out < outlasted or node._command_channels.timed_out < outlasted:
            assert time.monotonic() < deadline and not reading.done() and not running.done()
            time.sleep(0.05)
        with node._sessions:
            node._idle_sessions.extend(held)
            node._sessions.notify_all()
        for _ in range(COMMAND_CHANNELS):
            node._command_channels.release()
        assert reading.result() == "hi\n" and running.result()[1] == "hi\n"
    assert node._client.get_transport() is transport and transport.is_active()
    node.run(f"rm -rf {work}")
    node.close()


def test_a_slow_removal_is_waited_for_while_the_box_answers_and_a_failed_one_is_told(ssh_boxes, monkeypatch):
    node = node_for(ssh_boxes)
    work, gate = f"{node.runs_root}/removal-test/run", f"{node.runs_root}/removal-test/gate"
    node.run(f"mkdir -p {work}/code && rm -f {gate}")
    transport = node._client.get_transport()
    # the removal goes on until the test lets it end
    monkeypatch.setattr(ssh, "_removal_argv", lambda folder: [
        "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; rm -rf {folder}"])
    node.release(work)
    asked = []
    lend = node._lent_session

    def counted():
        asked.append(1)
        return lend()

    node._lent_session = counted
    monkeypatch.setattr(ssh, "COMMAND_TIMEOUT_SECONDS", 0.2)  # the removal's rounds (it once failed after one)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as threads:
        looking = threads.submit(node.exists, f"{work}/code")  # waits for the removal first
        deadline = time.monotonic() + 60
        while len(asked) < 3:  # three rounds of asking the box whether it still answers: 3 x 0.2 s at least
            assert time.monotonic() < deadline and not looking.done()
            time.sleep(0.05)
        monkeypatch.undo()
        node._lent_session = lend
        node.append(gate, b"")  # not below the run's folder: nothing to wait for
        assert looking.result() is False
    assert node._client.get_transport() is transport and transport.is_active()

    locked = f"{node.runs_root}/removal-test/locked"
    node.run(f"mkdir -p {locked}/keep && touch {locked}/keep/file && chmod 500 {locked}/keep")
    node.release(locked)
    with pytest.raises(OSError, match=rf"^box box1: removing {locked} failed: rm: cannot remove .*Permission denied$"):
        node.exists(f"{locked}/keep/file")
    assert node.exists(f"{locked}/keep/file")  # told once; the connection is as it was
    assert node._client.get_transport() is transport
    node.run(f"chmod -R 700 {node.runs_root}/removal-test && rm -rf {node.runs_root}/removal-test")
    node.close()


def test_a_share_is_placed_straight_into_its_folder_and_nothing_of_it_is_kept(ssh_boxes, tmp_path):
    import zipfile

    node = node_for(ssh_boxes)
    node.connect()
    before = (set(cached_trees(node)), node.run(f"ls -A {node.home}/incoming")[1].split())
    share = tmp_path / "share.zip"
    with zipfile.ZipFile(share, "w") as archive:
        archive.writestr("a.txt", "1")
    folder = f"{node.home}/share_cache/place-test/{uuid.uuid4().hex}"
    node.place_data(str(share), folder, source="shares/data/d/")
    assert node.read_from(f"{folder}/a.txt") == b"1"
    assert (set(cached_trees(node)), node.run(f"ls -A {node.home}/incoming")[1].split()) == before  # no code cache, no zip
    assert node._zips == {} and node._scratch_dir is None  # nor any copy kept on this machine
    node.run(f"rm -rf {node.home}/share_cache/place-test")
    node.close()


def test_a_later_runs_copy_goes_with_its_launch_and_survives_the_cache_being_cleared(ssh_boxes, tmp_path):
    node = node_for(ssh_boxes)
    zip_path, source = snapshot_zip(tmp_path, "import sys; print('ran', sys.argv[1]); sys.exit(4)\n")
    prepare_run(node, zip_path, source, "first")  # unpacked into the cache
    requests = []
    send_to_agent = node._send
    node._send = lambda request, *args: requests.append(request) or send_to_agent(request, *args)
    work = prepare_run(node, zip_path, source, "second")
    other = node_for(ssh_boxes)  # another host on the box clears the cache before the launch
    other.run(f"rm -rf {node.home}/code/*")
    other.close()
    del requests[:]
    console, exit_file = f"{work}/console.log", f"{work}/exit_code"
    node.launch(["python3", "train.py", "x"], f"{work}/code", {}, console, exit_file)
    deadline = time.monotonic() + 60  # a bound, not a deadline: a loaded machine takes long, a broken node forever
    while not node.exists(exit_file):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert node.read_from(exit_file).split(b"\n")[0] == b"4" and b"ran x" in node.read_from(console)
    assert "unpack" in [request["op"] for request in requests]  # unpacked again, from the host's copy of the zip
    node.run(f"rm -rf {node.runs_root}/cache-test")
    node.close()


def test_a_later_runs_code_is_copied_in_the_same_request_as_its_launch(ssh_boxes, tmp_path):
    node = node_for(ssh_boxes)
    zip_path, source = snapshot_zip(tmp_path, "print('one request')\n")
    prepare_run(node, zip_path, source, "first")
    commands, requests = [], []
    exec_on_box, send_to_agent = node._exec, node._send
    node._exec = lambda command, *args, **kwargs: commands.append(command) or exec_on_box(command, *args, **kwargs)
    node._send = lambda request, *args: requests.append(request) or send_to_agent(request, *args)
    work = prepare_run(node, zip_path, source, "second")
    node.launch(["python3", "train.py"], f"{work}/code", {}, f"{work}/console.log", f"{work}/exit_code")
    assert commands == [] and [request["op"] for request in requests] == ["launch"]
    assert requests[0]["copy"]["into"] == f"{work}/code" and requests[0]["copy"]["cached"].startswith(f"{node.home}/code/")
    deadline = time.monotonic() + 60
    while not node.exists(f"{work}/exit_code"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert b"one request" in node.read_from(f"{work}/console.log")
    node.run(f"rm -rf {node.runs_root}/cache-test")
    node.close()


def test_a_zip_an_interrupted_upload_left_in_incoming_goes_when_a_host_next_connects(ssh_boxes):
    node = node_for(ssh_boxes)
    node.connect()
    incoming = f"{node.home}/incoming"
    node.run(f"touch -d '2 hours ago' {incoming}/left-behind.zip && touch {incoming}/uploading.zip")
    node.close()
    node = node_for(ssh_boxes)
    node.connect()  # the next connection cleans up once
    left = node.run(f"ls -A {incoming}")[1].split()
    assert "left-behind.zip" not in left and "uploading.zip" in left  # one being written now stays
    node.run(f"rm -f {incoming}/uploading.zip")
    node.close()


def test_a_refused_channel_open_is_retried_without_an_error_in_the_log_and_named_when_it_gives_up(
        ssh_boxes, monkeypatch, caplog):
    import logging

    monkeypatch.setattr(ssh, "OPEN_ATTEMPTS", 3)
    caplog.set_level(logging.DEBUG)
    with box1_with_max_sessions(ssh_boxes, 1) as node:  # the SFTP session takes the only one
        with pytest.raises(BoxError, match="refuses new sessions.*MaxSessions"):
            node.connect()  # its set-up command is refused
        node.close()
    refused = [r for r in caplog.records if r.name.startswith("paramiko") and "open FAILED" in r.getMessage()]
    assert refused == []  # paramiko said it three times at ERROR: each one a retry, not an error


def launch_waiting_run(node, tmp_path, name):
    """A run that ends (exit 7) once the test writes its gate; returns (pid, start, exit file, gate)."""
    zip_path, source = snapshot_zip(tmp_path / name, "import os, sys, time\n"
                                    "while not os.path.exists(sys.argv[1]): time.sleep(0.02)\nsys.exit(7)\n")
    work = prepare_run(node, zip_path, source, name)
    gate, exit_file = f"{work}/gate", f"{work}/exit_code"
    pid, start = node.launch(["python3", "train.py", gate], f"{work}/code", {}, f"{work}/console.log", exit_file)
    return pid, start, exit_file, gate


def test_the_box_agent_tells_a_runs_end_and_looks_before_it_ask_the_box_nothing(ssh_boxes, tmp_path):
    node = node_for(ssh_boxes)
    (tmp_path / "a").mkdir()
    pid, start, exit_file, gate = launch_waiting_run(node, tmp_path, "a")
    woken = threading.Event()
    node.when_ended(pid, start, woken.set)
    asked = []
    lend = node._lent_session
    node._lent_session = lambda: asked.append(1) or lend()
    assert [node.ended(pid, start, exit_file) for _ in range(50)] == [False] * 50
    assert asked == [] and not woken.is_set()  # no SFTP request: the agent tells
    node._lent_session = lend
    node.append(gate, b"")
    assert woken.wait(60)  # a bound, not a deadline
    assert node.ended(pid, start, exit_file) and node.read_from(exit_file).split(b"\n")[0] == b"7"
    woken_late = threading.Event()
    node.when_ended(pid, start, woken_late.set)  # already ended and looked at: nothing more is told
    assert not woken_late.wait(0.2)
    node.run(f"rm -rf {node.runs_root}/cache-test")
    node.close()


def test_an_agent_gone_from_the_box_drops_the_connection_and_its_runs_are_still_seen_ending(ssh_boxes, tmp_path):
    node = node_for(ssh_boxes)
    (tmp_path / "a").mkdir()
    pid, start, exit_file, gate = launch_waiting_run(node, tmp_path, "a")
    transport = node._client.get_transport()
    woken = threading.Event()
    node.when_ended(pid, start, woken.set)
    # the agent alone: its reapers are forks of it (same command line, their own name)
    killed = ssh_boxes.boxes["box1"].as_user(
        "for p in $(pgrep -u \"$(id -u)\" -f '^python3 -S -I .*node_kit/box_agent.py'); do [ \"$(cat /proc/$p/comm)\" = xt-reaper ] || kill -KILL $p; done")
    assert killed.returncode == 0, killed.stderr
    assert woken.wait(60)  # the run is looked at again, the other way
    with pytest.raises(NodeUnreachable, match="^box box1 "):
        node.kill_group(pid, 15)  # a request to the gone agent: the connection is dropped, not trusted
    assert not node.ended(pid, start, exit_file)  # connected again: the new agent did not start it
    assert node._client.get_transport() is not transport
    node.append(gate, b"")
    deadline = time.monotonic() + 60
    while not node.ended(pid, start, exit_file):  # the exit file (or /proc), as for a run of an earlier host
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert node.read_from(exit_file).split(b"\n")[0] == b"7"
    node.run(f"rm -rf {node.runs_root}/cache-test")
    node.close()


def test_a_zip_sent_from_here_is_known_by_its_name_and_the_box_checks_it_is_that_snapshot(ssh_boxes, tmp_path):
    """The host does not hash a snapshot's zip for each run (a big one costs a second); the box
    checks the sha256 it is named by when it unpacks it, as for a zip it fetches itself."""
    from xt_submit.node_kit.code_archive import ArchiveError

    node = node_for(ssh_boxes)
    zip_path, _ = snapshot_zip(tmp_path, "tampered\n")
    work = f"{node.runs_root}/cache-test/named-here"
    with pytest.raises(ArchiveError, match="^box box1: code/1{64}.zip: the code zip's sha256 is [0-9a-f]{64}, not the 1{64}"):
        node.prepare(str(zip_path), None, f"{work}/code", f"{work}/code/output", [], source=f"code/{'1' * 64}.zip")
    assert not node.exists(f"{work}/code") and not [name for name in cached_trees(node) if name.startswith("1" * 8)]
    node.close()


def test_a_box_without_this_versions_modules_gets_them_as_it_connects_and_its_agent_runs_from_them(ssh_boxes):
    """XT's run-side modules live in a folder of their version on the box: a box without them (a new
    version, or a box wiped) gets them as a host connects, and its agent (which unpacks snapshots,
    code_archive among those modules) runs from them."""
    node = node_for(ssh_boxes)
    node.connect()
    assert node.home == node._sftp.normalize(".") + "/.xt"
    lib = node._lib
    assert lib == f"{node.home}/lib/{ssh.shipped_digest()}"
    node.run(f"rm -rf {shlex.quote(lib)}")
    node.close()
    fresh = node_for(ssh_boxes)
    fresh.connect()
    assert fresh.exists(f"{lib}/.complete") and fresh.exists(f"{lib}/xt_submit/node_kit/box_agent.py")
    agent_commands = fresh.run("ps -o args= -u $(id -u)")[1]
    assert f"{lib}/xt_submit/node_kit/box_agent.py" in agent_commands
    fresh.close()


def test_a_runs_end_on_a_box_is_read_in_one_request_to_its_agent(ssh_boxes, tmp_path):
    """Its exit file, console and run log tails, outputs and checkpoint: one look (five round trips
    before), then the removal, which is not waited for."""
    from xt_submit import bootstrap
    from xt_submit.domain import layout
    from xt_submit.domain.messages import RunTask
    from xt_submit.runtime.wrapper import RunWrapper

    node = node_for(ssh_boxes)
    zip_path, source = snapshot_zip(tmp_path, "import os\nprint('said', flush=True)\n"
                                    "open('output/m.txt', 'w').write('weights')\n")
    work = prepare_run(node, zip_path, source, "one-look")
    parts = bootstrap.embedded(tmp_path / "home")
    task = RunTask(workspace="ws1", experiment="e", job="job1", run="run1.1", command="python3 train.py",
                   code_key=source)
    wrapper = RunWrapper(task, tmp_path / "node_dir", parts.ports.storage, parts.ports.publisher, node=node,
                         node_id="box1", work_dir=work)
    wrapper.node_dir.mkdir()
    wrapper._launch()
    ended = threading.Event()
    node.when_ended(wrapper.state["pid"], wrapper.state["pid_start"], ended.set)  # as the pool executor waits
    assert ended.wait(60)  # a bound, not a deadline
    requests = []
    send_to_agent = node._send
    node._send = lambda request, *args: requests.append(request["op"]) or send_to_agent(request, *args)
    assert wrapper.supervise()
    assert requests == ["look", "remove"]  # (the output file itself comes over SFTP)
    storage = parts.ports.storage
    assert storage.read(layout.console_key("ws1", "run1.1")) == b"said\n"
    assert storage.read(layout.output_prefix("ws1", "run1.1") + "m.txt") == b"weights"
    node._send = send_to_agent
    node.run(f"rm -rf {node.runs_root}/cache-test")
    node.close()
