"""A box's connection (host keys, keys, no prompts) against real sshd, and setups as shell text."""
import shlex
import subprocess

import pytest

from xt_submit.adapters.nodes.ssh import BoxAddress, BoxError, SshNode
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
    assert node.run("whoami")[1].strip() == "xtbox1"
    node.close()
    other = ssh_boxes.boxes["box2"].host_key  # a real key, but not this box's
    with pytest.raises(BoxError, match=r"^box box1 \(xtbox1@127\.0\.0\.1:\d+\): its host key does not match"):
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
