"""SpeechStream: the producer-facing object and the reconnect supervisor (a thin adapter over the session).

The audio thread calls :meth:`SpeechStream.feed` (thread-safe, cheap: appends to an inbox and wakes the event
loop at most once per batch). Everything else runs on the event loop: the inbox is drained into the
:class:`~agent.stream.session.SpeechSession` (pure: every rule of the protocol, the mode, the reconnect policy),
and a supervisor task dials, pumps connections (:func:`~agent.stream.connection.run_connection`) and sleeps as
the session says, for ever. While it waits after the speech host was unreachable it probes the host with a TCP
connect every ``link_probe_s`` seconds and dials at once when the link is back (see :meth:`SpeechStream._wait`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from agent.audio.dsp import Gap as SourceGap
from agent.audio.types import Frame
from agent.audio.vad import GateEvent
from agent.errors import SubscriptionError
from agent.settings import StreamSettings
from agent.stream import wire
from agent.stream.actions import Ended, Retry, Stop
from agent.stream.connection import Wake, dial, run_connection, speech_address, tcp_probe, transcribe_url
from agent.stream.policy import DrainWait, Failure
from agent.stream.session import SpeechSession
from agent.stream.stats import State, StreamStats

__all__ = ["ProgressCallback", "SpeechStream", "State", "StreamStats", "TokenProvider", "TranscriptCallback"]

log = logging.getLogger(__name__)

TokenProvider = Callable[[bool], Awaitable[str]]
"""``await token(force_login)`` -> bearer token; ``force_login=True`` after a 401 (the cached token was refused)."""
TranscriptCallback = Callable[[wire.TranscriptEvent], None]
Sleep = Callable[[float], Awaitable[None]]
ProgressCallback = Callable[[float], None]
LinkProbe = Callable[[], Awaitable[bool]]
"""``await probe()`` -> True if the speech host accepts a TCP connection (the link is back)."""
"""Called while :meth:`SpeechStream.finish` waits, with the seconds of audio the server has yet to confirm."""

PROGRESS_EVERY_S = 3.0
"""Seconds between progress reports while a finished visit's backlog drains."""


class SpeechStream:
    def __init__(self, settings: StreamSettings, *, speech_url: str, appointment_id: str, token: TokenProvider,
                 on_transcript: TranscriptCallback | None = None, session_id: str | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Sleep = asyncio.sleep,
                 rand: Callable[[], float] = random.random, probe: LinkProbe | None = None) -> None:  # fmt: skip
        self._settings = settings
        self.session_id = session_id or str(uuid.uuid4())
        """The visit's resume key, stable across reconnects."""
        self._url = transcribe_url(speech_url, appointment_id, self.session_id)
        start = wire.Start(session_id=self.session_id, appointment_id=appointment_id)
        self._session = SpeechSession(settings, start, rand=rand)
        self._token = token
        self._on_transcript = on_transcript
        self._clock, self._sleep = clock, sleep
        host, port = speech_address(self._url)
        timeout = min(settings.connect_timeout_s, max(settings.link_probe_s, 0.1))
        self._probe = probe or functools.partial(tcp_probe, host, port, timeout)
        self._inbox: deque[GateEvent | Frame | SourceGap] = deque()
        self._wake_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake = Wake()
        self._supervisor: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._retry_at: float | None = None
        self._lock = threading.Lock()

    # --- producer side (any thread) -----------------------------------------------------------------------------

    def feed(self, events: Iterable[GateEvent | Frame | SourceGap]) -> None:
        """Queue gate events (or bare frames, resume mode only) for sending. Never blocks; call in batches.

        An ``agent.audio.dsp.Gap`` (audio the source lost, e.g. device loss) is announced with ``gap`` in resume
        mode; basic mode has no way to say it."""
        if threading.get_ident() == self._loop_thread and not self._inbox:
            # Fed on the loop itself (the recorder's consumer) with nothing queued from elsewhere: straight into the
            # session, the sender woken in this same turn of the loop (no self-pipe write, no callback of its own).
            self._session.feed(events)
            self._wake.set()
            return
        self._inbox.extend(events)
        if self._wake_scheduled or self._loop is None:
            return
        self._wake_scheduled = True
        if threading.get_ident() == self._loop_thread:
            self._loop.call_soon(self._drain)
            return
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: the stream is over, the archive keeps the audio
            self._wake_scheduled = False

    # --- event loop side ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the supervisor on the running loop (call once, from the loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._supervisor = asyncio.create_task(self._supervise(), name="speech-stream")
        self._drain()

    @property
    def stats(self) -> StreamStats:
        """A snapshot of the counters (safe to read from any thread)."""
        with self._lock:
            return self._session.snapshot()

    async def finish(self, final_sample: int | None = None, wait_s: float | None = None,
                     progress: ProgressCallback | None = None) -> bool:  # fmt: skip
        """End the visit: send what is left, ``end``, and wait (bounded) for the server's confirmation.

        ``final_sample`` is one past the visit's last captured sample (default: the end of the last frame fed).
        The wait is what the unconfirmed backlog needs (:class:`~agent.stream.policy.DrainWait`: ``end_timeout_s``
        plus the pending reconnect delay plus the backlog at ``replay_speed``, extended while the server confirms
        audio), at most ``drain_max_s``; ``wait_s`` replaces that cap. ``progress`` gets the seconds still
        unconfirmed every :data:`PROGRESS_EVERY_S`. Returns True if the server confirmed everything, False on
        timeout or if streaming had stopped; the stream is shut down either way (also when cancelled).
        """
        self._drain()
        self._session.finish(final_sample)
        self._wake.set()
        try:
            await self._wait_confirmed(self._settings.drain_max_s if wait_s is None else wait_s, progress)
        finally:
            await self.close()
        return self.stats.state is State.DONE

    async def _wait_confirmed(self, cap_s: float, progress: ProgressCallback | None) -> None:
        started = self._clock()
        grace = self._settings.end_timeout_s
        if self._session.mode == "basic":  # a chunk without speech is done only after its timeout
            grace = max(grace, self._settings.basic_chunk_timeout_s)
        wait = DrainWait(replay_speed=self._settings.replay_speed, grace_s=grace, cap_s=cap_s, now=started)
        next_report = started + PROGRESS_EVERY_S
        while not self._done.is_set():
            now = self._clock()
            unconfirmed = self._session.unconfirmed_s()
            reconnect_in = max(0.0, self._retry_at - now) if self._retry_at is not None else 0.0
            deadline = wait.update(unconfirmed, reconnect_in, now)
            if now >= deadline:
                log.warning("speech stream: %.1f s of audio not confirmed by the server %.0f s after the visit "
                            "ended; stopped waiting (the uploaded recording holds it)", unconfirmed, now - started)
                return
            if progress is not None and now >= next_report:
                progress(unconfirmed)
                next_report = now + PROGRESS_EVERY_S
            wake_at = min(deadline, now + 1.0)  # at least once a second: the deadline moves with the progress
            if progress is not None:
                wake_at = min(wake_at, next_report)
            try:
                async with asyncio.timeout(max(0.01, wake_at - now)):
                    await self._done.wait()
            except TimeoutError:
                pass

    def give_up(self) -> None:
        """Stop :meth:`finish` waiting (a person asked twice to stop); any thread."""
        if self._loop is None or self._done.is_set():
            return

        def stop_waiting() -> None:
            if not self._done.is_set():
                log.warning("speech stream: stopped waiting for the server's confirmation on request (the "
                            "uploaded recording holds the audio)")
                self._done.set()

        if threading.get_ident() == self._loop_thread:
            stop_waiting()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing is waiting any more
                self._loop.call_soon_threadsafe(stop_waiting)

    async def close(self) -> None:
        """Stop at once (no ``end``); used on shutdown."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            # gather() hands the supervisor's CancelledError back as a value but still raises our own.
            await asyncio.gather(self._supervisor, return_exceptions=True)

    def _drain(self) -> None:
        self._wake_scheduled = False
        events = []
        while self._inbox:  # popleft is atomic: feed() may append meanwhile from another thread
            events.append(self._inbox.popleft())
        self._session.feed(events)
        self._wake.set()

    async def _supervise(self) -> None:
        relogin = False
        while True:
            try:
                ended = await self._connect_once(relogin)
            except Exception as exc:  # a bug must not end streaming for the rest of the visit: log it, go on
                log.exception("speech connection failed unexpectedly")
                ended = Ended(Failure.TRANSIENT, f"unexpected {type(exc).__name__}")
            action = self._session.connection_ended(ended, self._clock())
            if isinstance(action, Stop):
                self._done.set()
                return
            relogin = action.relogin
            self._retry_at = self._clock() + action.delay_s
            try:
                await self._wait(action)
            finally:
                self._retry_at = None

    async def _wait(self, action: Retry) -> None:
        """Sleep the reconnect delay; after an unreachable host, probe it every ``link_probe_s`` and stop waiting
        as soon as it answers (a returned link is used at once, not after the rest of a 30 s backoff)."""
        step = self._settings.link_probe_s
        if not action.probe or step <= 0:
            await self._sleep(action.delay_s)
            return
        waited = 0.0
        while waited < action.delay_s:
            nap = min(step, action.delay_s - waited)
            await self._sleep(nap)
            waited += nap
            if waited >= action.delay_s:
                return
            self._session.stats.link_probes += 1
            if await self._probe():
                self._session.stats.probe_cuts += 1
                log.info("speech host reachable again: dialling %.1f s early", action.delay_s - waited)
                return

    async def _connect_once(self, relogin: bool) -> Ended:
        self._session.dialling(self._clock())
        try:
            token = await self._token(relogin)
        except SubscriptionError:
            return Ended(Failure.FORBIDDEN, "login refused: no active subscription")
        except Exception as exc:  # the login path reports its own errors; the stream keeps trying
            return Ended(Failure.TRANSIENT, f"login failed: {type(exc).__name__}")
        dialled = await dial(self._url, token, self._settings)
        if isinstance(dialled, Ended):
            return dialled
        refused = self._session.connected(dialled.subprotocol, self._clock())
        if refused is not None:
            await dialled.close()
            return refused
        return await run_connection(dialled, self._session, clock=self._clock, wake=self._wake,
                                    on_transcript=self._on_transcript)  # fmt: skip
