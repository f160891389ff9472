"""Sealed recordings on disk: age files (:mod:`agent.archive.age`) holding a visit's WAV, MP3 or an operator's copy.

* :class:`SealedAppender` seals plaintext as it comes: every full 64 KiB chunk is sealed and written at once (its
  own ``pwrite`` at its own offset, so a retry after a failed write lands exactly where it belongs); only the
  unsealed tail (less than 64 KiB, 2.048 s of 16 kHz s16) is in memory, which is all a kill -9 can cost.
* :func:`open_plain` reads a recording's plaintext back (sealed or not, judged by content), chunk by chunk: a
  chunk that does not authenticate raises :class:`~agent.errors.DamagedRecordingError` naming the file and the
  chunk, before any of its bytes are returned. A visit archive's streaming WAV header (sizes 0xFFFFFFFF: they were
  not known when chunk 0 was sealed, and chunk 0 is never sealed twice with other content) is replaced by the
  exact header on the way out, so uploads and exports carry the WAV the agent has always produced.
* :func:`plain_size` (no key needed) and :func:`plain_digest` give what an upload sends and its SHA-256.
* :func:`destroy` overwrites the header (the only copy of the visit's file key, wrapped) before unlinking.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent import BYTES_PER_SAMPLE, SAMPLE_RATE
from agent.archive import age
from agent.archive.age import CHUNK, SEALED_CHUNK, Identity, Payload, Recipient
from agent.archive.wavfmt import HEADER_BYTES, STREAMING_HEADER, wav_header
from agent.errors import ConfigError, DamagedRecordingError, WrongKeyError

log = logging.getLogger(__name__)

READ_BLOCK = 1024 * 1024


def is_sealed_bytes(head: bytes) -> bool:
    return head.startswith(age.MAGIC)


def is_sealed(path: Path) -> bool:
    """True if ``path`` is an age file (by content; a missing or unreadable file is not)."""
    try:
        with open(path, "rb") as f:
            return is_sealed_bytes(f.read(len(age.MAGIC)))
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class PlainDigest:
    """What uploading a recording sends: its plaintext size and SHA-256 (exact WAV header included)."""

    size: int
    sha256: str


# --- writing ------------------------------------------------------------------------------------------------


class SealedAppender:
    """Seals an append-only plaintext stream into the age file open on ``fd`` (see module doc). Not thread-safe."""

    def __init__(self, fd: int, recipient: Recipient) -> None:
        self.fd = fd
        self._prologue, self._payload = age.new_file(recipient)
        self._tail = bytearray()
        self._last_plain = b""
        self.chunks = 0
        """Whole chunks on disk (not counting a final short one)."""
        self.plain_bytes = 0
        """Plaintext accepted (on disk sealed, or in the tail)."""
        self.unsynced = False
        """A chunk was written since the last :meth:`mark_synced`."""

    @property
    def payload(self) -> Payload:
        return self._payload

    @property
    def data_start(self) -> int:
        """File offset of chunk 0."""
        return len(self._prologue)

    @property
    def file_end(self) -> int:
        """File offset just after the whole chunks on disk."""
        return self.data_start + self.chunks * SEALED_CHUNK

    @property
    def pending(self) -> int:
        """Plaintext bytes not sealed on disk yet."""
        return len(self._tail)

    def begin(self) -> None:
        """Write the header and payload nonce (the caller fsyncs)."""
        _pwrite_all(self.fd, self._prologue, 0)

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Accept ``data``; seal and write every chunk that is full. OSError from a write leaves the data accepted
        (in the tail) and the file ending at its last whole chunk plus, maybe, a torn piece: :meth:`drop_torn`."""
        self._tail += data
        self.plain_bytes += len(data)
        self.write_full_chunks()

    def write_full_chunks(self) -> None:
        while len(self._tail) >= CHUNK:
            plain = bytes(self._tail[:CHUNK])
            # A retry seals the same plaintext under the same nonce: the same bytes again, never other content.
            _pwrite_all(self.fd, self._payload.seal(self.chunks, plain, last=False), self.file_end)
            del self._tail[:CHUNK]
            self.chunks += 1
            self._last_plain = plain
            self.unsynced = True

    def drop_torn(self) -> None:
        """Cut whatever a failed write left after the last whole chunk (shrinking needs no free space)."""
        os.ftruncate(self.fd, self.file_end)

    def discard_pending(self, keep: int = 0) -> int:
        """Drop the plaintext not sealed on disk but its first ``keep`` bytes (writing stopped: the file's content is
        what counts from now on). Returns the bytes dropped."""
        dropped = max(0, len(self._tail) - keep)
        del self._tail[len(self._tail) - dropped :]
        self.plain_bytes -= dropped
        return dropped

    def reserve(self, more_plain: int) -> None:
        """Reserve the blocks that the tail plus ``more_plain`` bytes will take (OSError if they do not fit)."""
        os.posix_fallocate(self.fd, self.file_end, age.sealed_bytes(len(self._tail) + more_plain))

    def finish(self) -> None:
        """Seal the tail as the final chunk (or mark the last whole chunk final when the tail is empty) and cut
        anything after it. OSError (disk full) leaves the file as it was: see :meth:`finish_in_place`."""
        self.write_full_chunks()
        if self._tail or self.chunks == 0:
            final = self._payload.seal(self.chunks, self._tail, last=True)
            _pwrite_all(self.fd, final, self.file_end)
            end = self.file_end + len(final)
            self._tail = bytearray()
        else:
            self._reseal_last_as_final()
            end = self.file_end
        os.ftruncate(self.fd, end)

    def finish_in_place(self) -> int:
        """Finish without any free space: the last whole chunk on disk becomes the final one, the unsealed tail is
        dropped. Returns the plaintext bytes dropped."""
        dropped = len(self._tail)
        self._tail = bytearray()
        self.plain_bytes -= dropped
        if self.chunks:
            self._reseal_last_as_final()
            os.ftruncate(self.fd, self.file_end)
            return dropped
        # No chunk reached the disk: an empty final chunk (16 bytes, usually within the header's block) makes it a
        # complete file of no audio; if even that does not fit, repair does the same later.
        os.ftruncate(self.fd, self.file_end)
        _pwrite_all(self.fd, self._payload.seal(0, b"", last=True), self.file_end)
        return dropped

    def _reseal_last_as_final(self) -> None:
        # Same plaintext, same counter, the final flag: a nonce this file has never used (the flag is set once).
        index = self.chunks - 1
        offset = self.data_start + index * SEALED_CHUNK
        _pwrite_all(self.fd, self._payload.seal(index, self._last_plain, last=True), offset)

    def mark_synced(self) -> None:
        self.unsynced = False


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


# --- reading ------------------------------------------------------------------------------------------------


class SealedFile:
    """An open age file whose payload key is known: its chunks, checked one by one."""

    def __init__(self, fd: int, name: str, payload: Payload, data_start: int) -> None:
        self.fd = fd
        self.name = name
        self.payload = payload
        self.data_start = data_start

    @classmethod
    def open(cls, fd: int, name: str, identity: Identity) -> SealedFile:
        head = os.pread(fd, age.MAX_HEADER + age.PAYLOAD_NONCE, 0)
        try:
            header = age.parse_header(head)
            file_key = age.open_header(header, identity)
        except age.NoMatchingKey as exc:
            raise WrongKeyError(f"{name}: {exc}; this device's key cannot open it") from None
        except age.AgeError as exc:
            raise DamagedRecordingError(f"{name}: {exc}: the whole recording is unreadable (its key is in the "
                                        "header)") from None  # fmt: skip
        nonce = head[header.length : header.length + age.PAYLOAD_NONCE]
        if len(nonce) < age.PAYLOAD_NONCE:
            raise DamagedRecordingError(f"{name}: cut off after its header: it holds no audio")
        return cls(fd, name, Payload(file_key, nonce), header.length + age.PAYLOAD_NONCE)

    def layout(self) -> tuple[int, int]:
        """(chunks, plaintext bytes) by the file's length; DamagedRecordingError if no complete file is that long."""
        payload_bytes = os.fstat(self.fd).st_size - self.data_start
        try:
            return age.chunk_layout(payload_bytes)
        except age.AgeError:
            raise DamagedRecordingError(f"{self.name}: cut off inside its last chunk (truncated)") from None

    def chunk(self, index: int, *, last: bool) -> bytes:
        sealed = os.pread(self.fd, SEALED_CHUNK, self.data_start + index * SEALED_CHUNK)
        return self.payload.open(index, sealed, last=last)

    def plaintext(self) -> Iterator[bytes]:
        """Every chunk's plaintext in order; DamagedRecordingError at the first one that does not authenticate."""
        chunks, _ = self.layout()
        for index in range(chunks):
            try:
                yield self.chunk(index, last=index == chunks - 1)
            except age.ChunkError:
                raise DamagedRecordingError(describe_damage(self.name, index, chunks)) from None


def describe_damage(name: str, index: int, chunks: int) -> str:
    """``visit-X.wav: chunk 5 of 57 (about 10.24-12.29 s) fails authentication ...``: the line a person sees."""
    start, end = chunk_seconds(index)
    where = f"chunk {index + 1} of {chunks} (about {start:.2f}-{end:.2f} s)"
    ending = " or is not the final chunk (cut off after it?)" if index == chunks - 1 else ""
    return (f"{name}: {where} fails authentication{ending}: damaged, cut or altered; not used as a whole "
            "recording ('medisync-agent repair' keeps the intact part)")  # fmt: skip


def chunk_seconds(index: int) -> tuple[float, float]:
    """Audio seconds a chunk of a visit archive holds (its WAV header is the first 44 bytes of chunk 0)."""
    bytes_per_s = SAMPLE_RATE * BYTES_PER_SAMPLE
    return max(0, index * CHUNK - HEADER_BYTES) / bytes_per_s, max(0, (index + 1) * CHUNK - HEADER_BYTES) / bytes_per_s


def exact_wav(chunks: Iterator[bytes], plain_bytes: int) -> Iterator[bytes]:
    """``chunks`` with a visit archive's streaming header replaced by the exact one (other content unchanged)."""
    first = True
    for chunk in chunks:
        if first and chunk[:HEADER_BYTES] == STREAMING_HEADER and plain_bytes - HEADER_BYTES <= 0xFFFFFFFF - 36:
            chunk = wav_header(plain_bytes - HEADER_BYTES) + chunk[HEADER_BYTES:]
        first = False
        yield chunk


class _ChunkReader(io.RawIOBase):
    def __init__(self, fd: int, chunks: Iterator[bytes]) -> None:
        self._fd: int | None = fd
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buffer = nxt
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        super().close()


def open_plain(path: Path, identity: Identity | None) -> io.BufferedReader:
    """The plaintext of a recording, sealed or not (exact WAV header restored); read it like a file.

    Raises ConfigError if it is sealed and no identity is given, WrongKeyError, DamagedRecordingError (also
    while reading, at the first chunk that does not authenticate), OSError for the file itself."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not is_sealed_bytes(os.pread(fd, len(age.MAGIC), 0)):
            return io.BufferedReader(_ChunkReader(fd, _plain_blocks(fd)), READ_BLOCK)
        if identity is None:
            raise ConfigError(f"{path.name} is sealed (encrypted) and no device key is loaded to open it")
        sealed = SealedFile.open(fd, path.name, identity)
        _, plain_bytes = sealed.layout()
        return io.BufferedReader(_ChunkReader(fd, exact_wav(sealed.plaintext(), plain_bytes)), READ_BLOCK)
    except BaseException:
        os.close(fd)
        raise


def _plain_blocks(fd: int) -> Iterator[bytes]:
    offset = 0
    while block := os.pread(fd, READ_BLOCK, offset):
        offset += len(block)
        yield block


def plain_size(path: Path) -> int:
    """Bytes of plaintext (what an upload sends) of a complete recording, sealed or not; no key needed.

    ArchiveError if it is sealed and its length cannot be a complete age file."""
    with open(path, "rb") as f:
        head = f.read(age.MAX_HEADER + age.PAYLOAD_NONCE)
        size = os.fstat(f.fileno()).st_size
    if not is_sealed_bytes(head):
        return size
    try:
        header = age.parse_header(head)
        return age.chunk_layout(size - header.length - age.PAYLOAD_NONCE)[1]
    except age.AgeError as exc:
        raise DamagedRecordingError(f"{path.name}: {exc}") from None


def plain_digest(path: Path, identity: Identity | None) -> PlainDigest:
    """Size and SHA-256 of the plaintext an upload of ``path`` sends (every chunk checked on the way)."""
    digest, size = hashlib.sha256(), 0
    with open_plain(path, identity) as reader:
        while block := reader.read(READ_BLOCK):
            digest.update(block)
            size += len(block)
    return PlainDigest(size, digest.hexdigest())


def destroy(path: Path) -> None:
    """Delete a recording; for a sealed one, overwrite its header first (the wrapped file key: without it the
    payload cannot be opened by anyone, whatever copy of the blocks flash wear levelling keeps)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        head = os.pread(fd, age.MAX_HEADER + age.PAYLOAD_NONCE, 0)
        if is_sealed_bytes(head):
            try:
                length = age.parse_header(head).length + age.PAYLOAD_NONCE
            except age.AgeError:
                length = min(len(head), age.MAX_HEADER)
            _pwrite_all(fd, os.urandom(length), 0)
            os.fsync(fd)
    except OSError as exc:
        log.warning("could not overwrite the key header of %s before deleting it: %s", path.name, exc.strerror)
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)


def require_identity(identity: Identity | None, what: str) -> Identity:
    if identity is None:
        raise ConfigError(f"{what} needs the device key (archive.key_file or the systemd credential 'archive-key')")
    return identity

