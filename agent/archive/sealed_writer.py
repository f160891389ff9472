"""The visit archive sealed at rest: the WAV writer's timeline, durability and disk-full policy over an age file.

:class:`SealedArchiveWriter` is a :class:`~agent.archive.wav.WavArchiveWriter` whose bytes go through a
:class:`~agent.archive.sealed.SealedAppender` (a fresh file key per visit, sealed to the device's public recipient:
recording never needs the private key). Differences from the plaintext writer, and why:

* The WAV header inside is the streaming one (sizes 0xFFFFFFFF), never rewritten: chunk 0 is sealed once, and
  sealing it again with other content under the same nonce would leak both. Readers restore the exact header
  (:func:`~agent.archive.sealed.open_plain`), so uploads and exports are the WAV the agent always produced.
* A kill -9 loses the unsealed tail (under 64 KiB, 2.048 s of audio); the once-a-second ``fdatasync`` makes the
  sealed chunks durable, so a power loss costs at most about one more second.
* When it finishes, the writer reads its own chunks back with the file key it still holds (no private key, no
  plaintext on disk) and records the size and SHA-256 of the exact WAV: :attr:`digest`, what the upload's
  "already exists" check compares with.
* Disk full: the archive holds what is sealed on disk (whole chunks); the chunk that could not be written and the
  tail are dropped, so the missing stretch starts where the file ends (up to about 4 s earlier than a plaintext
  archive's would). The resilient variant stops and resumes as for plaintext, writing sealed silence for the
  missing stretch; finishing on a full disk makes the last whole chunk on disk the final one.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from agent import BYTES_PER_SAMPLE, SAMPLE_RATE
from agent.archive.age import Recipient
from agent.archive.resilient import ResilientArchiveWriter
from agent.archive.sealed import PlainDigest, SealedAppender, SealedFile, exact_wav
from agent.archive.storage import describe_os_error
from agent.archive.wav import WavArchiveWriter
from agent.archive.wavfmt import HEADER_BYTES, STREAMING_HEADER
from agent.errors import AgentError
from agent.settings import ArchiveSettings

log = logging.getLogger(__name__)


class SealedArchiveWriter(WavArchiveWriter):
    """A WAV archive writer that seals everything it writes (module doc). Create with ``recipient=``."""

    def __init__(self, final: Path, fd: int, settings: ArchiveSettings, *, background_sync: bool = False,
                 recipient: Recipient) -> None:  # fmt: skip
        super().__init__(final, fd, settings, background_sync=background_sync)
        self._body = SealedAppender(fd, recipient)

    def _begin(self) -> None:
        self._body.begin()
        self._body.append(STREAMING_HEADER)  # plaintext: sealed with the first 64 KiB

    def _append(self, pcm: bytes) -> None:
        fd = self._require_open()
        if self._syncs:
            self._check_syncs(wait_all=False)
        self._data_bytes += len(pcm)  # accepted: sealed on disk, or in the tail (also when the write below fails)
        self._body.append(pcm)
        if self._data_bytes >= self._next_sync:
            if self._body.unsynced:
                self._sync(fd)
                self._body.mark_synced()
            else:
                self._next_sync = (self._data_bytes // self._sync_every + 1) * self._sync_every

    def _seal_final(self) -> None:
        fd = self._require_open()
        try:
            self._check_syncs(wait_all=True)
            self._body.finish()
            os.fsync(fd)
        except OSError as exc:
            self._fault(exc, self.position)
            return
        self._record_digest()

    def _settle_after_error(self, whole: int) -> None:
        self._finish_as_far_as_possible()

    def _stop_writing(self, whole: int) -> None:
        # What is sealed on disk is what the archive holds from here on (the timeline's missing stretch starts
        # there): the chunk that could not be written and the tail are dropped, chunk 0's WAV header excepted.
        self._body.drop_torn()
        self._body.discard_pending(keep=HEADER_BYTES if self._body.chunks == 0 else 0)
        self._data_bytes = self._kept_pcm()
        os.fdatasync(self._require_open())

    def _reserve_space(self, nbytes: int) -> None:
        self._body.reserve(nbytes)

    def _drop_reservation(self) -> None:
        self._body.drop_torn()

    def _skip_to(self, data_bytes: int) -> None:
        # Zero blocks are not sealed silence: the silence is sealed and written (into the reserved blocks).
        self._append_silence((data_bytes - self._data_bytes) // BYTES_PER_SAMPLE)

    def _close_after_outage(self) -> None:
        try:
            self._finish_as_far_as_possible()
        except OSError as exc:
            log.error("archive %s could not be finished (%s): 'medisync-agent repair' keeps its whole chunks",
                      self.final.name, describe_os_error(exc))  # fmt: skip

    def _finish_as_far_as_possible(self) -> None:
        """Seal the tail as the final chunk; without room for it, make the last chunk on disk the final one."""
        try:
            self._body.finish()
        except OSError as exc:
            dropped = self._body.finish_in_place()
            log.info("archive %s: no room for its last %.2f s (%s); the %.2f s before are kept",
                        self.final.name, dropped / BYTES_PER_SAMPLE / SAMPLE_RATE, describe_os_error(exc),
                        self._kept_pcm() / BYTES_PER_SAMPLE / SAMPLE_RATE)  # fmt: skip
        os.fsync(self._require_open())
        self._data_bytes = self._kept_pcm()
        self._record_digest()

    def _kept_pcm(self) -> int:
        return max(0, self._body.plain_bytes - HEADER_BYTES)

    def _record_digest(self) -> None:
        """Read the sealed file back with the file key this writer holds: the upload's size and SHA-256."""
        sealed = SealedFile(self._require_open(), self.partial.name, self._body.payload, self._body.data_start)
        digest, size = hashlib.sha256(), 0
        try:
            _, plain_bytes = sealed.layout()
            for block in exact_wav(sealed.plaintext(), plain_bytes):
                digest.update(block)
                size += len(block)
        except (AgentError, OSError) as exc:
            log.error("archive %s does not read back as written (%s); its digest is taken when it is queued",
                      self.final.name, exc)  # fmt: skip
            return
        self.digest = PlainDigest(size, digest.hexdigest())


class ResilientSealedWriter(ResilientArchiveWriter, SealedArchiveWriter):
    """The visit's archive: sealed, and a full disk stops it instead of the visit (see both parents)."""
