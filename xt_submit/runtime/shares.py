"""A run's data and model shares on its node: where XT_DATA_DIR / XT_MODEL_DIR point (a mount, or a
copy in the node's cache), the content key of a share folder's listing, and the cache itself.

The content key hashes the folder's listing: each file's name below the folder and its signature,
what the storage tells of its content without reading it (storage that is a folder here: size and
modification time; Blob Storage: size, ETag and Content-MD5, from the listing itself; other storage
with read-only links: the same from a HEAD of each link), else the sha256 of its bytes. An unchanged folder has the same key, so a node's
next run downloads nothing; a changed, added or removed file makes a new key, so a new entry.

An entry is downloaded into a temp folder beside it and renamed into place whole, under a lock
per key: a crash never leaves a half entry that is reused, and runs starting together on a node
download it once. The folder is listed again once downloaded: a file changed meanwhile would be
kept under the old content's key, so that download is dropped and made again (a second change is
refused). Entries are never changed after the rename (runs only read them) and never evicted
here: delete the cache folder to reclaim the space.

It runs where the run wrapper runs: on this machine (local targets, and the host that drives a
pool's boxes) and on a Batch node. A box is reached only through its Node port, which has no rename:
there each download is placed (Node.place_data: a data folder, not code) into a folder of its own,
and a `ready` file lists the complete ones in order; the first listed is every run's, and a crash
leaves a folder `ready` never names.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import tempfile
import threading
import uuid
import weakref
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, TypeVar

from xt_submit.domain import layout
from xt_submit.domain.errors import OneLineError
from xt_submit.domain.messages import RunTask
from xt_submit.ports import Node, Storage

KEY_CHARS = 32
SIGNATURE_LINK_SECONDS = 300
HEAD_TIMEOUT_SECONDS = 30
STAGING_PREFIX = ".tmp-"

Listing = List[Tuple[str, str]]  # (name below the folder, signature), sorted by name


class ShareError(OneLineError):
    """A share a run cannot have (nothing there, no mount on the node): the run ends with this reason."""


class _Changed(Exception):
    """The share's listing after a download is not the one it was downloaded by."""


class Fetched(NamedTuple):
    path: str  # the folder holding the share's files
    key: str  # the content key (the cache entry's name)
    files: int
    downloaded: bool  # False: the node's cache already held this content


class SharePlacement:
    """Where one run's shares are on its node, as environment variables for the run."""

    def __init__(self, storage: Storage, node: Node, node_id: str, supervisor_dir: Path, *, on_this_machine: bool,
                 note: Callable[[str], None]) -> None:
        """supervisor_dir: the run's folder on this machine (scratch space); on_this_machine: the node's
        files are this machine's (else a box, reached through the Node port); note: a console line."""
        self.storage, self.node, self.node_id = storage, node, node_id
        self.supervisor_dir = supervisor_dir
        self.on_this_machine = on_this_machine
        self.note = note

    def environment(self, task: RunTask) -> Dict[str, str]:
        """XT_DATA_DIR / XT_MODEL_DIR for the task's shares (nothing for a share it has not)."""
        env = {}
        for share in layout.SHARES:
            spec = getattr(task, share)
            if spec is None:
                continue
            prefix = layout.share_prefix(task.workspace, share, spec.path)
            if spec.action == "mount":
                env[layout.SHARE_DIR_ENV[share]] = self._mounted(share, prefix, task.storage_mount)
            else:
                env[layout.SHARE_DIR_ENV[share]] = self._downloaded(share, prefix, task.share_cache_dir)
        return env

    def _mounted(self, share: str, prefix: str, storage_mount: str) -> str:
        """The share's folder in the storage the node sees: compute's mount of the container (Batch),
        else storage that is a folder on this machine. Read-only by intent unless the job says writable."""
        folder = prefix.rstrip("/")
        path: Optional[str]
        if storage_mount:
            root = os.path.expandvars(storage_mount)
            if not os.path.isdir(root):
                raise ShareError(f"{share} share: the storage mount {root} is not on node {self.node_id} (a pool "
                                 f"made before mounts were added has none: recreate it, or use "
                                 f"{share}-action download)")
            path = posixpath.join(root, folder)
        else:
            path = self.storage.local_path(folder) if self.on_this_machine else None
            if path is None:
                raise ShareError(f"{share}-action mount: node {self.node.name} cannot mount this storage; "
                                 f"use {share}-action download")
        if not os.path.isdir(path):
            raise ShareError(f"{share} share: nothing at {prefix} in storage")
        self.note(f"{share} share {prefix}: mounted at {path}")
        return path

    def _downloaded(self, share: str, prefix: str, cache_dir: str) -> str:
        if self.on_this_machine:
            cache = os.path.expandvars(cache_dir) if cache_dir else posixpath.join(self.node.home, "share_cache")
            fetched = fetch(self.storage, prefix, cache)
        else:
            fetched = self._downloaded_to_box(prefix)
        what = f"downloaded {fetched.files} files" if fetched.downloaded else "in the node's cache already"
        self.note(f"{share} share {prefix}: {what} (content {fetched.key})")
        return fetched.path

    def _downloaded_to_box(self, prefix: str) -> Fetched:
        """The box's cache. Runs this host starts together on the box take turns; two hosts serving the
        same box (there should be one) may each download once."""
        return _twice(prefix, lambda: self._downloaded_to_box_once(prefix, listing(self.storage, prefix)))

    def _downloaded_to_box_once(self, prefix: str, entries: Listing) -> Fetched:
        if not entries:
            raise ShareError(f"{prefix}: nothing in storage there")
        key = content_key(entries)
        key_dir = posixpath.join(self.node.home, "share_cache", key)
        ready = posixpath.join(key_dir, "ready")
        with _box_lock(f"{self.node.name}\0{key_dir}"):
            found = self._first_ready(ready)
            if found:
                return Fetched(posixpath.join(key_dir, found), key, len(entries), downloaded=False)
            folder = posixpath.join(key_dir, uuid.uuid4().hex)
            with tempfile.TemporaryDirectory(dir=self.supervisor_dir) as scratch:
                local = _fetch_once(self.storage, prefix, os.path.join(scratch, "cache"), entries)
                zip_path = zip_folder(local.path, os.path.join(scratch, "share.zip"))
                self.node.place_data(zip_path, folder, source=prefix)
            self.node.append(ready, f"{posixpath.basename(folder)}\n".encode())
            return Fetched(posixpath.join(key_dir, self._first_ready(ready)), key, len(entries), downloaded=True)

    def _first_ready(self, ready: str) -> str:
        first, newline, _ = self.node.read_from(ready).partition(b"\n")
        return first.decode() if newline else ""


# A lock lives while a thread holds or awaits it, so a long-lived host keeps none per content it saw.
_BOX_LOCKS: "weakref.WeakValueDictionary[str, threading.Lock]" = weakref.WeakValueDictionary()
_BOX_LOCKS_GUARD = threading.Lock()


def _box_lock(name: str) -> threading.Lock:
    """One lock per box and content in this process: a pool's runs start in threads of one host."""
    with _BOX_LOCKS_GUARD:
        lock = _BOX_LOCKS.get(name)
        if lock is None:
            lock = _BOX_LOCKS[name] = threading.Lock()
        return lock


_T = TypeVar("_T")


def _twice(prefix: str, attempt: Callable[[], _T]) -> _T:
    """attempt() again (listing afresh) if the share changed while it was downloaded; not a third time."""
    try:
        return attempt()
    except _Changed:
        pass
    try:
        return attempt()
    except _Changed:
        raise ShareError(f"{prefix}: its files changed in storage while being downloaded, twice; "
                         f"try again once nothing writes to it") from None


def entry_signature(storage: Storage, key: str) -> str:
    """What identifies a blob's content without reading it, as this storage offers."""
    local = storage.local_path(key)
    if local is not None:
        stat = os.stat(local)
        return f"size={stat.st_size};mtime={stat.st_mtime_ns}"
    url = storage.read_url(key, SIGNATURE_LINK_SECONDS)
    if url is not None:
        import urllib.request  # here: every run's wrapper imports this module, few runs have shares

        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=HEAD_TIMEOUT_SECONDS) as response:
            headers = response.headers
            return (f"size={headers.get('Content-Length', '')};etag={headers.get('ETag', '')};"
                    f"md5={headers.get('Content-MD5', '')}")
    digest = hashlib.sha256()  # a storage that says nothing about its blobs: read it to know
    for chunk in storage.read_chunks(key):
        digest.update(chunk)
    return f"sha256={digest.hexdigest()}"


def listing(storage: Storage, prefix: str) -> Listing:
    """The folder's files (prefix ends with '/') and their signatures: from the listing itself where
    it carries them (Blob Storage), else asked per file."""
    signed = storage.list_signatures(prefix)
    if signed is not None:
        return sorted((key[len(prefix):], signature) for key, signature in signed.items())
    return [(key[len(prefix):], entry_signature(storage, key)) for key in sorted(storage.list(prefix))]


def content_key(entries: Sequence[Tuple[str, str]]) -> str:
    """The same for the same names and signatures, in any order; different when any one differs."""
    digest = hashlib.sha256()
    for name, signature in sorted(entries):
        digest.update(name.encode() + b"\0" + signature.encode() + b"\n")
    return digest.hexdigest()[:KEY_CHARS]


def fetch(storage: Storage, prefix: str, cache_root: str) -> Fetched:
    """The folder `prefix` of storage as an entry of cache_root, downloaded unless already there."""
    return _twice(prefix, lambda: _fetch_once(storage, prefix, cache_root, listing(storage, prefix)))


def _fetch_once(storage: Storage, prefix: str, cache_root: str, entries: Listing) -> Fetched:
    """fetch, for the content `entries` lists; _Changed if the folder's listing is another one after."""
    if not entries:
        raise ShareError(f"{prefix}: nothing in storage there")
    key = content_key(entries)
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    entry = root / key
    with _locked(root / f".{key}.lock"):
        if entry.is_dir():
            return Fetched(str(entry), key, len(entries), downloaded=False)
        for leftover in root.glob(f"{STAGING_PREFIX}{key}-*"):  # a crashed download's (we hold the key's lock)
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{key}-", dir=root))
        try:
            for name, _ in entries:
                target = _inside(staging, name, prefix)
                target.parent.mkdir(parents=True, exist_ok=True)
                storage.download_file(prefix + name, str(target))
            if listing(storage, prefix) != entries:  # a file changed meanwhile: not this key's content
                raise _Changed()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            os.rename(staging, entry)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not entry.is_dir():
                raise
            # without flock another process may have renamed the same content into place first: use it
    return Fetched(str(entry), key, len(entries), downloaded=True)


def zip_folder(folder: str, zip_path: str) -> str:
    """The folder's files in a zip (stored, not compressed: shares are mostly compressed data already),
    for a node reached only through its Node port (place_data)."""
    base = Path(folder)
    import zipfile

    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(base.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(base).as_posix())
    return zip_path


def _inside(root: Path, name: str, prefix: str) -> Path:
    target = (root / name).resolve()
    if root.resolve() not in target.parents:
        raise ShareError(f"{prefix}{name}: its name escapes the share's folder")
    return target


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): runs starting together may both download; the first rename wins
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
