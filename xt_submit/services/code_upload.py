"""Getting a job's code into storage once: snapshot, upload, and skip both for an unchanged tree.

A fingerprint of the tree (each shipped file's path, size and mtime) maps to the sha256 of the
snapshot it produced; when the fingerprint is known and storage holds that snapshot, nothing
is zipped or uploaded again. "Holds" means the stored bytes hash to the name: a torn upload or a
damaged object is uploaded again, never reused. The hash is taken once: the cache also keeps the
object's storage signature (Storage.signature, which every write changes) from when its bytes were
known good, and an object with that signature still is (a resubmit does not read the whole zip back).
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
    digest = hashlib.sha256()
    try:
        for chunk in storage.read_chunks(key):
            digest.update(chunk)
    except NotFound:
        return None
    return digest.hexdigest()


def _holds(storage: Storage, sha256: str, known_signature: Optional[str]) -> Optional[str]:
    """Whether storage holds the snapshot `sha256` whole: its signature, when the object is good (the one
    known good, with no read; else its bytes hashed, the signature taken first so that a write meanwhile
    is not vouched for), or None when it does not."""
    key = layout.code_key(sha256)
    signature = storage.signature(key)
    if signature is not None and signature == known_signature:
        return signature
    if _stored_sha256(storage, key) != sha256:
        return None
    return signature or ""


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
    if isinstance(known, str):  # an entry written before signatures were kept
        known = {"sha256": known, "signature": None}
    found_bad = None
    if known:
        signature = _holds(storage, known["sha256"], known.get("signature"))
        if signature is not None:
            if signature != known.get("signature"):
                _save(cache_path, cache, fingerprint, known["sha256"], signature)
            return layout.code_key(known["sha256"]), known["sha256"]
        found_bad = known["sha256"]
    snapshot = code_archive.snapshot_code(code_dirs, base, omit, max_bytes=max_bytes, exclude=exclude)
    key = layout.code_key(snapshot.sha256)
    signature = None if snapshot.sha256 == found_bad else _holds(storage, snapshot.sha256, None)
    if signature is None:  # content-addressed: the same tree from elsewhere is stored once
        storage.write(key, snapshot.data, overwrite=True)  # and a damaged copy replaced
        signature = storage.signature(key) or ""
    _save(cache_path, cache, fingerprint, snapshot.sha256, signature)
    return key, snapshot.sha256


def _save(cache_path: Path, cache: dict, fingerprint: str, sha256: str, signature: str) -> None:
    cache.pop(fingerprint, None)  # the newest entry last: the oldest are the ones dropped
    cache[fingerprint] = {"sha256": sha256, "signature": signature}
    cache = dict(list(cache.items())[-CACHE_ENTRIES:])
    tmp = cache_path.with_name(f".{CACHE_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(cache))
    os.replace(tmp, cache_path)
