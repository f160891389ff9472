"""A streamed ``multipart/form-data`` body holding one file, read piece by piece.

A visit recording can be 500 MB; the body is produced as an async iterator of chunks so at most one chunk is in
memory, its exact length is known up front (so the request carries ``Content-Length``, not chunked encoding), and
every chunk sent is reported to a progress callback. The file part's filename is neutral (``recording.wav``):
local file names are ours, not MediSync's business.

The file comes from an :class:`AudioBody`: a plaintext file on disk (:class:`LocalFile`), or a sealed recording
decrypted while it streams (``agent.archive.upload_audio``), so no plaintext copy is ever written. When the body
knows the SHA-256 its content must have (taken when the visit was finished), the bytes sent are hashed on the way
and the closing boundary is only sent once they match: a body that turns out damaged or different is aborted
before it is complete, so the server never receives it as a whole recording.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from agent.errors import DamagedRecordingError, InputError

CHUNK_BYTES = 256 * 1024
"""Bytes read from disk and handed to the connection at a time."""

Progress = Callable[[int, int], None]
"""Called with (bytes of the file sent so far, file size in bytes)."""

CONTENT_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".m4a": "audio/mp4"}


def content_type_for(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")


class AudioBody(Protocol):
    """The audio an upload sends: its name (for the content type), exact size, expected digest, and content."""

    @property
    def path(self) -> Path: ...

    @property
    def size(self) -> int:
        """Bytes the upload sends."""

    @property
    def sha256(self) -> str | None:
        """Hex SHA-256 the content must have, when known in advance; None: the file is what it is."""

    def open(self) -> BinaryIO:
        """The content, read in blocks (blocking: the body reads it on a worker thread)."""


class LocalFile:
    """A plaintext file on disk, uploaded as it is."""

    def __init__(self, path: Path, size: int, sha256: str | None = None) -> None:
        self.path = path
        self.size = size
        self.sha256 = sha256

    def open(self) -> BinaryIO:
        return self.path.open("rb")


class FilePart:
    """One file as the only part of a multipart body; ``size`` is fixed when the part is made."""

    def __init__(self, field: str, audio: AudioBody, *, boundary: str | None = None) -> None:
        self.audio = audio
        self.path = audio.path
        self.size = audio.size
        self.boundary = boundary or secrets.token_hex(16)
        filename = "recording" + self.path.suffix.lower()
        self._head = (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type_for(self.path)}\r\n\r\n"
        ).encode("ascii")
        self._tail = f"\r\n--{self.boundary}--\r\n".encode("ascii")

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def content_length(self) -> int:
        return len(self._head) + self.size + len(self._tail)

    async def body(self, progress: Progress | None = None) -> AsyncIterator[bytes]:
        """The body, reading the file as it goes; the file must still have ``size`` bytes (and its digest)."""
        yield self._head
        sent = 0
        expected = self.audio.sha256
        digest = hashlib.sha256() if expected is not None else None
        file = await asyncio.to_thread(self.audio.open)
        try:
            while sent < self.size:
                # Reads go to a worker thread: a slow SD card (or decryption) must not stall the event loop.
                chunk = await asyncio.to_thread(file.read, min(CHUNK_BYTES, self.size - sent))
                if not chunk:
                    raise InputError(f"{self.path} shrank while it was being uploaded")
                sent += len(chunk)
                if digest is not None:
                    digest.update(chunk)
                yield chunk
                if progress is not None:
                    progress(sent, self.size)
        finally:
            await asyncio.to_thread(file.close)
        if digest is not None and digest.hexdigest() != expected:
            # The closing boundary is withheld: the request ends incomplete and the server stores nothing.
            raise DamagedRecordingError(f"{self.path.name}: its content differs from the digest taken when it was "
                                        "recorded; the upload was aborted before its end")  # fmt: skip
        yield self._tail
