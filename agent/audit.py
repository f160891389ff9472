"""Compare the audio a server stored with the audio the pipeline produced, sample for sample on the timeline.

Used by the demo's summary and by the tests: "0 lost, 0 duplicated" is measured here, not assumed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class StreamAudit:
    expected_samples: int
    """Samples the voice gate passed (what the server should hold)."""
    stored_samples: int
    """Samples the server holds, counting every copy."""
    lost: int
    """Expected samples the server does not hold."""
    duplicated: int
    """Extra copies of timeline samples the server holds more than once."""
    mismatched: int
    """Samples held at an expected index with different content."""
    unexpected: int
    """Samples held at indices the gate never passed."""

    @property
    def exact(self) -> bool:
        return self.lost == self.duplicated == self.mismatched == self.unexpected == 0


def audit_stream(expected: Iterable[tuple[int, bytes]], stored: Iterable[tuple[int, bytes]]) -> StreamAudit:
    """``expected`` and ``stored`` are (timeline start, s16le PCM) pieces; pieces of ``expected`` never overlap."""
    exp = [(s, np.frombuffer(p, dtype="<i2")) for s, p in expected]
    got = [(s, np.frombuffer(p, dtype="<i2")) for s, p in stored]
    length = max([s + len(a) for s, a in exp + got] or [0])
    want = np.zeros(length, dtype=np.int16)
    wanted = np.zeros(length, dtype=bool)
    for start, samples in exp:
        want[start:start + len(samples)] = samples
        wanted[start:start + len(samples)] = True
    have = np.zeros(length, dtype=np.int16)
    copies = np.zeros(length, dtype=np.int32)
    mismatched = 0
    for start, samples in got:
        end = start + len(samples)
        mismatched += int(np.count_nonzero(wanted[start:end] & (want[start:end] != samples)))
        have[start:end] = samples
        copies[start:end] += 1
    return StreamAudit(
        expected_samples=int(wanted.sum()),
        stored_samples=int(copies.sum()),
        lost=int(np.count_nonzero(wanted & (copies == 0))),
        duplicated=int(np.maximum(copies - 1, 0).sum()),
        mismatched=mismatched,
        unexpected=int(np.count_nonzero(~wanted & (copies > 0))),
    )
