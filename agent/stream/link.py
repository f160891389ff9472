"""The speech socket (adapter): websockets' sans-I/O ``ClientProtocol`` over an asyncio transport.

:class:`SpeechLink` is an :class:`asyncio.Protocol`: the bytes the transport reads go into the WebSocket protocol in
:meth:`~SpeechLink.data_received`, and each whole message read is handed to the attached sink right there (no task
wakes for it); :meth:`~SpeechLink.send` frames a message and writes it with ``transport.write`` at once. What
websockets' own asyncio connection adds is done here with loop timers and transport callbacks instead of tasks:

- the opening handshake (request with the bearer token and the resume subprotocol; :attr:`SpeechLink.opened`
  resolves with the response, or fails with websockets' own handshake exception, e.g. ``InvalidStatus``);
- keepalive: a ping every ``ping_interval_s``; no pong within ``ping_timeout_s`` fails the connection (close 1011);
- back-pressure: the transport's write buffer above :data:`WRITE_LIMIT` pauses the writer (:attr:`writable`
  False, the owner's ``on_writable`` called once it drained), instead of an awaited drain;
- the close handshake: a close frame (ours or the server's) is given ``close_timeout_s`` for the server to close
  the TCP connection, then the transport is aborted; :attr:`lost` resolves when the connection is gone;
- resume mode: while audio flows, what the server sends (its acks) is read in the wake-up of the next audio send,
  not in a wake-up of its own (:mod:`agent.stream.readhold`; at most 0.5 s later, an end or error at once).

Message size is websockets' ``max_size`` (a bigger message fails the connection with MESSAGE_TOO_BIG, see
:attr:`too_big`). Fragmented messages are assembled; a text message that is not UTF-8 fails the connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping

from websockets.client import ClientProtocol
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import USER_AGENT, Response
from websockets.protocol import OPEN

from agent.stream.readhold import HeldReads, held_reads

log = logging.getLogger(__name__)

WRITE_LIMIT = 2**15
"""Bytes in the transport's write buffer above which the writer pauses (websockets' own default write limit)."""

MessageSink = Callable[[str | bytes], None]
Data = bytes | bytearray | memoryview


class SpeechLink(asyncio.Protocol):
    def __init__(self, protocol: ClientProtocol, headers: Mapping[str, str], *, ping_interval_s: float | None,
                 ping_timeout_s: float | None, close_timeout_s: float = 2.0) -> None:  # fmt: skip
        self._ws = protocol
        self._headers = headers
        self._ping_interval, self._ping_timeout, self._close_timeout = ping_interval_s, ping_timeout_s, close_timeout_s
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = self._loop.create_future()
        """Resolves when the server accepted the handshake; fails with websockets' handshake exception."""
        self.lost: asyncio.Future[None] = self._loop.create_future()
        """Resolves when the TCP connection is gone."""
        self.subprotocol: str | None = None
        self.writable = False
        """True while messages may be written now: open, and the write buffer below :data:`WRITE_LIMIT`."""
        self._paused = False
        self._failed = False
        self._parts: list[Data] = []
        self._text = False
        self._sink: MessageSink | None = None
        self._held: list[str | bytes] = []
        self._on_writable: Callable[[], None] | None = None
        self._on_lost: Callable[[], None] | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._ping: tuple[bytes, float] | None = None
        self._reads: HeldReads | None = None
        """Resume mode: reads wait for the next audio send while audio flows (:mod:`agent.stream.readhold`)."""

    # --- the owner's side ------------------------------------------------------------------------------------------

    def attach(self, sink: MessageSink, on_writable: Callable[[], None], on_lost: Callable[[], None]) -> None:
        """Hand every message read to ``sink`` (those read since the handshake first); ``on_writable`` after a pause,
        ``on_lost`` once the connection is gone (at once if it already is)."""
        self._sink, self._on_writable, self._on_lost = sink, on_writable, on_lost
        held, self._held = self._held, []
        for message in held:
            sink(message)
        if self.lost.done():
            on_lost()

    def detach(self) -> None:
        self._sink = self._on_writable = self._on_lost = None

    def send(self, message: str | bytes, *, hold_reads: bool = False) -> None:
        """Frame one message and write it now (call only while :attr:`writable`). ``hold_reads``: live audio, after
        which what the server sends may wait for a later send (:mod:`agent.stream.readhold`); any other message
        (``start``, ``gap``, ``end``, replayed audio: what the session waits an answer for) has reads as usual."""
        if isinstance(message, str):
            self._ws.send_text(message.encode())
        else:
            self._ws.send_binary(message)
        self._flush()
        if self._reads is not None:
            if hold_reads:
                self._reads.audio_sent()
            else:
                self._reads.release()

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    @property
    def too_big(self) -> bool:
        """Whether we closed the connection because the server sent a message over the size limit."""
        sent = self._ws.close_sent
        return sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG

    async def close(self) -> None:
        """The close handshake, bounded by ``close_timeout_s``; the transport is aborted after it either way."""
        if self._ws.state is OPEN:
            self._ws.send_close()
            self._after_close_frame()
        try:
            async with asyncio.timeout(self._close_timeout):
                await asyncio.shield(self.lost)
        except TimeoutError:  # a slow close changes nothing for the visit: the transport is aborted below
            log.debug("speech socket: no close within %.1f s; connection aborted", self._close_timeout)
        finally:
            self.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- asyncio.Protocol ------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_LIMIT)
        request = self._ws.connect()
        request.headers.update(self._headers)
        request.headers.setdefault("User-Agent", USER_AGENT)
        self._ws.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self._reads is not None:
            self._reads.read()
        self._ws.receive_data(data)
        self._after_receive()

    def eof_received(self) -> None:
        self._ws.receive_eof()
        self._after_receive()

    def connection_lost(self, exc: Exception | None) -> None:
        self._ws.receive_eof()  # idempotent; the protocol's state is CLOSED and its close code known after it
        self.writable = False
        if self._reads is not None:
            self._reads.lost()
            self._reads = None
        for timer in (self._ping_timer, self._pong_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        if not self.opened.done():
            self.opened.set_exception(self._ws.handshake_exc or ConnectionError("closed during the handshake"))
            self.opened.exception()  # retrieved: a failed dial is reported through dial's own result
        self.lost.set_result(None)
        if self._on_lost is not None:
            self._on_lost()

    def pause_writing(self) -> None:
        self._paused, self.writable = True, False

    def resume_writing(self) -> None:
        self._paused = False
        self.writable = self._ws.state is OPEN
        if self.writable and self._on_writable is not None:
            self._on_writable()

    # --- inside ----------------------------------------------------------------------------------------------------

    def _flush(self) -> None:
        transport = self._transport
        assert transport is not None
        for data in self._ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()

    def _after_receive(self) -> None:
        self._flush()  # pongs, the echo of a close frame, the end of the stream after a failed handshake
        if self._ws.state is not OPEN:  # before any message is handed on: its sink may want to write
            self.writable = False
        for event in self._ws.events_received():
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Response):
                self._opened()
        if not self.opened.done() and self._ws.handshake_exc is not None:
            self.opened.set_exception(self._ws.handshake_exc)
        if self._ws.state is not OPEN:
            self.writable = False
            if self._ws.close_expected():
                self._after_close_frame()

    def _opened(self) -> None:
        if self._ws.handshake_exc is not None:
            self.opened.set_exception(self._ws.handshake_exc)
            return
        self.subprotocol = self._ws.subprotocol
        self.writable = not self._paused and self._ws.state is OPEN
        if self.subprotocol is not None and self._transport is not None:  # resume mode: the server acks audio
            self._reads = held_reads(self._transport)
        if self._ping_interval is not None:
            self._ping_timer = self._loop.call_later(self._ping_interval, self._send_ping)
        self.opened.set_result(None)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._text = opcode is Opcode.TEXT
            if frame.fin:
                self._deliver(frame.data)
            else:
                self._parts = [frame.data]
        elif opcode is Opcode.CONT:
            self._parts.append(frame.data)
            if frame.fin:
                data, self._parts = b"".join(self._parts), []
                self._deliver(data)
        elif opcode is Opcode.PONG:
            self._pong(frame.data)

    def _deliver(self, data: Data) -> None:
        message: str | bytes = data if isinstance(data, bytes) else bytes(data)
        if self._text:
            try:
                message = str(data, "utf-8")
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                return
        if self._failed:  # a message of this batch was unusable: nothing after it counts
            return
        if self._sink is None:
            self._held.append(message)
        else:
            self._sink(message)

    def _fail(self, code: CloseCode, reason: str) -> None:
        self._failed = True
        self._ws.fail(code, reason)
        self._flush()
        self.writable = False
        self._after_close_frame()

    def _after_close_frame(self) -> None:
        """A close frame went out or came in: the server should close the TCP connection within the timeout."""
        self._flush()
        self.writable = False
        if self._reads is not None and not self.lost.done():  # the close handshake is read at once
            self._reads.release()
        if self._close_timer is None and not self.lost.done():
            self._close_timer = self._loop.call_later(self._close_timeout, self.abort)

    def _send_ping(self) -> None:
        self._ping_timer = None
        if self._ws.state is not OPEN:
            return
        payload = os.urandom(4)
        self._ping = (payload, self._loop.time())
        self._ws.send_ping(payload)
        self._flush()
        if self._ping_timeout is not None:
            self._pong_timer = self._loop.call_later(self._ping_timeout, self._ping_timed_out)
        else:
            self._ping = None
            assert self._ping_interval is not None
            self._ping_timer = self._loop.call_later(self._ping_interval, self._send_ping)

    def _pong(self, data: Data) -> None:
        if self._ping is None or data != self._ping[0]:
            return  # unsolicited, or an earlier ping's
        latency = self._loop.time() - self._ping[1]
        self._ping = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
        assert self._ping_interval is not None
        self._ping_timer = self._loop.call_later(max(0.0, self._ping_interval - latency), self._send_ping)

    def _ping_timed_out(self) -> None:
        self._pong_timer = None
        log.debug("speech socket: no pong within %.1f s", self._ping_timeout)
        if self._ws.state is OPEN:
            self._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
