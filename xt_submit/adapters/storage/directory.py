"""Experiment storage as a directory tree (the embedded default for Blob Storage)."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Optional

from xt_submit.ports import NotFound, Storage
from xt_submit.domain.errors import OneLineError


class StorageKeyError(OneLineError):
    pass


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\x00" in key or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise StorageKeyError(f"storage key: expected a relative path without '..', got {key!r}")
    return key


READ_CHUNK = 1 << 20  # large enough that reading costs no more than a whole read, small beside any log


def _file_chunks(f: BinaryIO) -> Iterator[bytes]:
    with f:
        while chunk := f.read(READ_CHUNK):
            yield chunk


# A temp file untouched this long was left by a writer that died (a live one keeps writing it).
STALE_TEMP_SECONDS = 15 * 60
# Folders made by this process whose mkdir later writes skip, the latest this many: a host that
# stores for 100,000 runs must not remember every run's folder (~600 B each as a Path).
MADE_DIRS_REMEMBERED = 1024


def sweep_stale_temps(folder: Path) -> int:
    """Remove the write-aside files (.tmp-*) in folder that no writer has touched for STALE_TEMP_SECONDS."""
    removed, before = 0, time.time() - STALE_TEMP_SECONDS
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            try:
                if entry.name.startswith(".tmp-") and entry.is_file() and entry.stat().st_mtime < before:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass  # another process swept it first
    return removed


class DirectoryStorage(Storage):
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._made_dirs: Dict[str, None] = {}  # oldest first

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _parent_dir(self, path: Path) -> None:
        """mkdir -p once per folder per process: most writes land in a folder already made. That
        first time, temp files a killed writer left there (an interrupted upload) are swept."""
        parent = path.parent
        key = str(parent)
        if key not in self._made_dirs:
            parent.mkdir(parents=True, exist_ok=True)
            sweep_stale_temps(parent)
            if len(self._made_dirs) >= MADE_DIRS_REMEMBERED:
                del self._made_dirs[next(iter(self._made_dirs))]
            self._made_dirs[key] = None

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"storage: no such key {key}") from None

    def read_chunks(self, key: str) -> Iterator[bytes]:
        try:
            f = open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"storage: no such key {key}") from None
        return _file_chunks(f)

    def write(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        path = self._path(key)
        self._parent_dir(path)
        import tempfile  # here: a command that only reads the index never loads it (nor random)

        # Write aside then rename: a reader never sees half a file, a crash leaves no torn file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            if overwrite:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)  # atomic create-if-absent
                return True
            except FileExistsError:
                return False
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def create_log(self, key: str, data: bytes) -> bool:
        return self.write(key, data, overwrite=False)

    def append(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self._parent_dir(path)
        # O_APPEND makes each write land whole at the end, even with several writers.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def signature(self, key: str) -> Optional[str]:
        try:
            stat = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        # every write is a new file renamed into place (a new inode), an append moves size and mtime
        return f"size={stat.st_size};ino={stat.st_ino};mtime={stat.st_mtime_ns}"

    def list(self, prefix: str) -> List[str]:
        base = self.root / prefix.rstrip("/") if prefix else self.root
        if prefix and not prefix.endswith("/"):
            raise StorageKeyError(f"storage prefix: expected a folder ending in '/', got {prefix!r}")
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            rel = "" if rel == "." else rel + "/"
            keys.extend(rel + name for name in filenames if not name.startswith(".tmp-"))
        return sorted(keys)

    def upload_file(self, key: str, path: str) -> None:
        import shutil  # here: every command builds this storage, few copy a file (shutil: ~3 ms to import)

        dest = self._path(key)
        self._parent_dir(dest)
        tmp = dest.with_name(f".tmp-{os.getpid()}-{dest.name}")
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        finally:  # a failed copy (a full disk, a vanished source) leaves no temp file behind
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def download_file(self, key: str, path: str) -> None:
        source = self._path(key)
        if not source.is_file():
            raise NotFound(f"storage: no such key {key}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        import shutil

        shutil.copyfile(source, path)

    def read_url(self, key: str, expiry_seconds: float = 3600) -> None:
        return None  # a folder has no links: nodes that fetch code by link are given the zip instead

    def local_path(self, key: str) -> str:
        return str(self._path(key))

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
