"""Receiving ``POST recordings/add``'s multipart body: the ``audio`` part streamed to a private file, bounded.

Every read waits at most ``idle_s`` for bytes (408 and the connection closed otherwise); the audio part may hold
``limit`` bytes and any other part :data:`OTHER_PART_LIMIT` (413 beyond); a body that is not multipart as declared
is 400. What was received is judged by its content (:func:`agent.archive.audio_format.sniff`): anything but WAV,
MP3 or M4A is 415, and the stored file's suffix follows the content, not the name the client gave.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from aiohttp import BodyPartReader, web

from agent.archive.audio_format import AudioFormat, NotAudio, sniff
from agent.archive.storage import FILE_MODE
from agent.server.app import json_error

READ_CHUNK = 256 * 1024
OTHER_PART_LIMIT = 64 * 1024
"""Bytes a multipart field other than ``audio`` may hold."""

T = TypeVar("T")


@dataclass(frozen=True)
class Received:
    size: int
    sha256: str
    format: AudioFormat
    content_type: str


def _closing(status: int, message: str) -> web.HTTPException:
    exc = json_error(status, message)
    exc.force_close()  # the rest of the body stays unread: the connection cannot carry another request
    return exc


async def _within(step: Awaitable[T], idle_s: float) -> T:
    try:
        async with asyncio.timeout(idle_s):
            return await step
    except TimeoutError:
        raise _closing(408, f"Request body stalled (nothing for {idle_s:g} s)") from None


def _create_private(path: Path) -> IO[bytes]:
    """A new 0600 file (a recording is patient audio), never through a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    return os.fdopen(os.open(path, flags, FILE_MODE), "wb")


def _sync_file(out: IO[bytes]) -> None:
    out.flush()
    os.fsync(out.fileno())


def sniff_file(path: Path) -> AudioFormat:
    """The stored file's format by content; 415 (one line) when it is not WAV, MP3 or M4A."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return sniff(lambda offset, size: os.pread(fd, size, offset), os.fstat(fd).st_size)
    except NotAudio as exc:
        raise json_error(415, f"Unsupported recording: {exc}") from None
    finally:
        os.close(fd)


async def _drain(part: BodyPartReader, idle_s: float) -> None:
    seen = 0
    while chunk := await _within(part.read_chunk(READ_CHUNK), idle_s):
        seen += len(chunk)
        if seen > OTHER_PART_LIMIT:
            raise _closing(413, f"Multipart field {part.name!r} too large (max {OTHER_PART_LIMIT} bytes)")


async def _store(part: BodyPartReader, tmp: Path, limit: int, idle_s: float) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    out = await asyncio.to_thread(_create_private, tmp)
    try:
        while chunk := await _within(part.read_chunk(READ_CHUNK), idle_s):
            size += len(chunk)
            if size > limit:
                raise _closing(413, f"File too large (max {limit} bytes)")
            digest.update(chunk)
            await asyncio.to_thread(out.write, chunk)
        await asyncio.to_thread(_sync_file, out)
    finally:
        out.close()
    return size, digest.hexdigest()


async def receive_audio(request: web.Request, tmp: Path, limit: int, idle_s: float) -> Received | None:
    """Stream the ``audio`` part to ``tmp`` (0600) and judge it; None when the body has no ``audio`` part."""
    try:
        reader = await request.multipart()
        result: tuple[int, str, str] | None = None
        while (part := await _within(reader.next(), idle_s)) is not None:
            if not isinstance(part, BodyPartReader) or part.name != "audio" or result is not None:
                if isinstance(part, BodyPartReader):
                    await _drain(part, idle_s)
                else:
                    raise json_error(400, "Nested multipart bodies are not accepted")
                continue
            size, digest = await _store(part, tmp, limit, idle_s)
            result = (size, digest, part.headers.get("Content-Type", "application/octet-stream"))
    except ValueError as exc:  # aiohttp's multipart parser: no boundary, a broken part header, a bad boundary
        raise json_error(400, "Malformed multipart body") from exc
    if result is None:
        return None
    audio_format = await asyncio.to_thread(sniff_file, tmp)
    return Received(result[0], result[1], audio_format, result[2])
