"""Recording upload, download and the "already exists" reconciliation.

MediSync keeps one recording per appointment and rejects a second upload. A retry after a lost response (the
first upload arrived, its answer did not) therefore meets "already exists"; the client then hashes what the server
holds while downloading it and compares with the local file. Same SHA-256: the upload is done (reported as
success, nothing uploaded twice). Different: :class:`~agent.errors.RecordingMismatchError`, never a silent double
and never a silent loss.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import httpx

from agent.api.models import Recording
from agent.api.multipart import CHUNK_BYTES, FilePart, Progress
from agent.api.responses import convert
from agent.errors import AlreadyExistsError, InputError, RecordingMismatchError, TransportError, UploadTooLargeError

if TYPE_CHECKING:
    from agent.api.medisync import MediSyncClient

log = logging.getLogger(__name__)

AUDIO_FIELD = "audio"
"""Multipart field name of the recordings endpoint."""


@dataclass(frozen=True)
class UploadResult:
    appointment_id: str
    size: int
    """Bytes of the local file."""
    recording: Recording | None
    """What MediSync answered; None when the recording was already there (reconciled)."""
    already_present: bool
    """True when MediSync already held exactly these bytes (an earlier attempt's answer was lost)."""


@dataclass(frozen=True)
class Download:
    size: int
    """Bytes received."""
    sha256: str
    """Hex SHA-256 of the bytes received."""


def local_size(path: Path, limit: int) -> int:
    """Size of the file to upload; refuses missing files and files over ``limit`` bytes before any request."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read recording {path}: {exc.strerror}") from None
    if not path.is_file():
        raise InputError(f"recording {path} is not a regular file")
    if size > limit:
        raise UploadTooLargeError(f"recording {path} is {size} bytes, over MediSync's limit of {limit} bytes; not sent")
    return size


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (blocking: run it in a thread)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


async def post(client: MediSyncClient, appointment_id: str, path: Path, *, progress: Progress | None) -> Recording:
    size = local_size(path, client.max_upload_bytes)
    part = FilePart(AUDIO_FIELD, path, size)
    call = client.recording_call(
        "POST",
        appointment_id,
        body=lambda: part.body(progress),
        headers={"Content-Type": part.content_type, "Content-Length": str(part.content_length)},
    )
    doc = await client.http.request(call)
    return convert(doc.get("data"), Recording, endpoint=call.label, what="recording")


async def upload(client: MediSyncClient, appointment_id: str, path: Path, *, progress: Progress | None) -> UploadResult:
    size = local_size(path, client.max_upload_bytes)
    try:
        recording = await post(client, appointment_id, path, progress=progress)
    except AlreadyExistsError:
        log.info("appointment %s already has a recording; comparing it with the local file", appointment_id)
    else:
        return UploadResult(appointment_id, size, recording, already_present=False)
    local_digest = await asyncio.to_thread(sha256_file, path)
    remote = await download(client, appointment_id, None)
    if remote.size == size and remote.sha256 == local_digest:
        log.info("appointment %s: the server already holds this recording", appointment_id)
        return UploadResult(appointment_id, size, None, already_present=True)
    raise RecordingMismatchError(
        f"appointment {appointment_id} already has a different recording on the server "
        f"({remote.size} bytes, sha256 {remote.sha256[:12]}...) than the local file "
        f"({size} bytes, sha256 {local_digest[:12]}...)"
    )


async def download(client: MediSyncClient, appointment_id: str, destination: Path | None) -> Download:
    """Stream the recording, hashing it; write it to ``destination`` (atomically) unless that is None."""
    call = client.recording_call("GET", appointment_id)
    response = await client.http.open(call)
    digest = hashlib.sha256()
    size = 0
    sink: BinaryIO | None = None
    temp_name = ""
    try:
        if destination is not None:
            fd, temp_name = tempfile.mkstemp(prefix=".download-", dir=destination.parent)
            sink = os.fdopen(fd, "wb")
        async for chunk in response.aiter_bytes(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
            if sink is not None:
                await asyncio.to_thread(sink.write, chunk)
        if sink is not None:
            sink.close()
            assert destination is not None
            os.replace(temp_name, destination)
            temp_name = ""
    except httpx.TransportError as exc:
        raise TransportError(f"{call.label}: download interrupted ({type(exc).__name__})") from None
    finally:
        await response.aclose()
        if sink is not None and not sink.closed:
            sink.close()
        if temp_name:
            os.unlink(temp_name)
    return Download(size, digest.hexdigest())
