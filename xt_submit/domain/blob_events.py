"""Blob Storage's `Microsoft.Storage.BlobCreated` event (Event Grid schema), as the team's Event
Grid subscription delivers it to the uploads queue: which upload it announces.

Only the blob's name is taken, never its bytes: the upload handler reads the zip from storage.
"""
from __future__ import annotations

import time
from typing import List, Union

import msgspec

from xt_submit.domain.layout import UPLOADS_PREFIX
from xt_submit.domain.messages import ContractError, UploadReceived

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
SUBJECT_PREFIX = "/blobServices/default/containers/"


class BlobEvent(msgspec.Struct, rename="camel"):
    event_type: str
    subject: str  # /blobServices/default/containers/<container>/blobs/<name>
    event_time: str = ""


def upload_from_blob_event(body: bytes, container: str) -> UploadReceived:
    """The UploadReceived for one delivered event (Event Grid sends one event per message to a
    queue; an array of exactly one is accepted too). Anything else is a contract error."""
    try:
        decoded = msgspec.json.decode(body, type=Union[BlobEvent, List[BlobEvent]])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ContractError(f"blob event: expected an Event Grid {BLOB_CREATED} event ({exc})") from None
    if isinstance(decoded, list):
        if len(decoded) != 1:
            raise ContractError(f"blob event: expected one event per message, got {len(decoded)}")
        decoded = decoded[0]
    if decoded.event_type != BLOB_CREATED:
        raise ContractError(f"blob event: eventType: expected {BLOB_CREATED}, got {decoded.event_type!r}")
    where = f"{SUBJECT_PREFIX}{container}/blobs/"
    if not decoded.subject.startswith(where):
        raise ContractError(f"blob event: subject: expected a blob in container {container!r}, got {decoded.subject!r}")
    key = decoded.subject[len(where):]
    if not key.startswith(UPLOADS_PREFIX) or key == UPLOADS_PREFIX:
        raise ContractError(f"blob event: subject: expected a blob under {UPLOADS_PREFIX}, got {key!r}")
    return UploadReceived(upload_key=key, received_at=time.time())
