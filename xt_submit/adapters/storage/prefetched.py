"""A Storage that serves one key (a run's code zip) from a file already fetched, and everything
else from the storage beneath: a Batch node's code arrives as a resource file, not a download."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from xt_submit.ports import Storage


class PrefetchedCode(Storage):
    def __init__(self, storage: Storage, code_key: str, code_file: Path) -> None:
        self._storage = storage
        self._code_key = code_key
        self._code_file = code_file

    def download_file(self, key: str, path: str) -> None:
        if key == self._code_key and self._code_file.exists():
            shutil.copyfile(self._code_file, path)
        else:
            self._storage.download_file(key, path)

    def local_path(self, key: str) -> Optional[str]:
        if key == self._code_key and self._code_file.exists():
            return str(self._code_file)
        return self._storage.local_path(key)

    def read(self, key: str) -> bytes:
        return self._storage.read(key)

    def read_chunks(self, key: str) -> Iterator[bytes]:
        return self._storage.read_chunks(key)

    def write(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        return self._storage.write(key, data, overwrite=overwrite)

    def create_log(self, key: str, data: bytes) -> bool:
        return self._storage.create_log(key, data)

    def append(self, key: str, data: bytes) -> None:
        self._storage.append(key, data)

    def exists(self, key: str) -> bool:
        return self._storage.exists(key)

    def list(self, prefix: str) -> List[str]:
        return self._storage.list(prefix)

    def signature(self, key: str) -> Optional[str]:
        return self._storage.signature(key)

    def list_signatures(self, prefix: str) -> Optional[Dict[str, str]]:
        return self._storage.list_signatures(prefix)

    def upload_file(self, key: str, path: str) -> None:
        self._storage.upload_file(key, path)

    def delete(self, key: str) -> None:
        self._storage.delete(key)

    def read_url(self, key: str, expiry_seconds: float = 3600) -> Optional[str]:
        return self._storage.read_url(key, expiry_seconds)
