"""The event stream's adapter: publishes :class:`~agent.events.StateEvent` lines to control socket followers.

A ``{"cmd": "follow"}`` request turns its connection into a one-way stream: the first line is the current state,
then one line per change (:mod:`agent.events`). Several followers may follow at once (up to ``max_followers``).
Publishing never waits for a follower: each has a bounded queue of ``queue_lines`` lines; one that falls that far
behind (it stopped reading, or reads too slowly) is dropped and its connection aborted, with one WARNING line.
When the daemon stops, every follower gets a last line ``{"ok": false, "error": "the daemon is stopping"}``.
A follower ends its stream by closing its end (or by sending anything: a stream takes no further requests).

Listeners (the hook runner) get every event too, synchronously and without waiting: they must only queue it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from agent.control import DaemonStatus, encode_response, failure
from agent.events import Facts, StateEvent, StateTracker, encode_event

log = logging.getLogger(__name__)

MAX_FOLLOWERS = 16
"""Followers served at once; one more gets an error answer."""
QUEUE_LINES = 64
"""Lines a follower may fall behind before it is dropped."""
STOPPING_LINE = encode_response(failure("the daemon is stopping"))


def facts_of(status: DaemonStatus, *, visit_failed: bool, uploads_unreachable: bool,
             upload_due: bool = False) -> Facts:  # fmt: skip
    """The daemon's facts from its status and the flags status does not carry; ``upload_due``: an item surely waits
    (a visit was just queued, or the last pass failed on one) though the queue count, every 2 s (4 s during a visit),
    may not show it. The microphone's problems (``silent``, ``clipping``, ...) become the warnings ``mic_silent``,
    ``mic_clipping``."""
    worker = status.upload_worker
    return Facts(
        daemon_state=status.state,
        connection=status.connection,
        reconnects=status.reconnects,
        device_lost=status.device_state == "lost",
        archive_writable=status.archive_writable,
        worker_problem=worker if worker.startswith("restarting") else "",
        visit_failed=visit_failed,
        upload_queue=max(status.upload_queue, 1 if upload_due else 0),
        uploads_unreachable=uploads_unreachable,
        warnings=frozenset(f"mic_{problem}" for problem in status.mic_problems),
        session_id=status.session_id,
    )


class Follower:
    """One follower's bounded line queue; ``abort`` cuts its connection (never waits)."""

    def __init__(self, limit: int, abort: Callable[[], None]) -> None:
        self._lines: deque[bytes] = deque()
        self._limit = limit
        self._abort = abort
        self._wake = asyncio.Event()
        self.ended = False

    def offer(self, line: bytes) -> bool:
        """Queue ``line``; False (and the follower ended and aborted) when it is ``limit`` lines behind."""
        if self.ended:
            return True
        if len(self._lines) >= self._limit:
            self.cut()
            return False
        self._lines.append(line)
        self._wake.set()
        return True

    def cut(self) -> None:
        """End now: queued lines are dropped and the connection aborted."""
        self.ended = True
        self._lines.clear()
        self._wake.set()
        self._abort()

    def finish(self, last: bytes | None = None) -> None:
        """End after the queued lines (and ``last``, if given) are written."""
        if last is not None and not self.ended:
            self._lines.append(last)
        self.ended = True
        self._wake.set()

    async def next_line(self) -> bytes | None:
        """The next line to write; None when the follower has ended and nothing is left."""
        while not self._lines:
            if self.ended:
                return None
            self._wake.clear()
            await self._wake.wait()
        return self._lines.popleft()


class EventHub:
    def __init__(self, facts: Callable[[], Facts], clock: Callable[[], float], *,
                 max_followers: int = MAX_FOLLOWERS, queue_lines: int = QUEUE_LINES) -> None:  # fmt: skip
        self._facts = facts
        self._tracker = StateTracker(clock)
        self._followers: set[Follower] = set()
        self._max_followers = max_followers
        self._queue_lines = queue_lines
        self._done = asyncio.Event()
        self._done.set()
        self._stopping = False
        self.listeners: list[Callable[[StateEvent], None]] = []
        self.dropped = 0
        """Followers dropped for falling behind, since the daemon started."""

    @property
    def followers(self) -> int:
        return len(self._followers)

    def refresh(self, facts: Facts | None = None) -> StateEvent:
        """Look at the facts (``facts``, or asked for now); publish an event if the visible state changed. Returns
        the current event."""
        event = self._tracker.observe(self._facts() if facts is None else facts)
        if event is not None:
            self._publish(event)
        current = self._tracker.current
        assert current is not None
        return current

    def _publish(self, event: StateEvent) -> None:
        line = encode_event(event)
        for follower in list(self._followers):
            if not follower.offer(line):
                self._followers.discard(follower)
                self.dropped += 1
                log.warning("dropped an event stream follower that fell %d lines behind (it stopped reading)",
                            self._queue_lines)  # fmt: skip
        for listener in self.listeners:
            listener(event)

    async def follow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one follower until it hangs up, falls behind, or the daemon stops."""
        if self._stopping or len(self._followers) >= self._max_followers:
            why = "the daemon is stopping" if self._stopping else f"too many followers (at most {self._max_followers})"
            writer.write(encode_response(failure(why)))
            await writer.drain()
            return
        follower = Follower(self._queue_lines, writer.transport.abort)
        follower.offer(encode_event(self.refresh()))
        self._followers.add(follower)
        self._done.clear()
        hangup = asyncio.create_task(self._watch_hangup(reader, follower), name="follower-hangup")
        try:
            while (line := await follower.next_line()) is not None:
                writer.write(line)
                await writer.drain()
        except ConnectionError as exc:  # it hung up, or was cut for falling behind: nothing to tell it
            log.debug("event stream follower gone: %s", type(exc).__name__)
        finally:
            hangup.cancel()
            await asyncio.gather(hangup, return_exceptions=True)
            self._followers.discard(follower)
            if not self._followers:
                self._done.set()

    @staticmethod
    async def _watch_hangup(reader: asyncio.StreamReader, follower: Follower) -> None:
        """A follower sends nothing more; its end of file (or anything it sends) ends the stream."""
        with contextlib.suppress(ConnectionError):
            await reader.read(1)
        follower.finish()

    async def close(self, wait_s: float) -> None:
        """At shutdown: tell every follower, give them ``wait_s`` seconds to take the last line, cut the rest."""
        self._stopping = True
        for follower in list(self._followers):
            follower.finish(STOPPING_LINE)
        try:
            async with asyncio.timeout(max(0.0, wait_s)):  # not wait_for: on 3.11 it can lose a cancellation
                await self._done.wait()
        except TimeoutError:
            log.warning("%d event stream follower(s) did not take the last line in time", len(self._followers))
            for follower in list(self._followers):
                follower.cut()
