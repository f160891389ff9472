"""Live streams of ended visits that still replay their backlog, and the totals of streams that are over.

A stopped visit's stream keeps confirming its backlog in the background (``Visit.finish_stream``, bounded by
``stream.drain_max_s``) while the daemon is free for the next visit. :class:`DrainingStreams` holds those tasks by
visit, ends what is left at shutdown with one log line, and keeps the counters of every stream that has ended
(reconnects, bytes sent, archive samples lost) so that totals since the daemon started need no second count.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from agent import SAMPLE_RATE
from agent.visit import Visit

log = logging.getLogger(__name__)


def unconfirmed_s(visit: Visit) -> float:
    """Seconds of ``visit``'s audio its stream holds that the speech server has not confirmed (0 without one)."""
    return visit.stream.stats.held_samples / SAMPLE_RATE if visit.stream is not None else 0.0


@dataclass
class EndedTotals:
    """Counters of visits that are over, read from the visit's own parts once each (never counted a second time)."""

    reconnects: int = 0
    """Speech socket reconnects of ended streams."""
    bytes_sent: int = 0
    """Audio payload bytes ended streams sent."""
    archive_samples_lost: int = 0
    """Timeline samples (16 kHz) missing from ended visits' archives."""
    handoff_samples_dropped: int = 0
    """Source-rate sample frames the visits' capture taps dropped (their consumer fell behind)."""

    def add_stream(self, visit: Visit) -> None:
        if visit.stream is not None:
            self.reconnects += visit.stream.stats.reconnects
            self.bytes_sent += visit.stream.stats.bytes_sent

    def add_archive(self, visit: Visit) -> None:
        self.archive_samples_lost += visit.archive_health.missing_samples


class DrainingStreams:
    def __init__(self, totals: EndedTotals) -> None:
        self._totals = totals
        self._tasks: dict[asyncio.Task[None], Visit] = {}

    @property
    def visits(self) -> list[Visit]:
        return list(self._tasks.values())

    def holds(self, visit: Visit) -> bool:
        return any(v is visit for v in self._tasks.values())

    def unconfirmed_s(self) -> float:
        return sum(unconfirmed_s(v) for v in self._tasks.values())

    def add(self, visit: Visit) -> None:
        """The ended visit's stream confirms its backlog in a background task."""
        task = asyncio.create_task(self._drain(visit), name="stream-drain")
        self._tasks[task] = visit
        task.add_done_callback(lambda t: self._tasks.pop(t, None))

    async def _drain(self, visit: Visit) -> None:
        try:
            confirmed = await visit.finish_stream()
        finally:
            self._totals.add_stream(visit)
        log.info("live stream of the ended visit %s", "confirmed by the server" if confirmed
                 else "not confirmed completely (the queued upload holds the whole visit)")  # fmt: skip

    async def end(self, wait_s: float) -> None:
        """At shutdown: let the draining streams finish within ``wait_s`` seconds, then end the rest."""
        tasks = list(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, wait_s))
        if not pending:
            return
        left_s = sum(unconfirmed_s(self._tasks[t]) for t in pending if t in self._tasks)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        log.warning("stopping: ended %d live stream(s) with %.1f s of audio the speech server had not confirmed; "
                    "the queued uploads hold it", len(pending), left_s)  # fmt: skip
