"""A zip dropped into the uploads area -> a JobSubmitted, as if `xt run` had sent it."""
from __future__ import annotations

import hashlib
import io

import msgspec

from xt_submit.node_kit import code_archive
from xt_submit.domain import layout
from xt_submit.domain.manifest import check_manifest
from xt_submit.domain.messages import ContractError, JobSubmitted, UploadReceived, decode_manifest
from xt_submit.ports import NotFound, Ports

MANIFEST_NAME = "xt_manifest.json"
MAX_UPLOAD_BYTES = 500 * 1024**2


def accept_upload(event: UploadReceived, ports: Ports) -> JobSubmitted:
    source = event.upload_key
    if not event.upload_key.startswith(layout.UPLOADS_PREFIX):
        raise ContractError(f"{source}: expected a key under {layout.UPLOADS_PREFIX}")
    try:
        data = ports.storage.read(event.upload_key)
    except NotFound:
        raise ContractError(f"{source}: not found in storage") from None
    if len(data) > MAX_UPLOAD_BYTES:
        raise ContractError(f"{source}: {len(data)} bytes, more than the limit of {MAX_UPLOAD_BYTES}")
    try:
        with code_archive.open_zip(io.BytesIO(data), source) as archive:
            names = {info.filename for info in code_archive.check_zip(archive, source)}
            if MANIFEST_NAME not in names:
                raise ContractError(f"{source}: no {MANIFEST_NAME} at the top of the zip")
            manifest_bytes = archive.read(MANIFEST_NAME)
    except code_archive.ArchiveError as exc:
        raise ContractError(str(exc)) from None

    sha256 = hashlib.sha256(data).hexdigest()
    manifest = decode_manifest(manifest_bytes, f"{source}: {MANIFEST_NAME}")
    manifest = msgspec.structs.replace(manifest, code_key=layout.code_key(sha256), code_sha256=sha256)
    check_manifest(manifest, f"{source}: {MANIFEST_NAME}")
    ports.storage.write(manifest.code_key, data, overwrite=False)
    # Named by content and key, so a redelivered upload event maps to the same job.
    submission_id = "upload-" + hashlib.sha256(f"{event.upload_key}\n{sha256}".encode()).hexdigest()[:32]
    message = JobSubmitted(submission_id=submission_id, manifest=manifest, submitted_at=event.received_at)
    ports.publisher.send_job(message)
    return message
