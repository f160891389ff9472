"""SpeechStream: the producer-facing object and the reconnect supervisor (adapter over the pure parts).

The audio thread calls :meth:`SpeechStream.feed` (thread-safe, cheap: appends to an inbox and wakes the event
loop at most once per batch). Everything else runs on the event loop: the inbox is drained into the send ring
(resume mode) and the basic-mode outbox, and a supervisor task dials and runs connections for ever with
:class:`~agent.stream.policy.ReconnectPolicy`. Until the first connection picks the mode, audio goes to both; then
the other is dropped. A later connection that picks the other mode is treated as a transient failure.
"""

from __future__ import annotations

import asyncio
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
from agent.stream.policy import Failure, ReconnectPolicy
from agent.stream.ring import SendRing

log = logging.getLogger(__name__)

TokenProvider = Callable[[bool], Awaitable[str]]
"""``await token(force_login)`` -> bearer token; ``force_login=True`` after a 401 (the cached token was refused)."""
TranscriptCallback = Callable[[wire.TranscriptEvent], None]
Sleep = Callable[[float], Awaitable[None]]


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
    """Resume mode: samples in the send ring not yet confirmed by the server (ring fill)."""
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

    async def finish(self, final_sample: int | None = None, wait_s: float | None = None) -> bool:
        """End the visit: send what is left, ``end``, and wait (bounded) for the server's confirmation.

        ``final_sample`` is one past the visit's last captured sample (default: the end of the last frame fed).
        Waits at most ``wait_s`` seconds (default ``end_timeout_s``). Returns True if the server confirmed
        everything, False on timeout or if streaming had stopped; the
        stream is shut down either way.
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
            async with asyncio.timeout(self._settings.end_timeout_s if wait_s is None else wait_s):
                await self._done.wait()
        except TimeoutError:
            log.warning("speech stream not confirmed within the end timeout")
        await self.close()
        return self.stats.state is State.DONE

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
                    self._ring.add_gap(event.start, event.end)
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
            await self._sleep(decision.delay_s)

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

    def _on_message(self, msg: wire.ServerMessage | wire.Unknown) -> None:
        if isinstance(msg, wire.Ack):
            self._policy.on_progress()
        elif isinstance(msg, wire.Transcription):
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
        s.held_samples = self._ring.held_bytes // 2
