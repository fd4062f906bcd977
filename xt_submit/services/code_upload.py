"""Getting a job's code into storage once: snapshot, upload, and skip both for an unchanged tree.

A fingerprint of the tree (each shipped file's path, size and mtime) maps to the sha256 of the
snapshot it produced; when the fingerprint is known and storage holds that snapshot, nothing
is zipped or uploaded again. "Holds" means the stored bytes hash to the name: a torn upload or a
damaged object is uploaded again, never reused.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

from xt_submit.node_kit import code_archive
from xt_submit.domain import layout
from xt_submit.ports import NotFound, Storage

CACHE_FILE = "snapshot_cache.json"
CACHE_ENTRIES = 64


def tree_fingerprint(code_dirs: Sequence[str], base: str, omit: Sequence[str], exclude: Sequence[Path] = ()) -> str:
    digest = hashlib.sha256(json.dumps([list(code_dirs), list(omit)]).encode())
    for code_dir in code_dirs:
        root = (Path(base) / code_dir).resolve()
        if not root.is_dir():
            raise code_archive.ArchiveError(f"code.code-dirs: {code_dir}: not a directory")
        for path, rel in code_archive.iter_code_files(root, omit, exclude):
            stat = path.stat()
            digest.update(f"{code_dir}\0{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _stored_sha256(storage: Storage, key: str) -> Optional[str]:
    """The sha256 of what storage holds at `key`; None when it holds nothing there."""
    try:
        return hashlib.sha256(storage.read(key)).hexdigest()
    except NotFound:
        return None


def upload_code(storage: Storage, cache_dir: Path, code_dirs: Sequence[str], base: str, omit: Sequence[str],
                max_bytes: int) -> Tuple[str, str]:
    """(storage key, sha256) of the code snapshot, uploading only what storage does not hold."""
    cache_path = Path(cache_dir) / CACHE_FILE
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    exclude = [Path(cache_dir)]  # XT's own state never ships, even when XT_HOME is inside the code dir
    fingerprint = tree_fingerprint(code_dirs, base, omit, exclude)
    known = cache.get(fingerprint)
    if known and _stored_sha256(storage, layout.code_key(known)) == known:
        return layout.code_key(known), known
    snapshot = code_archive.snapshot_code(code_dirs, base, omit, max_bytes=max_bytes, exclude=exclude)
    key = layout.code_key(snapshot.sha256)
    stored = _stored_sha256(storage, key)
    if stored != snapshot.sha256:  # content-addressed: the same tree from elsewhere is stored once
        storage.write(key, snapshot.data, overwrite=stored is not None)  # and a damaged copy replaced
    cache[fingerprint] = snapshot.sha256
    cache = dict(list(cache.items())[-CACHE_ENTRIES:])
    tmp = cache_path.with_name(f".{CACHE_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(cache))
    os.replace(tmp, cache_path)
    return key, snapshot.sha256
