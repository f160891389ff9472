"""The speech session as a pure state machine (shared/speech-protocol.md), in the style of websockets' ``Protocol``.

Messages and time in, actions out; no socket, no event loop, no thread. One :class:`SpeechSession` lives for a
whole visit, across any number of connections. The adapter (:mod:`agent.stream.connection`,
:mod:`agent.stream.client`) only moves bytes and sleeps:

    session.dialling(now); ended = session.connected(ws.subprotocol, now)   # None: the connection may go on
    out = session.poll(now)        # str/bytes: write it, then session.sent(now), and poll again if session.more(now);
                                   # Ended: close; None: wait until
    session.deadline()             # this monotonic time or a wake-up (new audio, got.wake)
    got = session.receive(message, now)   # got.ended / got.transcript / got.wake; peer_closed(code) on a close
    action = session.connection_ended(ended, now)   # also for a failed dial: Retry(delay_s, ...) or Stop

Per connection: ``session_init`` (waited for at most ``session_init_timeout_s``), then in resume mode ``start`` and
``ready`` (within ``connect_timeout_s``), then audio, ``gap`` and ``end``; in basic mode whole chunks. The mode is
the first connection's subprotocol; a later connection in the other mode is a transient failure. A server's
claims are checked (:mod:`agent.stream.policy`): a ``ready``, ``ack`` or ``closed`` beyond what was written ends the
connection as a protocol error and frees nothing. Once a connection is ending nothing more is written on it and
nothing read from it counts. Replay (audio that waited in the ring while there was no connection) is paced at
``replay_speed``; fresh audio never waits. In resume mode an ``ack`` needs no write, so it does not wake the sender.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from agent import BYTES_PER_SAMPLE, SAMPLE_RATE
from agent.audio.dsp import Gap as SourceGap
from agent.audio.types import Frame
from agent.audio.vad import GateEvent, SegmentFrame
from agent.errors import ProtocolError
from agent.settings import StreamSettings
from agent.stream import wire
from agent.stream.actions import Ended, Received, Retry, Stop
from agent.stream.basic import BasicOutbox, Chunk
from agent.stream.conn import Conn, Phase
from agent.stream.policy import AckWatchdog, Failure, Pacer, ReconnectPolicy, check_closed
from agent.stream.ring import SendRing
from agent.stream.stats import State, StreamStats, refresh, snapshot

log = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
"""Close code of a server ending the connection for want of a subscription."""

__all__ = ["Ended", "Received", "Retry", "SpeechSession", "Stop"]


class SpeechSession:
    def __init__(self, settings: StreamSettings, start: wire.Start, *, rand: Callable[[], float]) -> None:
        self._settings = settings
        self._start = start
        self._policy = ReconnectPolicy(settings, rand)
        self._ring = SendRing(settings)
        self._basic = BasicOutbox(settings)
        self.mode: str | None = None
        """``resume`` or ``basic`` once the first connection picked it."""
        self._conn: Conn | None = None
        self._finishing = False
        self._final_sample: int | None = None
        self.stats = StreamStats()
        """Counters, updated in place (read a copy: :meth:`snapshot`)."""

    # --- the producer's side -----------------------------------------------------------------------------------

    def feed(self, events: Iterable[GateEvent | Frame | SourceGap]) -> None:
        """Gate events (or bare frames, resume mode only) and source gaps, in timeline order."""
        ring = None if self.mode == "basic" else self._ring
        basic = None if self.mode == "resume" else self._basic
        for event in events:
            if type(event) is SegmentFrame and basic is None:  # the usual event of a resume-mode visit
                frame: Frame | None = event.frame
            elif isinstance(event, SourceGap):
                if ring is not None:
                    ring.add_gap(event.start, event.end, event.reason)
                continue
            else:
                frame = event.frame if isinstance(event, SegmentFrame) else event if isinstance(event, Frame) else None
            try:
                if frame is not None and ring is not None:
                    ring.push(frame)
                if basic is not None:
                    basic.push(event)
            except ValueError:  # a frame going back in time: a caller bug; the rest of the batch still counts
                log.exception("speech stream refused a frame")
                self.stats.rejected_frames += 1

    def finish(self, final_sample: int | None) -> None:
        """The visit is over: close the open chunk, send ``end`` once everything is written."""
        self._basic.flush()
        self._finishing = True
        self._final_sample = final_sample

    def unconfirmed_s(self) -> float:
        """Seconds of audio held for sending that the server has not confirmed (or declared done) yet."""
        held = self._basic.held_bytes if self.mode == "basic" else self._ring.held_bytes
        return held / (SAMPLE_RATE * BYTES_PER_SAMPLE)

    def snapshot(self) -> StreamStats:
        refresh(self.stats, self._ring, self._basic, self.mode)
        return snapshot(self.stats)

    # --- connections ---------------------------------------------------------------------------------------------

    def dialling(self, now: float) -> None:
        self.stats.state = State.CONNECTING
        if self.stats.connections or self.stats.retry_delays:
            self.stats.reconnects += 1

    def connected(self, subprotocol: str | None, now: float) -> Ended | None:
        """A handshake succeeded; the subprotocol the server selected picks the mode."""
        mode = "resume" if subprotocol == wire.RESUME_SUBPROTOCOL else "basic"
        if self.mode is None:
            self.mode = mode
            if mode == "resume":
                self._basic = BasicOutbox(self._settings)
            else:
                self._ring = SendRing(self._settings)
        elif mode != self.mode:
            return Ended(Failure.TRANSIENT, f"server switched to {mode} mode mid-visit")
        init_deadline = now + self._settings.session_init_timeout_s
        watchdog = AckWatchdog(self._settings.ack_timeout_s, now)
        self._conn = Conn(resume=mode == "resume", init_deadline=init_deadline, watchdog=watchdog)
        self._policy.on_connected(now)
        self.stats.connections += 1
        self.stats.mode = mode
        self.stats.state = State.STREAMING
        return None

    def connection_ended(self, ended: Ended, now: float) -> Retry | Stop:
        """The connection (or the dial) is over: when to dial again, or not at all."""
        self._ring.on_disconnected()
        if self._conn is not None:
            self.stats.ignored_messages += self._conn.ignored
            self._conn = None
        s = self.stats
        s.last_error, s.end_reasons = ended.reason, [*s.end_reasons[-99:], ended.reason]
        if ended.failure is None:
            s.state = State.DONE
            return Stop(State.DONE)
        decision = self._policy.on_failure(ended.failure, now, ended.retry_after)
        if ended.protocol_error:
            log.warning("speech server broke the protocol (%s): reconnecting, nothing counted as delivered",
                        ended.reason)  # fmt: skip
            s.protocol_errors += 1
        else:
            log.info("speech connection ended (%s)", ended.reason)
        if decision.delay_s is None:
            s.state = State.FORBIDDEN if ended.failure is Failure.FORBIDDEN else State.FAILED
            log.warning("speech streaming stopped: %s", ended.reason)
            return Stop(s.state)
        s.retry_delays = [*s.retry_delays[-99:], decision.delay_s]
        s.state = State.BACKOFF
        return Retry(decision.delay_s, decision.relogin, probe=ended.unreachable)

    # --- writing -------------------------------------------------------------------------------------------------

    def poll(self, now: float) -> str | bytes | Ended | None:
        """What to do now on this connection: write a message, end it, or nothing (wait for :meth:`deadline`)."""
        c = self._conn
        if c is None or c.phase in (Phase.ENDING, Phase.CONFIRMED):
            return None
        out = self._poll(c, now)
        if isinstance(out, Ended):
            self._ending(c, out)
        return out

    @staticmethod
    def _ending(c: Conn, ended: Ended) -> None:
        # A connection being replaced gets no more writes and nothing read from it counts; on a confirmed one
        # the late results (transcripts, repeats) are still read while it closes.
        c.phase = Phase.ENDING if ended.failure is not None else Phase.CONFIRMED

    def _poll(self, c: Conn, now: float) -> str | bytes | Ended | None:
        if c.phase is Phase.AWAIT_INIT:
            if not c.init_seen and now < c.init_deadline:
                return None
            if not c.init_seen:
                log.info("no session_init within %.1f s; proceeding", self._settings.session_init_timeout_s)
            start = self._handshake(c, now)
            if start is not None:
                return start
        if c.phase is Phase.AWAIT_READY:
            if c.early_ready is None:
                if now >= c.ready_deadline:
                    return Ended(Failure.TRANSIENT, f"no ready within {self._settings.connect_timeout_s:g} s")
                return None
            ended = self._on_ready(c, c.early_ready, now)
            if ended is not None:
                return ended
        return self._poll_resume(c, now) if c.resume else self._poll_basic(now)

    def _handshake(self, c: Conn, now: float) -> str | None:
        """``session_init`` arrived or was waited for long enough."""
        if not c.resume:
            self._basic.on_connected()
            c.phase = Phase.STREAMING
            return None
        c.phase = Phase.AWAIT_READY
        c.ready_deadline = now + self._settings.connect_timeout_s
        return wire.encode(self._start)

    def _poll_resume(self, c: Conn, now: float) -> str | bytes | Ended | None:
        if c.watchdog.expired(now):
            return Ended(Failure.TRANSIENT, "no ack progress: connection considered dead")
        msg = self._ring.next_message()  # formed first: a gap is announced only once the audio before it is out
        c.queued.extend(wire.encode(gap) for gap in self._ring.gaps_to_send())
        if c.queued:
            return c.queued.popleft()
        if msg is None:
            if self._finishing and not c.end_sent:
                c.end_sent = True
                final = self._ring.timeline_end if self._final_sample is None else self._final_sample
                return wire.encode(wire.End(last_seq=self._ring.last_seq, final_sample=final))
            return None
        audio_s = len(msg.pcm) / (SAMPLE_RATE * BYTES_PER_SAMPLE)
        replay = msg.start < c.replay_end
        assert c.pacer is not None
        delay = c.pacer.delay(audio_s, now) if replay else 0.0
        c.pace_until = now + delay if delay > 0 else None
        if delay > 0:
            return None
        self._ring.mark_writing(msg.seq)  # the server may read (and ack) it before the write returns
        c.in_flight = (msg.seq, replay, audio_s)
        if replay:
            c.replay_last_seq = msg.seq
        return wire.encode_audio(msg.seq, msg.start, msg.pcm)

    def _poll_basic(self, now: float) -> bytes | Ended | None:
        self._basic.expire(now)
        if self._finishing and self._basic.drained:
            return Ended(None, "every chunk done")
        chunk = self._basic.next_chunk()
        if chunk is None:
            return None
        assert self._conn is not None
        self._conn.in_flight = chunk
        return self._basic.payload(chunk)

    def sent(self, now: float) -> None:
        """The write of the last audio message :meth:`poll` returned came back (which proves nothing about delivery)."""
        c = self._conn
        if c is None or c.in_flight is None:
            return
        done, c.in_flight = c.in_flight, None
        if isinstance(done, Chunk):
            self._basic.mark_sent(done, now)
            return
        seq, replay, audio_s = done
        if replay and c.pacer is not None:
            c.pacer.spend(audio_s, now)
        self._ring.mark_sent(seq, paced=replay)
        c.watchdog.update(self._ring.outstanding, False, now)

    def reads_may_wait(self) -> bool:
        """Whether what the server sends may wait for a later live message (:mod:`agent.stream.readhold`): the audio
        :meth:`poll` just returned is live and every replayed message is acked (a backlog's acks are read as they
        come, so its catch-up is seen at once)."""
        c = self._conn
        if c is None or not isinstance(c.in_flight, tuple):
            return False
        return not c.in_flight[1] and self._ring.acked_next > c.replay_last_seq

    def more(self, now: float) -> bool:
        """Whether :meth:`poll` may have something to write now (call after :meth:`sent`). False only when it would
        surely return None: the sender then waits for :meth:`deadline` or a wake-up without polling again."""
        c = self._conn
        if c is None or not c.resume or c.phase is not Phase.STREAMING or c.queued:
            return c is not None
        if self._ring.has_output or (self._finishing and not c.end_sent):
            return True
        deadline = c.watchdog.deadline()
        return deadline is not None and now >= deadline

    def deadline(self) -> float | None:
        """Monotonic time at which :meth:`poll` has something to do without any new input (None: never)."""
        c = self._conn
        if c is None or c.phase in (Phase.ENDING, Phase.CONFIRMED):
            return None
        if c.phase is Phase.AWAIT_INIT:
            return 0.0 if c.init_seen else c.init_deadline  # seen: due at once
        if c.phase is Phase.AWAIT_READY:
            return 0.0 if c.early_ready is not None else c.ready_deadline
        if not c.resume:
            return self._basic.next_deadline()
        times = [t for t in (c.pace_until, c.watchdog.deadline()) if t is not None]
        return min(times) if times else None

    # --- reading -------------------------------------------------------------------------------------------------

    def receive(self, data: str | bytes, now: float) -> Received:
        """One message read from the socket."""
        c = self._conn
        if c is None or c.phase is Phase.ENDING:
            return Received()  # a connection being replaced: nothing on it counts any more
        if isinstance(data, bytes):  # the protocol has no server-to-client audio
            self._ignore(c, f"server sent a binary message of {len(data)} bytes")
            return Received()
        try:
            msg = wire.decode(data)
        except ProtocolError as exc:
            self._ignore(c, str(exc))
            return Received()
        got = self._dispatch(c, msg, now)
        if got.ended is not None:
            self._ending(c, got.ended)
        return got

    def peer_closed(self, code: int | None, too_big: bool = False) -> Ended:
        """The socket closed (``too_big``: because the server sent a message over the size limit)."""
        if too_big:
            log.warning("speech server sent a message over %d bytes: connection closed", wire.MAX_MESSAGE_BYTES)
            return Ended(Failure.TRANSIENT, "server sent an oversized message")
        if code == CLOSE_FORBIDDEN:
            return Ended(Failure.FORBIDDEN, "server closed: no active subscription")
        return Ended(Failure.TRANSIENT, f"connection closed (code {code})")

    def _ignore(self, c: Conn, reason: str) -> None:
        """An unusable server message: one WARNING per connection (a flood must not flood the log), all counted."""
        c.ignored += 1
        level = logging.WARNING if c.ignored == 1 else logging.DEBUG
        log.log(level, "%s; ignored%s", reason, " (further ones on this connection are counted, not logged)"
                if c.ignored == 1 else "")  # fmt: skip

    def _dispatch(self, c: Conn, msg: wire.ServerMessage | wire.Unknown, now: float) -> Received:
        if type(msg) is wire.Ack:  # the usual message (several a second while audio flows): looked at first
            return Received(self._on_ack(c, msg.seq, now))
        if isinstance(msg, wire.SessionInit):
            if c.phase is Phase.AWAIT_INIT:
                c.init_seen = True  # proceed at the next poll
                return Received(wake=True)
        elif isinstance(msg, wire.Ready):
            if c.phase in (Phase.AWAIT_INIT, Phase.AWAIT_READY) and c.early_ready is None:
                c.early_ready = msg.next_seq  # applied by poll once ``start`` is out
                return Received(wake=True)
        elif isinstance(msg, wire.Ack):
            return Received(self._on_ack(c, msg.seq, now))
        elif isinstance(msg, wire.Closed):
            ended = self._on_closed(c, msg, now)
            return Received(ended, wake=True)
        elif isinstance(msg, wire.Error):
            failure = Failure.TRANSIENT if msg.retryable else Failure.FATAL
            return Received(Ended(failure, f"server error {msg.code!r}", msg.retry_after))
        elif isinstance(msg, wire.ServerWarning):
            log.warning("speech server warning (code %s)", msg.code)
        elif isinstance(msg, wire.Transcription):
            return self._on_transcription(msg)
        return Received()

    def _on_ready(self, c: Conn, next_seq: int, now: float) -> Ended | None:
        c.early_ready = None
        acked_before = self._ring.acked_next
        try:
            self._ring.on_ready(next_seq)
        except ProtocolError as exc:
            return Ended(Failure.TRANSIENT, str(exc), protocol_error=True)
        if next_seq < acked_before:  # nothing to resend (freed when acked): say so, the upload holds it
            log.warning("speech server no longer holds audio it had acknowledged (next_seq %d, acknowledged up to "
                        "seq %d); the live stream continues from there", next_seq, acked_before - 1)  # fmt: skip
        c.phase = Phase.STREAMING
        # Only the replay is paced: audio that waited in the ring while there was no connection. Fresh audio goes
        # out as it comes, also when a file source produces it faster than real time.
        c.pacer = Pacer(self._settings.replay_speed, self._settings.replay_message_ms / 1000, now)
        c.replay_end = self._ring.timeline_end
        return None

    def _on_ack(self, c: Conn, seq: int, now: float) -> Ended | None:
        try:
            progressed = self._ring.on_ack(seq)
        except ProtocolError as exc:
            return Ended(Failure.TRANSIENT, str(exc), protocol_error=True)
        c.watchdog.update(self._ring.outstanding, progressed, now)
        if progressed:  # a repeated or stale ack is no reason to trust the connection more
            self._policy.on_progress()
        return None

    def _on_closed(self, c: Conn, msg: wire.Closed, now: float) -> Ended | None:
        if c.resume:
            problem = check_closed(msg.last_seq, self._ring.written_next)
            if problem is not None:
                return Ended(Failure.TRANSIENT, problem, protocol_error=True)
            if msg.last_seq >= 0:  # confirms storage as an ack would
                ended = self._on_ack(c, msg.last_seq, now)
                if ended is not None:
                    return ended
        self._ring.on_closed()
        if c.end_sent and msg.last_seq >= self._ring.last_seq:
            return Ended(None, "server confirmed the visit")
        return None

    def _on_transcription(self, msg: wire.Transcription) -> Received:
        if self.mode == "basic":
            event = self._basic.on_transcription(msg)
            if event is not None:
                self._policy.on_progress()
            return Received(transcript=event, wake=True)
        return Received(transcript=wire.parse_transcription(msg))
