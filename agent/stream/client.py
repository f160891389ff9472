"""SpeechStream: the producer-facing object and the reconnect supervisor (adapter over the pure parts).

The audio thread calls :meth:`SpeechStream.feed` (thread-safe, cheap: appends to an inbox and wakes the event
loop at most once per batch). Everything else runs on the event loop: the inbox is drained into the send ring
(resume mode) and the basic-mode outbox, and a supervisor task dials and runs connections for ever with
:class:`~agent.stream.policy.ReconnectPolicy`. Until the first connection picks the mode, audio goes to both; then
the other is dropped. A later connection that picks the other mode is treated as a transient failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from agent import SAMPLE_RATE
from agent.audio.dsp import Gap as SourceGap
from agent.audio.types import Frame
from agent.audio.vad import GateEvent, SegmentFrame
from agent.errors import SubscriptionError
from agent.settings import StreamSettings
from agent.stream import wire
from agent.stream.basic import BasicOutbox
from agent.stream.connection import Connection, Ended, dial, transcribe_url
from agent.stream.policy import DrainWait, Failure, ReconnectPolicy
from agent.stream.ring import SendRing

log = logging.getLogger(__name__)

TokenProvider = Callable[[bool], Awaitable[str]]
"""``await token(force_login)`` -> bearer token; ``force_login=True`` after a 401 (the cached token was refused)."""
TranscriptCallback = Callable[[wire.TranscriptEvent], None]
Sleep = Callable[[float], Awaitable[None]]
ProgressCallback = Callable[[float], None]
"""Called while :meth:`SpeechStream.finish` waits, with the seconds of audio the server has yet to confirm."""

PROGRESS_EVERY_S = 3.0
"""Seconds between progress reports while a finished visit's backlog drains."""


class State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKOFF = "backoff"
    FORBIDDEN = "forbidden"
    """403: no active subscription; dialling stopped, capture and archive go on."""
    FAILED = "failed"
    """The server ended the session with a non-retryable error; dialling stopped."""
    DONE = "done"
    """The server confirmed the whole visit."""


@dataclass(slots=True)
class StreamStats:
    state: State = State.IDLE
    mode: str | None = None
    """``resume`` or ``basic`` once a connection picked it."""
    connections: int = 0
    reconnects: int = 0
    """Dials after the first (including failed handshakes)."""
    sent_messages: int = 0
    resent_messages: int = 0
    acked_messages: int = 0
    paced_messages: int = 0
    """Messages sent under replay pacing (``replay_speed``): the backlog after an outage."""
    bytes_sent: int = 0
    """Audio payload bytes written to the socket (resume mode), resends included."""
    ack_lag_s: float = 0.0
    """Seconds of timeline between the newest audio sent and the newest audio acknowledged (resume mode)."""
    duplicates_dropped: int = 0
    """Basic mode: transcriptions dropped as repeats."""
    chunks_sent: int = 0
    chunks_resent: int = 0
    chunks_transcribed: int = 0
    chunks_timed_out: int = 0
    dropped_samples: int = 0
    """Samples pushed out of a full ring before the server confirmed them (some may have reached it)."""
    gap_samples: int = 0
    """Samples announced to the server as lost (resume mode)."""
    gaps: list[tuple[int, int]] = field(default_factory=list)
    held_samples: int = 0
    """Samples held for sending that the server has not confirmed yet (ring fill; basic mode: chunks not done)."""
    protocol_errors: int = 0
    """Connections ended because the server claimed something impossible (e.g. audio stored that was never sent)."""
    ignored_messages: int = 0
    """Server messages ignored as unusable (binary, malformed, oversized, nested too deep)."""
    unmatched_transcriptions: int = 0
    """Basic mode: transcriptions that arrived while no chunk was outstanding (ignored)."""
    rejected_frames: int = 0
    """Frames refused because their timeline index went backwards (a caller bug, logged)."""
    last_error: str = ""
    """Why the last connection ended (one line, no patient data)."""
    end_reasons: list[str] = field(default_factory=list)
    """Why each connection ended, the last 100."""
    retry_delays: list[float] = field(default_factory=list)
    """Reconnect delays chosen, in seconds (the last 100)."""


class SpeechStream:
    def __init__(self, settings: StreamSettings, *, speech_url: str, appointment_id: str, token: TokenProvider,
                 on_transcript: TranscriptCallback | None = None, session_id: str | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Sleep = asyncio.sleep,
                 rand: Callable[[], float] = random.random) -> None:  # fmt: skip
        self._settings = settings
        self.session_id = session_id or str(uuid.uuid4())
        """The visit's resume key, stable across reconnects."""
        self._url = transcribe_url(speech_url, appointment_id, self.session_id)
        self._start_msg = wire.Start(session_id=self.session_id, appointment_id=appointment_id)
        self._token = token
        self._on_transcript = on_transcript
        self._clock, self._sleep = clock, sleep
        self._policy = ReconnectPolicy(settings, rand)
        self._ring = SendRing(settings)
        self._basic = BasicOutbox(settings)
        self._mode: str | None = None
        self._inbox: deque[GateEvent | Frame | SourceGap] = deque()
        self._wake_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake = asyncio.Event()
        self._connection: Connection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._retry_at: float | None = None
        self._finishing = False
        self._final_sample: int | None = None
        self._stats = StreamStats()
        self._lock = threading.Lock()

    # --- producer side (any thread) -----------------------------------------------------------------------------

    def feed(self, events: Iterable[GateEvent | Frame | SourceGap]) -> None:
        """Queue gate events (or bare frames, resume mode only) for sending. Never blocks; call in batches.

        An ``agent.audio.dsp.Gap`` (audio the source lost, e.g. device loss) is announced with ``gap`` in resume
        mode; basic mode has no way to say it."""
        self._inbox.extend(events)
        if self._wake_scheduled or self._loop is None:
            return
        self._wake_scheduled = True
        if threading.get_ident() == self._loop_thread:  # fed on the loop itself: no self-pipe write and wake-up
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
            self._refresh_stats()
            s = self._stats
            return StreamStats(**{name: getattr(s, name) for name in StreamStats.__slots__})

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
        self._basic.flush()
        self._final_sample = final_sample
        self._finishing = True
        if self._connection is not None:
            self._connection.finishing = True
            self._connection.final_sample = self._end_sample()
        self._wake.set()
        try:
            await self._wait_confirmed(self._settings.drain_max_s if wait_s is None else wait_s, progress)
        finally:
            await self.close()
        return self.stats.state is State.DONE

    async def _wait_confirmed(self, cap_s: float, progress: ProgressCallback | None) -> None:
        started = self._clock()
        grace = self._settings.end_timeout_s
        if self._mode == "basic":  # a chunk without speech is done only after its timeout
            grace = max(grace, self._settings.basic_chunk_timeout_s)
        wait = DrainWait(replay_speed=self._settings.replay_speed, grace_s=grace, cap_s=cap_s, now=started)
        next_report = started + PROGRESS_EVERY_S
        while not self._done.is_set():
            now = self._clock()
            unconfirmed = self._unconfirmed_s()
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

    def _unconfirmed_s(self) -> float:
        """Seconds of audio held for sending that the server has not confirmed (or declared done) yet."""
        held = self._basic.held_bytes if self._mode == "basic" else self._ring.held_bytes
        return held / (SAMPLE_RATE * 2)

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

    def _end_sample(self) -> int:
        return self._ring.timeline_end if self._final_sample is None else self._final_sample

    def _drain(self) -> None:
        self._wake_scheduled = False
        while self._inbox:
            event = self._inbox.popleft()
            if isinstance(event, SourceGap):
                if self._mode != "basic":
                    self._ring.add_gap(event.start, event.end, event.reason)
                continue
            frame = event.frame if isinstance(event, SegmentFrame) else event if isinstance(event, Frame) else None
            try:
                if frame is not None and self._mode != "basic":
                    self._ring.push(frame)
                if self._mode != "resume":
                    self._basic.push(event)
            except ValueError:  # a frame going back in time: a caller bug; the rest of the batch still counts
                log.exception("speech stream refused a frame")
                with self._lock:
                    self._stats.rejected_frames += 1
        self._wake.set()

    async def _supervise(self) -> None:
        force_login = False
        while True:
            try:
                ended = await self._connect_once(force_login)
            except Exception as exc:  # a bug must not end streaming for the rest of the visit: log it, go on
                log.exception("speech connection failed unexpectedly")
                ended = Ended(Failure.TRANSIENT, f"unexpected {type(exc).__name__}")
            with self._lock:
                self._stats.last_error = ended.reason
                self._stats.end_reasons = [*self._stats.end_reasons[-99:], ended.reason]
            if ended.failure is None:
                self._set(state=State.DONE)
                self._done.set()
                return
            decision = self._policy.on_failure(ended.failure, self._clock(), ended.retry_after)
            if ended.protocol_error:
                log.warning("speech server broke the protocol (%s): reconnecting, nothing counted as delivered",
                            ended.reason)
                with self._lock:
                    self._stats.protocol_errors += 1
            else:
                log.info("speech connection ended (%s)", ended.reason)
            if decision.delay_s is None:
                self._set(state=State.FORBIDDEN if ended.failure is Failure.FORBIDDEN else State.FAILED)
                log.warning("speech streaming stopped: %s", ended.reason)
                self._done.set()
                return
            force_login = decision.relogin
            with self._lock:
                self._stats.retry_delays = [*self._stats.retry_delays[-99:], decision.delay_s]
            self._set(state=State.BACKOFF)
            self._retry_at = self._clock() + decision.delay_s
            try:
                await self._sleep(decision.delay_s)
            finally:
                self._retry_at = None

    async def _connect_once(self, force_login: bool) -> Ended:
        self._set(state=State.CONNECTING)
        with self._lock:
            if self._stats.connections or self._stats.retry_delays:
                self._stats.reconnects += 1
        try:
            token = await self._token(force_login)
        except SubscriptionError:
            return Ended(Failure.FORBIDDEN, "login refused: no active subscription")
        except Exception as exc:  # the login path reports its own errors; the stream keeps trying
            return Ended(Failure.TRANSIENT, f"login failed: {type(exc).__name__}")
        dialled = await dial(self._url, token, self._settings)
        if isinstance(dialled, Ended):
            return dialled
        mode = "resume" if dialled.subprotocol == wire.RESUME_SUBPROTOCOL else "basic"
        if self._mode is None:
            self._mode = mode
            self._ring, self._basic = (
                (self._ring, BasicOutbox(self._settings))
                if mode == "resume"
                else (SendRing(self._settings), self._basic)
            )
        elif mode != self._mode:
            await dialled.close()
            return Ended(Failure.TRANSIENT, f"server switched to {mode} mode mid-visit")
        conn = Connection(
            dialled,
            settings=self._settings,
            ring=self._ring,
            basic=self._basic,
            start=self._start_msg,
            on_message=self._on_message,
            on_progress=self._policy.on_progress,
            wake=self._wake,
            clock=self._clock,
        )
        conn.finishing, conn.final_sample = self._finishing, self._end_sample()
        self._connection = conn
        self._policy.on_connected(self._clock())
        with self._lock:
            self._stats.connections += 1
            self._stats.mode = mode
        self._set(state=State.STREAMING)
        try:
            return await conn.run()
        finally:
            self._connection = None
            with self._lock:
                self._stats.ignored_messages += conn.ignored_messages

    def _on_message(self, msg: wire.ServerMessage | wire.Unknown) -> None:
        if isinstance(msg, wire.Transcription):
            if self._mode == "basic":
                event = self._basic.on_transcription(msg)
                if event is not None:
                    self._policy.on_progress()
            else:
                event = wire.parse_transcription(msg)
            if event is not None and self._on_transcript is not None:
                self._on_transcript(event)

    def _set(self, **changes: object) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self._stats, name, value)

    def _refresh_stats(self) -> None:
        s, r, b = self._stats, self._ring.stats, self._basic.stats
        s.sent_messages, s.resent_messages, s.acked_messages = r.sent_messages, r.resent_messages, r.acked_messages
        s.paced_messages, s.bytes_sent = r.paced_messages, r.bytes_sent
        s.ack_lag_s = max(0, r.sent_end - r.acked_end) / SAMPLE_RATE
        s.chunks_sent, s.chunks_resent, s.duplicates_dropped = b.sent, b.resent, b.duplicates_dropped
        s.chunks_transcribed, s.chunks_timed_out = b.transcribed, b.timed_out
        s.dropped_samples = r.dropped_samples + b.dropped_samples
        s.gap_samples, s.gaps = r.gap_samples_announced, list(r.gaps)
        s.held_samples = (self._basic.held_bytes if self._mode == "basic" else self._ring.held_bytes) // 2
        s.unmatched_transcriptions = b.unmatched
