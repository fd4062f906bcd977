"""Data and model shares below the CLI: the content key of a share's listing, the node cache (once per
content, whole or not at all), where the run wrapper points XT_DATA_DIR / XT_MODEL_DIR on each kind of
node, and the config's data: and model: sections."""
import hashlib
import os
import re
import uuid

import pytest

from xt_submit.adapters.nodes.local import LocalNode
from xt_submit.adapters.storage.directory import DirectoryStorage
from xt_submit.config import ConfigError, load_config
from xt_submit.domain import layout
from xt_submit.domain.messages import RunTask, ShareSpec
from xt_submit.runtime import shares

PREFIX = layout.share_prefix("ws1", "data", "mnist")


class CountingStorage(DirectoryStorage):
    """The directory storage, counting downloads (and failing the n-th, to stand for a crash)."""

    def __init__(self, root, fail_on=None):
        super().__init__(root)
        self.downloads = 0
        self.fail_on = fail_on

    def download_file(self, key, path):
        self.downloads += 1
        if self.downloads == self.fail_on:
            raise OSError("the connection dropped")
        super().download_file(key, path)


class LinklessStorage(DirectoryStorage):
    """A storage that tells nothing about its blobs (no local path, no links)."""

    def local_path(self, key):
        return None


def filled(tmp_path, cls=CountingStorage, **kwargs):
    storage = cls(tmp_path / "storage", **kwargs)
    storage.write(PREFIX + "a.txt", b"1")
    storage.write(PREFIX + "sub/b.txt", b"2")
    return storage


def test_the_content_key_changes_with_any_name_or_signature_and_not_with_order():
    entries = [("a.txt", "size=1;mtime=5"), ("sub/b.txt", "size=1;mtime=6")]
    key = shares.content_key(entries)
    assert shares.content_key(list(reversed(entries))) == key and len(key) == shares.KEY_CHARS
    assert shares.content_key([entries[0], ("sub/b.txt", "size=2;mtime=6")]) != key  # changed
    assert shares.content_key([entries[0], ("sub/c.txt", "size=1;mtime=6")]) != key  # renamed
    assert shares.content_key(entries[:1]) != key  # removed
    assert shares.content_key([*entries, ("c", "x")]) != key  # added
    # the separators keep names and signatures apart: ("ab", "c") is not ("a", "bc")
    assert shares.content_key([("ab", "c")]) != shares.content_key([("a", "bc")])


def test_signatures_follow_the_content_on_each_kind_of_storage(tmp_path):
    storage = filled(tmp_path)
    before = shares.listing(storage, PREFIX)
    assert [name for name, _ in before] == ["a.txt", "sub/b.txt"]
    assert shares.listing(storage, PREFIX) == before  # nothing read, nothing changed
    source = tmp_path / "b.txt"
    source.write_bytes(b"20")
    storage.upload_file(PREFIX + "sub/b.txt", str(source))
    after = shares.listing(storage, PREFIX)
    assert after[0] == before[0] and after[1] != before[1]

    linkless = filled(tmp_path / "linkless", cls=LinklessStorage)
    assert shares.listing(linkless, PREFIX)[0][1].startswith("sha256=")  # read, as nothing else says


def test_a_blob_signature_is_its_etag_and_md5_from_the_listing(azurite_connection_string, tmp_path, monkeypatch):
    from xt_submit.adapters.storage.blob import BlobStorage

    storage = BlobStorage(f"xt-shares-{uuid.uuid4().hex[:8]}", connection_string=azurite_connection_string)
    storage.ensure_container()
    storage.write(PREFIX + "a.txt", b"1")
    storage.write(PREFIX + "b.txt", b"22")
    asked = []
    monkeypatch.setattr(storage, "read_url", lambda *a, **k: asked.append(a))  # no request per file
    (name, first), (_, second) = shares.listing(storage, PREFIX)
    assert asked == [] and name == "a.txt" and first.startswith("size=1;etag=") and second.startswith("size=2;")
    assert "md5=" + hashlib.md5(b"1").hexdigest() in first  # what the service keeps of the content
    storage.delete(PREFIX + "b.txt")
    monkeypatch.undo()
    assert shares.listing(storage, PREFIX) == [(name, first)]
    storage.write(PREFIX + "a.txt", b"2")  # the same size, new content
    assert shares.listing(storage, PREFIX) != [(name, first)]
    fetched = shares.fetch(storage, PREFIX, str(tmp_path / "cache"))
    assert fetched.downloaded and open(os.path.join(fetched.path, "a.txt")).read() == "2"
    assert not shares.fetch(storage, PREFIX, str(tmp_path / "cache")).downloaded


def test_the_cache_downloads_once_per_content(tmp_path):
    storage = filled(tmp_path)
    cache = str(tmp_path / "cache")
    first = shares.fetch(storage, PREFIX, cache)
    assert first.downloaded and first.files == 2 and storage.downloads == 2
    assert open(os.path.join(first.path, "sub", "b.txt")).read() == "2"
    again = shares.fetch(storage, PREFIX, cache)
    assert not again.downloaded and again.path == first.path and storage.downloads == 2
    storage.write(PREFIX + "sub/b.txt", b"22")
    changed = shares.fetch(storage, PREFIX, cache)
    assert changed.downloaded and changed.key != first.key and storage.downloads == 4
    assert open(os.path.join(changed.path, "sub", "b.txt")).read() == "22"
    assert open(os.path.join(first.path, "sub", "b.txt")).read() == "2"  # the old entry is never changed


def test_runs_starting_together_on_a_node_download_once(tmp_path):
    import threading
    import time

    class SlowStorage(CountingStorage):
        def download_file(self, key, path):
            time.sleep(0.2)  # long enough for the other run to arrive while this one downloads
            super().download_file(key, path)

    storage = filled(tmp_path, cls=SlowStorage)
    results = []
    threads = [threading.Thread(target=lambda: results.append(shares.fetch(storage, PREFIX, str(tmp_path / "c"))))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert storage.downloads == 2 and sorted(r.downloaded for r in results) == [False, False, True]
    assert len({r.path for r in results}) == 1


def test_a_crashed_download_leaves_nothing_that_is_reused(tmp_path):
    storage = filled(tmp_path, fail_on=2)
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="connection dropped"):
        shares.fetch(storage, PREFIX, str(cache))
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []  # no entry, no temp folder
    # a process killed mid-download leaves its temp folder: the next fetch of that content clears it
    key = shares.content_key(shares.listing(storage, PREFIX))
    (cache / f"{shares.STAGING_PREFIX}{key}-killed").mkdir()
    (cache / f"{shares.STAGING_PREFIX}{key}-killed" / "a.txt").write_text("half")
    fetched = shares.fetch(storage, PREFIX, str(cache))
    assert fetched.downloaded and open(os.path.join(fetched.path, "a.txt")).read() == "1"
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [key]


def test_an_empty_share_folder_is_one_line(tmp_path):
    storage = filled(tmp_path)
    with pytest.raises(shares.ShareError, match="nothing in storage there"):
        shares.fetch(storage, layout.share_prefix("ws1", "data", "other"), str(tmp_path / "cache"))


def task(**shares_given):
    return RunTask(workspace="ws1", experiment="e", job="job1", run="run1.1", command="python x.py",
                   code_key="code/x.zip", **shares_given)


def placed(tmp_path, storage, run_task, *, remote=False):
    """XT_DATA_DIR / XT_MODEL_DIR as the run wrapper gets them, on this machine or (remote) on a box
    reached only through the Node port (a LocalNode here: the port's operations are the same)."""
    supervisor_dir = tmp_path / f"supervisor-{uuid.uuid4().hex[:6]}"
    supervisor_dir.mkdir()
    notes = []
    placement = shares.SharePlacement(storage, LocalNode(str(tmp_path / "node_home")), "node-1", supervisor_dir,
                                      on_this_machine=not remote, note=notes.append)
    return placement.environment(run_task)


def test_a_box_gets_its_copy_through_the_node_port_once_per_content(tmp_path):
    """A pool's box is reached only through the Node port (no rename there): the copy is unpacked into
    a folder of its own and `ready` names the complete one every run then uses."""
    storage = filled(tmp_path)
    spec = ShareSpec(path="mnist", action="download")
    first = placed(tmp_path, storage, task(data=spec), remote=True)["XT_DATA_DIR"]
    assert open(os.path.join(first, "sub", "b.txt")).read() == "2" and storage.downloads == 2
    second = placed(tmp_path, storage, task(data=spec), remote=True)["XT_DATA_DIR"]
    assert second == first and storage.downloads == 2
    key_dir = os.path.dirname(first)
    assert open(os.path.join(key_dir, "ready")).read().count("\n") == 1
    storage.write(PREFIX + "a.txt", b"5")
    third = placed(tmp_path, storage, task(data=spec), remote=True)["XT_DATA_DIR"]
    assert os.path.dirname(third) != key_dir and open(os.path.join(third, "a.txt")).read() == "5"


def test_a_box_s_copy_is_a_data_folder_without_the_code_limits_and_never_a_code_snapshot(tmp_path, monkeypatch):
    """Placed with Node.place_data: a share far past the code's limits (here 1 entry, 1 byte) goes
    through, and the code path (prepare: limits, code cache, a kept zip) is never taken."""
    from xt_submit.node_kit import code_archive

    monkeypatch.setattr(code_archive, "MAX_ENTRIES", 1)
    monkeypatch.setattr(code_archive, "MAX_UNPACKED_BYTES", 1)
    monkeypatch.setattr(LocalNode, "prepare", lambda *args, **kwargs: pytest.fail("a share went the code's way"))
    storage = filled(tmp_path)
    folder = placed(tmp_path, storage, task(data=ShareSpec(path="mnist", action="download")), remote=True)["XT_DATA_DIR"]
    assert open(os.path.join(folder, "a.txt")).read() == "1" and open(os.path.join(folder, "sub", "b.txt")).read() == "2"
    assert sorted(os.listdir(os.path.dirname(folder))) == sorted([os.path.basename(folder), "ready"])  # no zip, no marker


class ChangingStorage(CountingStorage):
    """Storage a writer changes while it is downloaded: a.txt is rewritten during the first `changes` downloads of it."""

    def __init__(self, root, changes):
        super().__init__(root)
        self.changes = changes

    def download_file(self, key, path):
        super().download_file(key, path)
        if key.endswith("a.txt") and self.changes:
            self.changes -= 1
            self.write(key, f"changed {self.changes}".encode())


@pytest.mark.parametrize("remote", [False, True])
def test_a_file_changed_during_the_download_is_never_kept_under_the_old_content_s_key(tmp_path, remote):
    storage = filled(tmp_path, cls=ChangingStorage, changes=1)
    spec = ShareSpec(path="mnist", action="download")
    folder = placed(tmp_path, storage, task(data=spec), remote=remote)["XT_DATA_DIR"]
    assert open(os.path.join(folder, "a.txt")).read() == "changed 0"  # downloaded again, once
    key = shares.content_key(shares.listing(storage, PREFIX))
    assert key in folder.split(os.sep)  # under the key of what it holds
    storage.changes = 2  # a writer that keeps changing it: refused, one line
    storage.write(PREFIX + "sub/b.txt", b"3")
    with pytest.raises(shares.ShareError, match=rf"^{re.escape(PREFIX)}: its files changed in storage while being "
                                                r"downloaded, twice; try again once nothing writes to it$"):
        placed(tmp_path, storage, task(data=spec), remote=remote)


def test_box_locks_last_only_while_in_use():
    lock = shares._box_lock("box\0key")
    assert shares._box_lock("box\0key") is lock  # a thread that arrives meanwhile waits on the same lock
    for k in range(1000):
        with shares._box_lock(f"box\0content-{k}"):
            pass
    assert len(shares._BOX_LOCKS) <= 2  # a long-lived host keeps none per content it once placed


def test_a_mount_is_compute_s_mount_else_a_storage_folder_on_this_machine_else_refused(tmp_path, monkeypatch):
    storage = filled(tmp_path)
    mounted = task(data=ShareSpec(path="mnist", action="mount"), model=None)
    here = placed(tmp_path, storage, mounted)
    assert here == {"XT_DATA_DIR": storage.local_path(PREFIX.rstrip("/"))}
    with pytest.raises(shares.ShareError, match="cannot mount this storage; use data-action download"):
        placed(tmp_path, storage, mounted, remote=True)

    mounts = tmp_path / "mounts"
    monkeypatch.setenv("AZ_BATCH_NODE_MOUNTS_DIR", str(mounts))
    on_batch = task(data=ShareSpec(path="mnist", action="mount"), storage_mount="$AZ_BATCH_NODE_MOUNTS_DIR/xt-storage")
    with pytest.raises(shares.ShareError, match="storage mount .* is not on node"):
        placed(tmp_path, storage, on_batch)
    (mounts / "xt-storage" / PREFIX).mkdir(parents=True)
    env = placed(tmp_path, storage, on_batch)
    assert env == {"XT_DATA_DIR": str(mounts / "xt-storage" / PREFIX.rstrip("/"))}


def test_no_share_no_variable(tmp_path):
    assert placed(tmp_path, filled(tmp_path), task()) == {}


@pytest.mark.parametrize("overrides, expected", [
    ({"data.data-action": "copy"}, "command line: data.data-action: expected one of none, download, mount, got 'copy'"),
    ({"model.model-action": "Mount"}, "model.model-action: expected one of none, download, mount, got 'Mount'"),
    ({"data.data-action": "download"}, "data.data-share-path: required with data-action download"),
    ({"data.data-action": "mount", "data.data-share-path": "a/../b"}, "data.data-share-path: expected a folder"),
    ({"data.data-options": ["fast"]}, "data.data-options: no options are defined"),
    ({"data.data-writable": "yes"}, "data.data-writable: expected bool"),
    ({"model.model-action": "download", "model.model-share-path": "m", "model.model-writable": True},
     "model.model-writable: true is not supported with model-action download"),
])
def test_bad_share_settings_are_one_line_naming_the_key(overrides, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=overrides)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_xt_s_data_and_model_sections_are_honoured_and_its_other_keys_named(tmp_path):
    (tmp_path / "xt_config.yaml").write_text(
        "data: {data-local: ./d, data-share-path: mnist, data-action: download, data-writable: false}\n"
        "model: {model-share-path: ckpt, model-action: mount, model-writable: true}\n")
    warnings = []
    cfg = load_config(cwd=tmp_path, on_warning=warnings.append)
    assert (cfg.data.data_share_path, cfg.data.data_action) == ("mnist", "download")
    assert (cfg.model.model_action, cfg.model.model_writable) == ("mount", True)
    assert warnings == ["xt_config.yaml: ignored XT settings this pipeline does not use: data.data-local"]


@pytest.mark.parametrize("spec, expected", [
    ({"path": "mnist", "action": "copy"}, "data.action: expected one of download, mount, got 'copy'"),
    ({"path": "../secrets", "action": "download"}, "data.path: expected a folder of the share"),
    ({"path": "", "action": "mount"}, "data.path: expected a folder of the share"),
    ({"path": "mnist", "action": "none"}, "data.action: expected one of download, mount, got 'none'"),
    ({"path": "mnist", "action": "download", "writable": True},
     "data.writable: true is not supported with action download (the copy is shared by the node's runs"),
])
def test_a_manifest_s_share_is_checked_as_a_dropped_zip_s_would_be(spec, expected):
    """A manifest dropped into uploads/ never passed the config: dispatch checks its shares itself."""
    import msgspec

    from support.pipeline import make_manifest
    from xt_submit.domain.manifest import check_manifest
    from xt_submit.domain.messages import ContractError, decode_manifest

    body = msgspec.json.encode({**msgspec.to_builtins(make_manifest("code/x.zip", "x")), "data": spec})
    with pytest.raises(ContractError) as caught:
        check_manifest(decode_manifest(body))
    assert f"xt_manifest.json: {expected}" in str(caught.value)
    check_manifest(decode_manifest(msgspec.json.encode(
        {**msgspec.to_builtins(make_manifest("code/x.zip", "x")), "model": {"path": "ckpt/v2", "action": "mount"}})))


BATCH_CONFIG = (
    "external-services:\n"
    "  team-batch: {type: batch}\n"
    "compute-targets:\n"
    "  gpu: {service: batch, account: team-batch, vm-size: Standard_NC6}\n"
    "  gpu-mounts: {service: batch, account: team-batch, vm-size: Standard_NC6, mount-shares: true}\n"
    "  lab: {service: pool}\n")


@pytest.mark.parametrize("target, spec, expected", [
    ("gpu", {"path": "mnist", "action": "mount"},
     "data-action mount: target gpu (batch) mounts no storage; expected compute-targets.gpu.mount-shares: true, "
     "or data-action download"),
    ("gpu-mounts", {"path": "mnist", "action": "mount", "writable": True},
     "data.data-writable: target gpu-mounts (batch) mounts storage read-only; expected false"),
    ("lab", {"path": "mnist", "action": "mount"},
     "data-action mount: target lab (pool) cannot mount the data share (its boxes cannot mount this storage); "
     "use data-action download"),
    ("gpu-mounts", {"path": "mnist", "action": "mount"}, None),
    ("gpu", {"path": "mnist", "action": "download"}, None),
    ("local", {"path": "mnist", "action": "mount", "writable": True}, None),  # the embedded storage's folder
])
def test_the_target_kind_says_whether_it_mounts_a_share_when_the_job_is_planned(tmp_path, target, spec, expected):
    from support.pipeline import make_manifest
    from xt_submit.services import submit

    (tmp_path / "xt_config.yaml").write_text(BATCH_CONFIG)
    cfg = load_config(cwd=tmp_path)
    manifest = make_manifest("code/x.zip", "x", hp_space={"lr": [1]}, target=target, data=ShareSpec(**spec))
    if expected is None:
        assert [run["hparams"] for run in submit.plan(manifest, cfg)] == [{"lr": 1}]
        return
    with pytest.raises(submit.SubmitError) as caught:
        submit.plan(manifest, cfg)
    assert str(caught.value) == expected


def test_the_batch_mount_is_off_unless_the_target_asks(tmp_path):
    (tmp_path / "xt_config.yaml").write_text(BATCH_CONFIG)
    cfg = load_config(cwd=tmp_path)
    assert not cfg.compute_targets["gpu"].mount_shares and cfg.compute_targets["gpu-mounts"].mount_shares


def test_a_mount_from_a_local_run_on_a_team_s_storage_is_refused(tmp_path):
    from support.pipeline import make_manifest
    from xt_submit.services import submit

    (tmp_path / "xt_config.yaml").write_text(
        "external-services: {team-store: {type: blob, account-url: 'https://t.blob.core.windows.net'}}\n"
        "xt-services: {storage: team-store}\n")
    cfg = load_config(cwd=tmp_path)
    manifest = make_manifest("code/x.zip", "x", hp_space={"lr": [1]}, target="local",
                             model=ShareSpec(path="ckpt", action="mount"))
    with pytest.raises(submit.SubmitError, match=r"^model-action mount: target local \(local\) cannot mount the "
                                                 r"model share \(storage team-store is not a folder on this machine\)"):
        submit.plan(manifest, cfg)
