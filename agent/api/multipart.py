"""A streamed ``multipart/form-data`` body holding one file, read from disk piece by piece.

A visit recording can be 500 MB; the body is produced as an async iterator of chunks so at most one chunk is in
memory, its exact length is known up front (so the request carries ``Content-Length``, not chunked encoding), and
every chunk sent is reported to a progress callback. The file part's filename is neutral (``recording.wav``):
local file names are ours, not MediSync's business.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from agent.errors import InputError

CHUNK_BYTES = 256 * 1024
"""Bytes read from disk and handed to the connection at a time."""

Progress = Callable[[int, int], None]
"""Called with (bytes of the file sent so far, file size in bytes)."""

CONTENT_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".m4a": "audio/mp4"}


def content_type_for(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")


class FilePart:
    """One file as the only part of a multipart body; ``size`` is fixed when the part is made."""

    def __init__(self, field: str, path: Path, size: int, *, boundary: str | None = None) -> None:
        self.path = path
        self.size = size
        self.boundary = boundary or secrets.token_hex(16)
        filename = "recording" + path.suffix.lower()
        self._head = (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type_for(path)}\r\n\r\n"
        ).encode("ascii")
        self._tail = f"\r\n--{self.boundary}--\r\n".encode("ascii")

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def content_length(self) -> int:
        return len(self._head) + self.size + len(self._tail)

    async def body(self, progress: Progress | None = None) -> AsyncIterator[bytes]:
        """The body, reading the file as it goes; the file must still have ``size`` bytes."""
        yield self._head
        sent = 0
        with self.path.open("rb") as file:
            while sent < self.size:
                # Reads go to a worker thread: a slow SD card must not stall the event loop.
                chunk = await asyncio.to_thread(file.read, min(CHUNK_BYTES, self.size - sent))
                if not chunk:
                    raise InputError(f"{self.path} shrank while it was being uploaded")
                sent += len(chunk)
                yield chunk
                if progress is not None:
                    progress(sent, self.size)
        yield self._tail
