"""Code snapshots (what ships, reproducibly, once) and safe unpacking on the node."""
import hashlib
import io
import os
import stat
import zipfile

import pytest

from xt_submit.node_kit import code_archive
from xt_submit.adapters.storage.directory import DirectoryStorage
from xt_submit.services.code_upload import upload_code


def make_tree(root):
    files = {"train.py": "print(1)\n", "pkg/model.py": "x = 1\n", "data/big.bin": "b" * 10, "notes.log": "log",
             ".git/HEAD": "ref", "pkg/__pycache__/m.pyc": "c", "xt_config.yaml": "secret: hunter2",
             ".gitignore": "*.log\ndata/\n", "pkg/.gitignore": "local_*.py\n", "pkg/local_cfg.py": "k=1"}
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    secret = root.parent / "outside_secret.txt"
    secret.write_text("TOP-SECRET")
    os.symlink(secret, root / "link.txt")
    return root


def names(data):
    return sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())


def test_snapshot_ships_code_only_and_is_reproducible(tmp_path, reliability):
    tree = make_tree(tmp_path / "proj")
    first = code_archive.snapshot_code(["."], str(tree), omit=["pkg/model.py"])
    assert names(first.data) == [".gitignore", "pkg/.gitignore", "train.py"]
    assert b"TOP-SECRET" not in first.data and b"hunter2" not in first.data
    reliability.add("symlinked secret and xt_config.yaml kept out of the code snapshot", hits=0)
    os.utime(tree / "train.py", (1, 1))  # timestamps do not change the content hash
    assert code_archive.snapshot_code(["."], str(tree), omit=["pkg/model.py"]).sha256 == first.sha256
    (tree / "train.py").write_text("print(2)\n")
    assert code_archive.snapshot_code(["."], str(tree), omit=["pkg/model.py"]).sha256 != first.sha256


def test_snapshot_size_limit_names_the_option(tmp_path):
    tree = make_tree(tmp_path / "proj")
    with pytest.raises(code_archive.ArchiveError, match="code.max-size-mb"):
        code_archive.snapshot_code(["."], str(tree), max_bytes=5)
    with pytest.raises(code_archive.ArchiveError, match="code.code-dirs: nope: not a directory"):
        code_archive.snapshot_code(["nope"], str(tree))


def test_xt_home_inside_the_code_dir_never_ships(tmp_path):
    tree = make_tree(tmp_path / "proj")
    home = tree / ".xt_home"
    storage = DirectoryStorage(home / "storage")
    (home / "stats.db").write_text("state")
    key, _ = upload_code(storage, home, ["."], str(tree), [], 10**9)
    assert not [n for n in names(storage.read(key)) if n.startswith(".xt_home")]


def test_unchanged_tree_is_not_zipped_or_uploaded_twice(tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "proj")
    storage = DirectoryStorage(tmp_path / "storage")
    key, sha = upload_code(storage, tmp_path, ["."], str(tree), [], 10**9)
    assert storage.exists(key)
    monkeypatch.setattr(code_archive, "snapshot_code", lambda *a, **k: pytest.fail("re-zipped an unchanged tree"))
    assert upload_code(storage, tmp_path, ["."], str(tree), [], 10**9) == (key, sha)
    monkeypatch.undo()
    (tree / "train.py").write_text("print(3)\n")
    changed_key, _ = upload_code(storage, tmp_path, ["."], str(tree), [], 10**9)
    assert changed_key != key and storage.exists(changed_key)


def test_an_unchanged_resubmit_does_not_read_the_stored_snapshot_back(tmp_path):
    """The stored zip's bytes were hashed when it was uploaded; while its signature stands, a resubmit
    trusts them (reading a 200 MB zip back was most of an unchanged resubmit's time)."""
    class CountingReads(DirectoryStorage):
        reads = 0

        def read_chunks(self, key):
            CountingReads.reads += 1
            return super().read_chunks(key)

        def read(self, key):
            CountingReads.reads += 1
            return super().read(key)

    tree = make_tree(tmp_path / "proj")
    storage = CountingReads(tmp_path / "storage")
    key, sha = upload_code(storage, tmp_path, ["."], str(tree), [], 10**9)
    before = CountingReads.reads
    assert upload_code(storage, tmp_path, ["."], str(tree), [], 10**9) == (key, sha)
    assert upload_code(storage, tmp_path, ["."], str(tree), [], 10**9) == (key, sha)
    assert CountingReads.reads == before
    storage.append(key, b"damage")  # written in place: the signature moves, the bytes are checked again
    assert upload_code(storage, tmp_path, ["."], str(tree), [], 10**9) == (key, sha)
    assert CountingReads.reads == before + 1
    assert hashlib.sha256(storage.read(key)).hexdigest() == sha


def zip_with(entries):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return buffer.getvalue()


def symlink_entry(name, target):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target


@pytest.mark.parametrize("entries,message", [
    ([("../escape.py", "x")], "path escapes"),
    ([("/etc/passwd", "x")], "path escapes"),
    ([("a/../../b", "x")], "path escapes"),
    ([symlink_entry("link", "/etc/passwd")], "symbolic links are not allowed"),
    ([("bomb.bin", "\0" * (50 * 1024 * 1024))], "compression ratio"),
])
def test_safe_extract_refuses_dangerous_zips(tmp_path, entries, message, reliability):
    path = tmp_path / "code.zip"
    path.write_bytes(zip_with(entries))
    with pytest.raises(code_archive.ArchiveError, match=message):
        code_archive.safe_extract(str(path), str(tmp_path / "out"))
    assert not any((tmp_path / "out").rglob("*"))  # nothing written
    assert not (tmp_path / "escape.py").exists()
    reliability.add("bad input: code zips (corpus + generated)", inputs_tried=1)


def test_safe_extract_of_a_non_zip(tmp_path):
    path = tmp_path / "code.zip"
    path.write_bytes(b"hello")
    with pytest.raises(code_archive.ArchiveError, match="not a zip file"):
        code_archive.safe_extract(str(path), str(tmp_path / "out"))


def test_safe_extract_round_trip_keeps_executable_bit(tmp_path):
    tree = tmp_path / "proj"
    tree.mkdir()
    (tree / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (tree / "run.sh").chmod(0o755)
    snap = code_archive.snapshot_code(["."], str(tree))
    (tmp_path / "c.zip").write_bytes(snap.data)
    assert code_archive.safe_extract(str(tmp_path / "c.zip"), str(tmp_path / "out")) == 1
    assert os.access(tmp_path / "out" / "run.sh", os.X_OK)
