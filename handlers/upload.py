"""A zip dropped into the uploads area -> a JobSubmitted, as if `xt run` had sent it; and the
outcome written back beside the zip (uploads/<name>.result.json) for the system that dropped it."""
from __future__ import annotations

import hashlib
import io
from typing import Optional

import msgspec

from xt_submit.node_kit import code_archive
from xt_submit.domain import layout
from xt_submit.domain.manifest import MANIFEST_NAME, check_manifest
from xt_submit.domain.messages import (UPLOAD_ACCEPTED, UPLOAD_REFUSED, ContractError, JobSubmitted, UploadReceived,
                                       UploadResult, decode_manifest)
from xt_submit.domain.delivery import PERMANENT_ERRORS
from xt_submit.ports import NotFound, Ports, Storage

MAX_UPLOAD_BYTES = 500 * 1024**2

_result_encoder = msgspec.json.Encoder()


def accept_upload(event: UploadReceived, ports: Ports) -> Optional[JobSubmitted]:
    """The JobSubmitted sent for the upload (None for a result file, which is never an upload).

    Writes the result "accepted" before sending (dispatch rewrites it "submitted" with the job's
    name), or "refused" with the reason before a permanent error propagates."""
    source = event.upload_key
    if source.endswith(layout.UPLOAD_RESULT_SUFFIX):
        return None  # our own answer beside a drop: the uploads area's events announce it too
    if not source.startswith(layout.UPLOADS_PREFIX):
        raise ContractError(f"{source}: expected a key under {layout.UPLOADS_PREFIX}")
    try:
        data = ports.storage.read(source)
    except NotFound:  # nothing was dropped there (any more): nothing to answer
        raise ContractError(f"{source}: not found in storage") from None
    try:
        message = _submission(event, data, ports)
    except PERMANENT_ERRORS as exc:
        write_result(ports.storage, UploadResult(upload=source, status=UPLOAD_REFUSED, reason=str(exc)))
        raise
    # A redelivery after dispatch keeps the job's name (dispatch would write it again anyway).
    if not _names_job(ports.storage, source, message.submission_id):
        write_result(ports.storage, UploadResult(upload=source, status=UPLOAD_ACCEPTED,
                                                 workspace=message.manifest.workspace,
                                                 submission_id=message.submission_id))
    ports.publisher.send_job(message)
    return message


def _submission(event: UploadReceived, data: bytes, ports: Ports) -> JobSubmitted:
    """The upload checked (a safe zip, a valid manifest) and stored as code; the message for it."""
    source = event.upload_key
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
    submission_id = "upload-" + hashlib.sha256(f"{source}\n{sha256}".encode()).hexdigest()[:32]
    return JobSubmitted(submission_id=submission_id, manifest=manifest, submitted_at=event.received_at,
                        upload_key=source)


def write_result(storage: Storage, result: UploadResult) -> None:
    """uploads/<name>.result.json: the same bytes for the same outcome (a redelivery rewrites them as they were)."""
    storage.write(layout.upload_result_key(result.upload), _result_encoder.encode(result) + b"\n")


def _names_job(storage: Storage, upload_key: str, submission_id: str) -> bool:
    """Whether the upload's result already names the job of this very submission."""
    try:
        result = msgspec.json.decode(storage.read(layout.upload_result_key(upload_key)), type=UploadResult)
    except (NotFound, msgspec.DecodeError):
        return False
    return result.submission_id == submission_id and result.job is not None
