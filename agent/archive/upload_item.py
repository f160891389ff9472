"""One upload queue item as stored on disk (msgspec JSON), and its audio as an upload sends it.

The queue itself (folder layout, locking, dead letters) is :mod:`agent.archive.upload_queue`.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import msgspec

from agent.archive.keys import ArchiveKeys
from agent.archive.sealed import is_sealed, open_plain, plain_size
from agent.archive.storage import sha256_file
from agent.archive.upload_policy import ItemState
from agent.errors import ArchiveError


class UploadItem(msgspec.Struct, kw_only=True):
    item_id: str
    """Random uuid (32 hex digits); also the item's file name, which wins if the two differ."""
    appointment_id: str
    audio_path: str
    """The file that is uploaded (the visit WAV, or its MP3 encoding when the WAV is over the limit)."""
    source_path: str = ""
    """The original WAV when ``audio_path`` is its MP3 encoding, else empty; deleted together with it."""
    sha256: str
    """Hex SHA-256 of what uploading ``audio_path`` sends (for a sealed file: its plaintext, recorded when the visit
    was finished or the file was checked; the "already exists" comparison uses it)."""
    size: int
    """Bytes that uploading ``audio_path`` sends (for a sealed file: its plaintext)."""
    created_at: float
    """Enqueue time, seconds since the epoch."""
    state: ItemState = ItemState.PENDING
    attempts: int = 0
    """Failed attempts so far."""
    next_attempt_at: float = 0.0
    """Seconds since the epoch; pending and blocked items are tried from then on."""
    last_error: str = ""
    """Fixed description of the last failure (never server text, never PHI or secrets)."""
    uploaded_at: float | None = None
    """When MediSync confirmed the recording, seconds since the epoch."""
    recording_id: str = ""
    """MediSync's ``_id`` of the stored recording."""
    dead_reason: str = ""
    held: bool = False
    """Queued while its visit is still recording (the archive stopped on a full disk and the part already on disk
    was queued at once): ``size`` and ``sha256`` are not known yet and nothing is uploaded. :meth:`UploadQueue.release`
    clears it once no recorder holds the file (at the visit's end, or after a crash)."""
    owned: bool = False
    """The agent created ``audio_path`` (a visit archive, a copy of an operator's file): only then may it move or
    delete it. False for items of older versions, which might point at an operator's own file."""


item_encoder = msgspec.json.Encoder()
item_decoder = msgspec.json.Decoder(UploadItem)

sha256_of = sha256_file


class QueuedAudio:
    """An item's audio as its upload sends it (``agent.api.multipart.AudioBody``): a sealed file is decrypted while
    it streams, and its plaintext must match the digest the item recorded (the body is aborted before its end if
    not). A plaintext file is sent as it is, and hashed from disk when "already exists" needs its digest."""

    def __init__(self, path: Path, size: int, sha256: str, keys: ArchiveKeys | None) -> None:
        self.path = path
        self.size = size
        self.sha256: str | None = (sha256 or None) if is_sealed(path) else None
        self._keys = keys

    def open(self) -> BinaryIO:
        return open_plain(self.path, self._keys.identity if self._keys is not None else None)


def uploadable_size(path: Path) -> int | None:
    """Bytes an upload of ``path`` sends (plaintext), None if a sealed file's length is not a complete file."""
    try:
        return plain_size(path)
    except (ArchiveError, OSError):
        return None
