"""The visit's archive writer: a full disk or a failing card stops the archive, never the visit.

:class:`ResilientArchiveWriter` is a :class:`~agent.archive.wav.WavArchiveWriter` whose write errors (disk full,
quota, read-only remount, I/O error) do not raise:

* Writing *stops*. The file is cut to the last whole sample that reached the disk and its header fixed (neither
  needs free space), so the ``.partial`` (still locked by this writer) is a valid WAV of everything written.
  One WARNING line says so.
* The frames handed in meanwhile only advance :attr:`~ResilientArchiveWriter.position`, the visit timeline, which
  the live stream keeps using: capture and stream go on.
* At most once per :data:`PROBE_INTERVAL_S` (never per frame) the next frames are tried again. Writing resumes
  only if the silence for the missing stretch can be written too, so that the archive's sample index keeps
  equalling the visit timeline: the silence and the waiting frames are reserved with ``posix_fallocate`` (reserved
  blocks read as zeros, so the silence costs no write), with :data:`RESUME_HEADROOM_BYTES` free beyond them. If that
  does not fit, the archive stays stopped and the missing stretch grows; the reservation needed grows with it
  (32 kB per second), which is the price of one timeline: a second file, or an archive without the silence, would
  make archive times differ from transcript times. One WARNING line marks the resumption.
* Sealed archives (:class:`~agent.archive.sealed_writer.ResilientSealedWriter`) follow the same policy through the
  writer's hooks; their silence is sealed and written into the reserved blocks (zeros are not sealed silence), and
  the archive stops at its last whole chunk on disk.
* :attr:`~ResilientArchiveWriter.missing` lists the stretches (filled with silence, or open until the visit's end);
  :attr:`~ResilientArchiveWriter.health` is what status and metrics show.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import BYTES_PER_SAMPLE, SAMPLE_RATE
from agent.archive.storage import describe_os_error
from agent.archive.wav import WavArchiveWriter
from agent.audio.types import Frame
from agent.settings import ArchiveSettings

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0
"""While the archive cannot be written: seconds between attempts to write again."""
RESUME_HEADROOM_BYTES = 5 * SAMPLE_RATE * BYTES_PER_SAMPLE
"""Free space wanted beyond the silence and the waiting frames before writing resumes (5 s of audio), so that a
disk with a few blocks free does not stop and resume the archive every second."""


@dataclass(frozen=True, slots=True)
class MissingStretch:
    """A stretch of the visit timeline (16 kHz sample indices) that the archive could not hold."""

    start: int
    end: int
    """One past the last missing sample; the visit's end when writing never resumed."""
    reason: str
    """Why writing stopped ("disk full", "input/output error", ...): no paths, no patient data."""
    filled: bool
    """True: writing resumed and the stretch is silence in the archive (the timeline is kept).
    False: writing never resumed; the archive ends at ``start``."""

    @property
    def samples(self) -> int:
        return self.end - self.start

    def describe(self) -> str:
        """``12.34-56.78 s (disk full), silence in the recording`` for a person."""
        where = "silence in the recording" if self.filled else "not in the recording"
        return f"{self.start / SAMPLE_RATE:.2f}-{self.end / SAMPLE_RATE:.2f} s ({self.reason}), {where}"


@dataclass(frozen=True, slots=True)
class ArchiveHealth:
    """The archive's state now (read from other threads by the daemon's status and metrics)."""

    writable: bool = True
    """False while writing is stopped (disk full, I/O error)."""
    missing_samples: int = 0
    """Timeline samples missing from the archive so far (stretches closed and open)."""
    reason: str = ""
    """Why writing stopped, for the current or last stop; empty if it never did."""


@dataclass(slots=True)
class _Outage:
    start: int
    """Archived samples when writing stopped: the first missing timeline index."""
    reason: str
    next_probe: float
    """Clock time of the next attempt to write again."""


class ResilientArchiveWriter(WavArchiveWriter):
    """A WAV archive writer that stops and resumes on write errors instead of raising (module doc).

    ``clock`` (monotonic seconds) paces the attempts to write again.
    """

    def __init__(self, final: Path, fd: int, settings: ArchiveSettings, *, background_sync: bool = False,
                 clock: Callable[[], float] = time.monotonic, **options: Any) -> None:  # fmt: skip
        super().__init__(final, fd, settings, background_sync=background_sync, **options)  # (a sealed file's key)
        self._clock = clock
        self._outage: _Outage | None = None
        self._closed_stretches: list[MissingStretch] = []
        self._timeline_end = 0

    @property
    def position(self) -> int:
        """Timeline index one past the last sample handed in, whether it reached the archive or not (also after
        :meth:`finish`: the visit's length)."""
        return max(self.archived_samples, self._timeline_end)

    @property
    def writable(self) -> bool:
        return self._outage is None

    @property
    def missing(self) -> tuple[MissingStretch, ...]:
        """Stretches of the timeline missing from the archive, in order; an open one ends at :attr:`position`."""
        outage = self._outage
        if outage is None:
            return tuple(self._closed_stretches)
        return (*self._closed_stretches, MissingStretch(outage.start, self.position, outage.reason, False))

    @property
    def health(self) -> ArchiveHealth:
        missing = self.missing
        return ArchiveHealth(writable=self._outage is None, missing_samples=sum(m.samples for m in missing),
                             reason=missing[-1].reason if missing else "")  # fmt: skip

    def write_frames(self, frames: Sequence[Frame]) -> None:
        self._require_open()
        if not frames:
            return
        position = self.position
        if frames[0].start < position:
            raise ValueError(f"frame at {frames[0].start} overlaps the timeline, which is at {position}")
        last = frames[-1]
        end = last.start + len(last.pcm) // BYTES_PER_SAMPLE
        if self._outage is None:
            try:  # = WavArchiveWriter.write_frames, one call layer less per block
                self._write_run(frames)
            except OSError as exc:
                self._fault(exc, end)
        else:
            self._write_during_outage(frames)
        if end > self._timeline_end:
            self._timeline_end = end

    def write_silence(self, samples: int) -> None:
        self._require_open()
        end = self.position + samples
        if self._outage is None:
            super().write_silence(samples)
        self._timeline_end = max(self._timeline_end, end)

    # -- hooks ---------------------------------------------------------------------------------------------------

    def _fault(self, exc: OSError, timeline_end: int) -> None:
        """Keep what reached the disk as a valid WAV (still the locked ``.partial``) and stop writing."""
        self._require_open()
        reason = describe_os_error(exc)
        self._drop_syncs()
        whole = self._data_bytes - self._data_bytes % BYTES_PER_SAMPLE
        unsealed = ""
        try:
            self._stop_writing(whole)  # sets _data_bytes to what the file keeps
        except OSError as seal_exc:
            unsealed = f" (the file could not be settled: {describe_os_error(seal_exc)}; repair fixes it later)"
            self._data_bytes = whole
        at = self._data_bytes // BYTES_PER_SAMPLE
        self._timeline_end = max(self._timeline_end, timeline_end)
        self._outage = _Outage(start=at, reason=reason, next_probe=self._clock() + PROBE_INTERVAL_S)
        log.warning("archive %s stopped at %.2f s of the visit (%s): the %.2f s written are kept%s; capture and the "
                    "live stream go on, writing is tried again every %.0f s", self.final.name, at / SAMPLE_RATE,
                    reason, at / SAMPLE_RATE, unsealed, PROBE_INTERVAL_S)  # fmt: skip

    def _seal_final(self) -> None:
        if self._outage is None:
            super()._seal_final()  # a failure there stops writing (sealed by _fault) like any other
        if self._outage is not None:  # sealed when writing stopped; the open stretch ends with the visit
            self._close_after_outage()
            self._outage.start = min(self._outage.start, self.archived_samples)  # a sealed tail may be dropped
            self._closed_stretches = list(self.missing)
            self._outage = None

    # -- internals -----------------------------------------------------------------------------------------------

    def _write_during_outage(self, frames: Sequence[Frame]) -> None:
        outage = self._outage
        assert outage is not None
        now = self._clock()
        if now < outage.next_probe:
            return
        outage.next_probe = now + PROBE_INTERVAL_S
        resume_at = frames[0].start
        if not self._reserve((frames[-1].end - self.archived_samples) * BYTES_PER_SAMPLE):
            return
        self._skip_to(resume_at * BYTES_PER_SAMPLE)  # the missing stretch becomes silence in the file
        stretch = MissingStretch(outage.start, resume_at, outage.reason, filled=True)
        self._closed_stretches.append(stretch)
        self._outage = None
        log.warning("archive %s resumed at %.2f s of the visit: %.2f s (%.2f-%.2f s) are missing, silence in the "
                    "archive keeps the visit's timeline", self.final.name, resume_at / SAMPLE_RATE,
                    stretch.samples / SAMPLE_RATE, stretch.start / SAMPLE_RATE, resume_at / SAMPLE_RATE)  # fmt: skip
        super().write_frames(frames)

    def _reserve(self, nbytes: int) -> bool:
        """Reserve ``nbytes`` after the archived data if they and the headroom fit; if not, the file is unchanged."""
        fd = self._require_open()
        try:
            fs = os.fstatvfs(fd)
            if fs.f_bavail * fs.f_frsize < nbytes + RESUME_HEADROOM_BYTES:
                return False
            self._reserve_space(nbytes)
        except OSError as exc:
            log.debug("archive %s still not writable: %s", self.final.name, describe_os_error(exc))
            try:
                self._drop_reservation()  # drop a partial reservation; shrinking needs no space
            except OSError as trunc_exc:
                log.debug("archive %s: cannot drop the reservation: %s", self.final.name, describe_os_error(trunc_exc))
            return False
        return True
