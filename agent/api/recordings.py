"""Recording upload, download and the "already exists" reconciliation.

MediSync keeps one recording per appointment and rejects a second upload. A retry after a lost response (the
first upload arrived, its answer did not) therefore meets "already exists"; the client then hashes what the server
holds while downloading it and compares with the local file (for a sealed recording: with the plaintext digest
recorded when the visit was finished, never by writing plaintext out). Same SHA-256: the upload is done (reported
as success, nothing uploaded twice). Different: :class:`~agent.errors.RecordingMismatchError`, never a silent double
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
from agent.api.multipart import CHUNK_BYTES, AudioBody, FilePart, LocalFile, Progress
from agent.api.responses import unwrap
from agent.archive.storage import sha256_file
from agent.errors import (
    AlreadyExistsError,
    ApiError,
    InputError,
    RecordingMismatchError,
    ResponseError,
    TransportError,
    UploadTooLargeError,
    WrongAppointmentError,
)

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


def audio_body(audio: Path | AudioBody, limit: int) -> AudioBody:
    """What to send: a plaintext file as it is, or the given body; refused over ``limit`` before any request."""
    if isinstance(audio, Path):
        audio = LocalFile(audio, local_size(audio, limit))
    if audio.size > limit:
        raise UploadTooLargeError(f"recording {audio.path} is {audio.size} bytes, over MediSync's limit of {limit} "
                                  "bytes; not sent")  # fmt: skip
    return audio


async def local_digest(audio: AudioBody) -> str:
    """The SHA-256 the upload's content has: known in advance, or hashed from the plaintext file."""
    return audio.sha256 if audio.sha256 is not None else await asyncio.to_thread(sha256_file, audio.path)


async def post(client: MediSyncClient, appointment_id: str, audio: Path | AudioBody, *,
               progress: Progress | None) -> Recording:  # fmt: skip
    part = FilePart(AUDIO_FIELD, audio_body(audio, client.max_upload_bytes))
    call = client.recording_call(
        "POST",
        appointment_id,
        body=lambda: part.body(progress),
        headers={"Content-Type": part.content_type, "Content-Length": str(part.content_length)},
    )
    doc = await client.http.request(call)
    recording = unwrap(doc, Recording, keys=("recording",), endpoint=call.label, what="recording")
    if recording.appointment_id is not None and recording.appointment_id != appointment_id:
        # Accepted, but filed elsewhere (or the answer is another upload's): this appointment may still lack it.
        raise WrongAppointmentError(f"{call.label}: MediSync's answer names another appointment than the one uploaded")
    return recording


async def upload(client: MediSyncClient, appointment_id: str, audio: Path | AudioBody, *,
                 progress: Progress | None) -> UploadResult:  # fmt: skip
    body = audio_body(audio, client.max_upload_bytes)
    size = body.size
    try:
        recording = await post(client, appointment_id, body, progress=progress)
    except AlreadyExistsError:
        log.info("appointment %s already has a recording; comparing it with the local file", appointment_id)
    except ResponseError as exc:
        # A 2xx whose body cannot be read: the upload may or may not have landed. Ask what the server holds.
        return await _verify_unreadable_answer(client, appointment_id, body, exc)
    else:
        return UploadResult(appointment_id, size, recording, already_present=False)
    digest = await local_digest(body)
    remote = await download(client, appointment_id, None)
    if remote.size == size and remote.sha256 == digest:
        log.info("appointment %s: the server already holds this recording", appointment_id)
        return UploadResult(appointment_id, size, None, already_present=True)
    raise RecordingMismatchError(
        f"appointment {appointment_id} already has a different recording on the server "
        f"({remote.size} bytes, sha256 {remote.sha256[:12]}...) than the local file "
        f"({size} bytes, sha256 {digest[:12]}...)"
    )


async def _verify_unreadable_answer(
    client: MediSyncClient, appointment_id: str, body: AudioBody, unreadable: ResponseError
) -> UploadResult:
    """Done if the server holds exactly the local bytes; otherwise the unreadable answer stands (retried later).

    Not a mismatch even when the server holds other bytes: a server that garbles one answer may garble the
    download too, and the next attempt meets "already exists" and compares again, definitely.
    """
    digest = await local_digest(body)
    size = body.size
    try:
        remote = await download(client, appointment_id, None)
    except ApiError as exc:
        log.info("upload answer unreadable and the recording cannot be fetched to check it (%s)", type(exc).__name__)
        raise unreadable from None
    if remote.size == size and remote.sha256 == digest:
        log.info("appointment %s: upload answer unreadable; the server holds exactly this recording", appointment_id)
        return UploadResult(appointment_id, size, None, already_present=True)
    raise unreadable


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
