"""Experiment storage in Azure Blob Storage (azure-storage-blob): the Storage port for a team.

Logs are append blobs (an append is one atomic block, as O_APPEND is on a disk); everything else
is a block blob, uploaded and downloaded in parallel chunks with an optional progress callback.
Authenticates with a connection string or an azure-identity credential.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterator, List, Optional

from xt_submit.ports import NotFound, Storage

APPEND_BLOCK_LIMIT = 4 * 1024 * 1024  # the service's largest append block
Progress = Callable[[int, Optional[int]], None]  # (bytes so far, total bytes or None)


class BlobStorage(Storage):
    reports_progress = True

    def __init__(self, container: str, *, connection_string: Optional[str] = None, account_url: Optional[str] = None,
                 credential=None, max_concurrency: int = 4, progress: Optional[Progress] = None) -> None:
        from azure.storage.blob import BlobServiceClient

        if connection_string:
            service = BlobServiceClient.from_connection_string(connection_string)
        elif account_url:
            service = BlobServiceClient(account_url, credential=credential)
        else:
            raise ValueError("blob storage: expected a connection string or an account URL with a credential")
        self.service = service
        self.container = service.get_container_client(container)
        self.max_concurrency = max_concurrency
        self.progress = progress

    def ensure_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self.container.create_container()
        except ResourceExistsError:
            pass

    def _blob(self, key: str):
        from xt_submit.adapters.storage.directory import check_key

        return self.container.get_blob_client(check_key(key))

    def read(self, key: str) -> bytes:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._blob(key).download_blob(max_concurrency=self.max_concurrency).readall()
        except ResourceNotFoundError:
            raise NotFound(f"storage: no such key {key}") from None

    def read_chunks(self, key: str) -> Iterator[bytes]:
        from azure.core.exceptions import ResourceNotFoundError

        try:  # the download starts here, so a missing key fails before the first chunk
            stream = self._blob(key).download_blob(max_concurrency=self.max_concurrency)
        except ResourceNotFoundError:
            raise NotFound(f"storage: no such key {key}") from None
        return iter(stream.chunks())

    def write(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        from azure.core.exceptions import ResourceExistsError

        try:
            self._blob(key).upload_blob(data, overwrite=overwrite, max_concurrency=self.max_concurrency,
                                        progress_hook=self.progress)
            return True
        except ResourceExistsError:
            return False

    def create_log(self, key: str, data: bytes) -> bool:
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        blob = self._blob(key)
        try:
            blob.create_append_blob(if_none_match="*")
            created = True
        except ResourceExistsError:
            created = False  # made before: by another writer, or by us before a crash that left it empty
        if not data:
            return created
        try:
            # appendpos 0: only into an empty log, so a redelivery never writes the opening twice
            self._append_blocks(blob, data, first_position=0)
            return True
        except HttpResponseError as exc:
            if getattr(exc, "error_code", None) in ("AppendPositionConditionNotMet", "InvalidBlobType"):
                return False
            raise

    def append(self, key: str, data: bytes) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        blob = self._blob(key)
        try:
            self._append_blocks(blob, data)
        except ResourceNotFoundError:
            try:
                blob.create_append_blob(if_none_match="*")
            except ResourceExistsError:
                pass
            self._append_blocks(blob, data)

    @staticmethod
    def _append_blocks(blob, data: bytes, first_position: Optional[int] = None) -> None:
        for start in range(0, len(data), APPEND_BLOCK_LIMIT):
            chunk = data[start:start + APPEND_BLOCK_LIMIT]
            if start == 0 and first_position is not None:
                blob.append_block(chunk, appendpos_condition=first_position)
            else:
                blob.append_block(chunk)

    def exists(self, key: str) -> bool:
        return self._blob(key).exists()

    def list(self, prefix: str) -> List[str]:
        return sorted(self.container.list_blob_names(name_starts_with=prefix or None))

    def signature(self, key: str) -> Optional[str]:
        """One Get Blob Properties: Blob Storage gives a blob a new ETag on every write."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            properties = self._blob(key).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return f"size={properties.size};etag={properties.etag}"

    def list_signatures(self, prefix: str) -> Dict[str, str]:
        """List Blobs returns each blob's properties: a share of many files costs its listing's pages,
        not a request per file."""
        signed = {}
        for blob in self.container.list_blobs(name_starts_with=prefix or None):
            md5 = blob.content_settings.content_md5 if blob.content_settings else None
            signed[blob.name] = f"size={blob.size};etag={blob.etag};md5={bytes(md5).hex() if md5 else ''}"
        return signed

    def upload_file(self, key: str, path: str) -> None:
        with open(path, "rb") as f:
            self._blob(key).upload_blob(f, overwrite=True, max_concurrency=self.max_concurrency,
                                        progress_hook=self.progress)

    def download_file(self, key: str, path: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            stream = self._blob(key).download_blob(max_concurrency=self.max_concurrency, progress_hook=self.progress)
        except ResourceNotFoundError:
            raise NotFound(f"storage: no such key {key}") from None
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            stream.readinto(f)

    def read_url(self, key: str, expiry_seconds: float = 3600) -> str:
        """A URL that can read this one blob, and nothing else, until it expires: what a compute
        node gets for a job's code, in place of any key. Signed with the account key when the
        connection has one, else with a user delegation key (an azure-identity sign-in)."""
        from datetime import datetime, timedelta, timezone

        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        blob = self._blob(key)
        now = datetime.now(timezone.utc)
        expiry = now + timedelta(seconds=expiry_seconds)
        signing = {}
        account_key = getattr(self.container.credential, "account_key", None)
        if account_key:
            signing["account_key"] = account_key
        else:
            signing["user_delegation_key"] = self.service.get_user_delegation_key(now - timedelta(minutes=5), expiry)
        sas = generate_blob_sas(blob.account_name, blob.container_name, blob.blob_name,
                                permission=BlobSasPermissions(read=True), expiry=expiry, **signing)
        return f"{blob.url}?{sas}"

    def delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._blob(key).delete_blob()
        except ResourceNotFoundError:
            pass
