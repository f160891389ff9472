"""The speech socket ``GET /ws/transcribe``: handshake, mode choice, and both modes of speech-protocol.md.

Mode is chosen by subprotocol negotiation: a client offering ``medisync.resume.v1`` gets resume mode unless the
``force_basic`` knob is set; everyone else gets MediSync's documented basic mode.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import struct
import time
import uuid
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from agent import SAMPLE_RATE
from agent.server.app import json_error
from agent.server.knobs import Lie
from agent.server.speech_log import FrameVerdict, SessionLog, judge_seq
from agent.server.store import Segment, User
from agent.server.transcriber import ChunkRejected, Span, SpanDetector, TranscribedSegment, decode_chunk, format_line
from agent.server.transcription import TranscriptPipe

if TYPE_CHECKING:
    from agent.server.app import MediSyncServer

log = logging.getLogger(__name__)

RESUME_PROTOCOL = "medisync.resume.v1"
FRAME_HEADER = struct.Struct("<QQ")
MAX_FRAME_PAYLOAD = 32_000
CLOSE_TIMEOUT_S = 2.0
"""Seconds to wait for the client's close frame after the server closes."""
CLOSE_TAKEN_OVER, CLOSE_FUTURE_SEQ, CLOSE_PROTOCOL, CLOSE_FORBIDDEN = 4001, 4409, 4400, 4403
MAX_UNDELIVERED = 1000
"""Transcriptions kept per session while no connection is there to take them (sent after the next ``ready``)."""


class SpeechHub:
    """Per-process speech state: open session logs, the live connection per session, span detectors, and per
    session the transcripts on their way (in span order, to whichever connection owns the session when ready)."""

    def __init__(self, server: MediSyncServer) -> None:
        self.server = server
        self.logs: dict[str, SessionLog] = {}
        self.detectors: dict[str, SpanDetector] = {}
        self.owners: dict[str, ResumeConnection] = {}
        self.sockets: set[web.WebSocketResponse] = set()
        self.background: set[asyncio.Task[None]] = set()
        self.pipes: dict[str, TranscriptPipe[None]] = {}
        self.undelivered: dict[str, deque[dict[str, Any]]] = {}
        self.handshake_times: list[float] = []
        """time.monotonic() of every handshake attempt, refused ones included (tests count reconnect storms)."""

    def pipe(self, session_id: str, appointment_id: str | None) -> TranscriptPipe[None]:
        if session_id not in self.pipes:
            async def deliver(segments: list[TranscribedSegment], _: None) -> None:
                await self._deliver_live(session_id, appointment_id, segments)

            self.pipes[session_id] = TranscriptPipe(deliver)
        return self.pipes[session_id]

    async def settled(self, session_id: str) -> None:
        """Wait until every span of the session transcribed so far has been delivered (or kept undelivered)."""
        if session_id in self.pipes:
            await self.pipes[session_id].settled()

    async def _deliver_live(self, session_id: str, appointment_id: str | None,
                            segments: list[TranscribedSegment]) -> None:  # fmt: skip
        """Keep the segments for the appointment, then send them to the session's connection, or hold them."""
        if segments and appointment_id:
            self.server.store.add_segments(appointment_id, [
                Segment(s.speaker, s.start / SAMPLE_RATE, s.end / SAMPLE_RATE, s.text, "live") for s in segments])
        for seg in segments:
            message = transcription_message(seg, session_id)
            owner = self.owners.get(session_id)
            if owner is None or not await owner.send_transcription(message):
                self.undelivered.setdefault(session_id, deque(maxlen=MAX_UNDELIVERED)).append(message)

    def session_log(self, session_id: str, log_name: str) -> SessionLog:
        if session_id not in self.logs:
            path = self.server.store.speech_dir / log_name
            self.logs[session_id] = SessionLog(path, fsync=self.server.settings.fsync)
        return self.logs[session_id]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.handshake_times.append(time.monotonic())
        refusal = self.server.knobs.take_refusal()
        if refusal is not None:
            headers = {"Retry-After": f"{refusal.retry_after:g}"} if refusal.retry_after is not None else None
            raise json_error(refusal.status, "Handshake refused (test knob)", headers)
        user = self.server.authenticate(request)
        protocols = () if self.server.knobs.force_basic else (RESUME_PROTOCOL,)
        ws = web.WebSocketResponse(protocols=protocols, max_msg_size=4 * 1024 * 1024, timeout=CLOSE_TIMEOUT_S)
        await ws.prepare(request)
        self.sockets.add(ws)
        connection_id = str(uuid.uuid4())
        try:
            await ws.send_json({"type": "session_init", "session_id": connection_id})
            drop_after = self.server.knobs.take_drop()
            lie = self.server.knobs.take_lie()
            if lie is not None and lie.kind == "junk":
                for junk in lie.junk:
                    await (ws.send_bytes(junk) if isinstance(junk, bytes) else ws.send_str(junk))
            if ws.ws_protocol == RESUME_PROTOCOL:
                await ResumeConnection(self, request, ws, user, drop_after, lie).run()
            else:
                await BasicConnection(self, request, ws, connection_id, drop_after, lie).run()
        except ConnectionResetError:
            log.info("speech connection lost while sending")
        finally:
            self.sockets.discard(ws)
        return ws

    async def close_all(self) -> None:
        for pipe in self.pipes.values():
            pipe.cancel()
        for ws in list(self.sockets):
            await ws.close(code=1001, message=b"server shutting down")
        for session_log in self.logs.values():
            session_log.close()
        self.logs.clear()


def transcription_message(seg: TranscribedSegment, session_id: str) -> dict[str, Any]:
    """Resume mode's ``transcription``: the documented text line plus the same facts as fields, timeline times."""
    now = time.time()
    return {"type": "transcription", "text": format_line(seg), "speaker": seg.speaker,
            "start_time": round(seg.start / SAMPLE_RATE, 3), "end_time": round(seg.end / SAMPLE_RATE, 3),
            "final": True, "timestamp": now, "audio_file": f"audio_chunks/{session_id}_{int(now * 1000)}.wav"}


def abort(request: web.Request) -> None:
    """Cut the TCP connection without a close frame (the "drop" fault)."""
    if request.transport is not None:
        request.transport.abort()


class BasicConnection:
    """MediSync's documented mode: one binary message = one chunk, one transcription per chunk with speech."""

    def __init__(self, hub: SpeechHub, request: web.Request, ws: web.WebSocketResponse, connection_id: str,
                 drop_after: int | None, lie: Lie | None = None) -> None:
        self.hub, self.request, self.ws = hub, request, ws
        self.connection_id = connection_id
        self.drop_after = drop_after
        self.lie = lie
        rate = request.query.get("sample_rate", "")
        self.sample_rate = int(rate) if rate.isdigit() else SAMPLE_RATE
        self.chunks = 0
        self.pipe: TranscriptPipe[tuple[Span, float, str]] = TranscriptPipe(self._send_line)

    async def run(self) -> None:
        if self.lie is not None and self.lie.kind == "phantom_transcripts":  # results for chunks never sent
            for i in range(self.lie.amount):
                await self.ws.send_json({"type": "transcription", "text": f"[SPEAKER_0 | 0.000 --> 1.000]: phantom {i}",
                                         "timestamp": time.time()})
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.BINARY:
                    received = time.time()
                    self.chunks += 1
                    self.hub.server.basic.chunk_counts[hashlib.sha256(msg.data).hexdigest()] += 1
                    if self.drop_after is not None and self.chunks >= self.drop_after:
                        abort(self.request)
                        self.hub.server.knobs.dropped()
                        return
                    await self._answer(msg.data, received)
        finally:
            self.pipe.cancel()  # the client resends unanswered chunks on its next connection

    async def _answer(self, data: bytes, received: float) -> None:
        """Queue the chunk's speech for transcription; its one line is sent when ready, chunks in order."""
        try:
            pcm = decode_chunk(data, self.sample_rate)
        except ChunkRejected as exc:
            await self.ws.send_json({"type": "warning", "message": str(exc)})
            return
        detector = SpanDetector()
        spans = detector.feed(0, pcm) + detector.flush()
        if not spans:
            return
        whole = Span(spans[0].start, pcm[spans[0].start * 2: spans[-1].end * 2])
        digest = hashlib.sha256(data).hexdigest()
        await self.pipe.push([(self.hub.server.transcription.submit(whole), (whole, received, digest))])

    async def _send_line(self, segments: list[TranscribedSegment], chunk: tuple[Span, float, str]) -> None:
        whole, received, digest = chunk
        if not segments:  # the recogniser heard no words: like silence, no transcription (the client times out)
            return
        words = " ".join(s.text for s in segments)
        line = format_line(TranscribedSegment(segments[0].speaker, whole.start, whole.end, words))
        message = {"type": "transcription", "text": line, "timestamp": received,
                   "audio_file": f"audio_chunks/{self.connection_id}_{int(received * 1000)}.wav"}
        try:
            await self.ws.send_json(message)
            if self.lie is not None and self.lie.kind == "transcript_flood":
                for _ in range(self.lie.amount):
                    await self.ws.send_json(message)
        except ConnectionResetError:
            return
        self.hub.server.basic.transcriptions.append({**message, "chunk_sha256": digest})


class ResumeConnection:
    """``medisync.resume.v1``: seq-numbered frames stored durably exactly once, cumulative acks, resume by session."""

    def __init__(self, hub: SpeechHub, request: web.Request, ws: web.WebSocketResponse, user: User,
                 drop_after: int | None, lie: Lie | None = None) -> None:
        self.hub, self.server, self.request, self.ws, self.user = hub, hub.server, request, ws, user
        self.drop_after = drop_after
        self.lie = lie
        self.session_id: str | None = None
        self.appointment_id: str | None = None
        self.log: SessionLog | None = None
        self.superseded = False
        self.frames = 0
        self.pending_end: int | None = None
        self.pipe: TranscriptPipe[None] | None = None
        self._ack_due = asyncio.Event()

    async def run(self) -> None:
        acker = asyncio.create_task(self._ack_loop())
        try:
            async for msg in self.ws:
                if self.superseded:
                    continue
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type == WSMsgType.BINARY and await self._on_frame(msg.data):
                    return
        finally:
            acker.cancel()
            if self.session_id is not None and self.hub.owners.get(self.session_id) is self:
                del self.hub.owners[self.session_id]

    async def _close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode())

    async def _error(self, code: str, message: str, close_code: int) -> None:
        await self.ws.send_json({"type": "error", "code": code, "message": message, "retryable": False})
        await self._close(close_code, message)

    async def _on_text(self, text: str) -> None:
        try:
            message: Any = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            await self.ws.send_json({"type": "warning", "message": "text message is not JSON"})
            return
        kind = message.get("type") if isinstance(message, dict) else None
        try:
            await self._dispatch_text(kind, message)
        except (KeyError, ValueError, TypeError) as exc:
            await self._error("protocol", f"bad {kind} message ({type(exc).__name__})", CLOSE_PROTOCOL)

    async def _dispatch_text(self, kind: object, message: Any) -> None:
        if kind == "start":
            await self._on_start(message)
        elif self.log is None:
            await self._error("protocol", "start expected first", CLOSE_PROTOCOL)
        elif kind == "gap":
            self.log.append_gap(int(message["start"]), int(message["end"]), str(message.get("reason", "")))
            await self._emit(self.hub.detectors[self._sid()].flush())
        elif kind == "end":
            last_seq = message.get("last_seq")
            self.pending_end = self.log.next_seq - 1 if last_seq is None else int(last_seq)
            await self._maybe_closed()
        # unknown types are ignored, as the protocol requires

    def _sid(self) -> str:
        assert self.session_id is not None
        return self.session_id

    async def _on_start(self, message: dict[str, Any]) -> None:
        session_id, appointment_id = message.get("session_id"), message.get("appointment_id")
        if not isinstance(session_id, str) or not session_id or self.session_id is not None:
            await self._error("protocol", "start needs a session_id, once per connection", CLOSE_PROTOCOL)
            return
        appointment_id = None if appointment_id is None else str(appointment_id)
        owner = self.server.store.doc_owner(appointment_id) if appointment_id else None
        session = self.server.store.speech_session(session_id)
        if (owner is not None and owner != self.user.uid) or (session and session.uid != self.user.uid):
            await self._error("forbidden", "session or appointment belongs to another account", CLOSE_FORBIDDEN)
            return
        session = session or self.server.store.add_speech_session(session_id, self.user.uid, appointment_id)
        previous = self.hub.owners.get(session_id)
        if previous is not None and previous is not self:
            previous.superseded = True
            task = asyncio.create_task(previous._close(CLOSE_TAKEN_OVER, "taken over by a newer connection"))
            self.hub.background.add(task)
            task.add_done_callback(self.hub.background.discard)
        self.hub.owners[session_id] = self
        self.session_id, self.appointment_id = session_id, session.appointment_id
        self.log = self.hub.session_log(session_id, session.log_name)
        self.hub.detectors.setdefault(session_id, SpanDetector())
        self.pipe = self.hub.pipe(session_id, session.appointment_id)
        self.server.session_stats.setdefault(session_id, Counter())
        if self.lie is not None and self.lie.kind == "retry_error":
            await self.ws.send_str('{"type": "error", "code": "busy", "message": "try again later", "retryable": true, '
                                   f'"retry_after": {self.lie.retry_after_json}}}')
            await self._close(1013, "try again later")
            return
        next_seq = self.log.next_seq + self._lie_offset("ready_ahead")
        await self.ws.send_json({"type": "ready", "session_id": session_id, "next_seq": next_seq})
        await self._send_held(session_id)

    def _lie_offset(self, kind: str) -> int:
        return self.lie.amount if self.lie is not None and self.lie.kind == kind else 0

    async def _send_held(self, session_id: str) -> None:
        """Send the transcripts that were ready while no connection was there; keep what cannot go (oldest first)."""
        held = self.hub.undelivered.pop(session_id, deque())
        while held:
            if not await self.send_transcription(held[0]):
                held.extend(self.hub.undelivered.pop(session_id, ()))  # any held meanwhile come after
                self.hub.undelivered[session_id] = held
                return
            held.popleft()

    async def _on_frame(self, data: bytes) -> bool:
        """Handle one audio frame; True when the connection was closed or dropped."""
        if self.log is None:
            await self._error("protocol", "start expected before audio", CLOSE_PROTOCOL)
            return True
        payload_len = len(data) - FRAME_HEADER.size
        if payload_len < 0 or payload_len % 2 or payload_len > MAX_FRAME_PAYLOAD:
            await self._error("protocol", "bad frame size", CLOSE_PROTOCOL)
            return True
        seq, start = FRAME_HEADER.unpack_from(data)
        stats = self.server.session_stats[self._sid()]
        stats["frames_received"] += 1
        verdict = judge_seq(seq, self.log.next_seq)
        if verdict is FrameVerdict.FUTURE:
            await self._close(CLOSE_FUTURE_SEQ, f"expected seq {self.log.next_seq}")
            return True
        if verdict is FrameVerdict.DUPLICATE:
            stats["duplicates_ignored"] += 1
            self._ack_due.set()
            return False
        if start < self.log.end_sample:
            await self._error("protocol", "start went backwards", CLOSE_PROTOCOL)
            return True
        pcm = data[FRAME_HEADER.size:]
        self.log.append_frame(seq, start, pcm)  # written and fsynced before any ack can cover it
        self.frames += 1
        spans = self.hub.detectors[self._sid()].feed(start, pcm)  # stored audio is transcribed, even if cut now
        if self.drop_after is not None and self.frames >= self.drop_after:
            abort(self.request)
            self.server.knobs.dropped()
            await self._emit(spans)
            return True
        await self._emit(spans)
        self._ack_due.set()
        await self._maybe_closed()
        return False

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_due.wait()
            self._ack_due.clear()
            if self.server.knobs.ack_delay_s > 0:
                await asyncio.sleep(self.server.knobs.ack_delay_s)
            if self.server.knobs.withhold_acks or self.superseded or self.log is None or self.log.next_seq == 0:
                continue
            try:
                await self.ws.send_json({"type": "ack", "seq": self.log.next_seq - 1 + self._lie_offset("ack_ahead")})
            except ConnectionResetError:
                return

    async def _maybe_closed(self) -> None:
        if self.pending_end is None or self.log is None or self.log.next_seq <= self.pending_end:
            return
        await self._emit(self.hub.detectors[self._sid()].flush())
        self.server.store.close_speech_session(self._sid(), self.pending_end)
        await self.ws.send_json({"type": "closed", "last_seq": self.pending_end + self._lie_offset("closed_ahead")})
        self.pending_end = None

    async def _emit(self, spans: list[Span]) -> None:
        """Hand closed spans to the transcription worker; their transcripts follow in span order, never waited for
        here (acks and ``closed`` do not wait on the recogniser)."""
        if spans and self.pipe is not None:
            await self.pipe.push([(self.server.transcription.submit(span), None) for span in spans])

    async def send_transcription(self, message: dict[str, Any]) -> bool:
        """Send one transcription on this connection; False if it is no longer the session's live one."""
        if self.superseded or self.ws.closed:
            return False
        try:
            await self.ws.send_json(message)
        except ConnectionResetError:
            return False
        self.server.sent_transcriptions.setdefault(self._sid(), []).append(message)
        return True
