"""One speech-socket connection (adapter): handshake, session_init, start/ready, send, receive, watchdog, end.

:func:`dial` opens the WebSocket and translates handshake refusals into :class:`Ended` outcomes. A
:class:`Connection` then runs three tasks until the first of them ends: the receiver (always reading, so pongs and
acks are never starved), the sender (reads only from the send ring / basic outbox, paced) and the ack watchdog. The
moment one ends the others are cancelled: nothing more is written into a connection that is being replaced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from agent import BYTES_PER_SAMPLE, SAMPLE_RATE
from agent.errors import ProtocolError
from agent.settings import StreamSettings
from agent.stream import wire
from agent.stream.basic import BasicOutbox
from agent.stream.policy import AckWatchdog, Failure, Pacer
from agent.stream.ring import SendRing

log = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403


@dataclass(frozen=True, slots=True)
class Ended:
    """How a connection (or a dial) ended."""

    failure: Failure | None
    """None: the visit was confirmed complete (``closed`` / every chunk done)."""
    reason: str
    retry_after: float | None = None


class EndConnection(Exception):
    def __init__(self, ended: Ended) -> None:
        super().__init__(ended.reason)
        self.ended = ended


def transcribe_url(speech_url: str, appointment_id: str, session_id: str) -> str:
    base = speech_url.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[4:]
    query = {"appointment_id": appointment_id, "session_id": session_id, "sample_rate": SAMPLE_RATE,
             "encoding": "pcm_s16le", "channels": 1}  # fmt: skip
    return f"{base}/ws/transcribe?{urlencode(query)}"


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now_wall)
    except (TypeError, ValueError):
        return None


async def dial(url: str, token: str, settings: StreamSettings) -> ClientConnection | Ended:
    try:
        return await connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            subprotocols=[wire.RESUME_SUBPROTOCOL],  # type: ignore[list-item]
            open_timeout=settings.connect_timeout_s,
            ping_interval=settings.ping_interval_s,
            ping_timeout=settings.ping_timeout_s,
            close_timeout=2.0,
            compression=None,
            proxy=None,
            max_size=1 << 20,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        retry_after = parse_retry_after(exc.response.headers.get("Retry-After"), time.time())
        failure = {401: Failure.UNAUTHORIZED, 403: Failure.FORBIDDEN}.get(status, Failure.TRANSIENT)
        return Ended(failure, f"handshake refused with HTTP {status}", retry_after)
    except InvalidURI as exc:
        return Ended(Failure.FATAL, f"bad speech URL: {exc}")
    except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
        return Ended(Failure.TRANSIENT, f"connect failed: {type(exc).__name__}")


class Connection:
    def __init__(self, ws: ClientConnection, *, settings: StreamSettings, ring: SendRing, basic: BasicOutbox,
                 start: wire.Start, on_message: Callable[[wire.ServerMessage | wire.Unknown], None],
                 wake: asyncio.Event, clock: Callable[[], float]) -> None:  # fmt: skip
        self.ws = ws
        self.resume = ws.subprotocol == wire.RESUME_SUBPROTOCOL
        self._settings = settings
        self._ring, self._basic = ring, basic
        self._start = start
        self._on_message = on_message
        self._wake = wake
        self._clock = clock
        self._session_init = asyncio.Event()
        self._ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._closed = asyncio.Event()
        self.watchdog = AckWatchdog(settings.ack_timeout_s, clock())
        self.end_sent = False
        self.finishing = False
        self.final_sample = 0

    async def run(self) -> Ended:
        tasks = [asyncio.create_task(t) for t in (self._receive(), self._send(), self._watch())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            exc = next(iter(done)).exception()
            if isinstance(exc, EndConnection):
                if exc.ended.failure is None:
                    async with asyncio.timeout(2.0):
                        await self.ws.close()
                return exc.ended
            if isinstance(exc, ConnectionClosed | OSError | TimeoutError | ProtocolError):
                return Ended(Failure.TRANSIENT, f"connection failed: {type(exc).__name__}")
            if exc is not None:
                raise exc
            return Ended(Failure.TRANSIENT, "connection task ended")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._ring.on_disconnected()
            self.ws.transport.abort()

    # --- receiving -----------------------------------------------------------------------------------------------

    async def _receive(self) -> None:
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    continue  # the protocol has no server-to-client audio
                self._dispatch(wire.decode(raw))
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            raise EndConnection(Ended(Failure.TRANSIENT, str(exc))) from None
        code = self.ws.close_code
        if code == CLOSE_FORBIDDEN:
            raise EndConnection(Ended(Failure.FORBIDDEN, "server closed: no active subscription"))
        raise EndConnection(Ended(Failure.TRANSIENT, f"connection closed (code {code})"))

    def _dispatch(self, msg: wire.ServerMessage | wire.Unknown) -> None:
        if isinstance(msg, wire.SessionInit):
            self._session_init.set()
        elif isinstance(msg, wire.Ready):
            if not self._ready.done():
                self._ready.set_result(msg.next_seq)
        elif isinstance(msg, wire.Ack):
            progressed = self._ring.on_ack(msg.seq)
            self.watchdog.update(self._ring.outstanding, progressed, self._clock())
        elif isinstance(msg, wire.Closed):
            self._ring.on_closed()
            if self.end_sent and msg.last_seq >= self._ring.last_seq:
                # `closed` confirms everything up to last_seq as stored: count it so even when the last ack is
                # still on its way (a server may send `closed` first; on a slow machine it often does).
                if self._ring.last_seq >= 0:
                    self._ring.on_ack(self._ring.last_seq)
                raise EndConnection(Ended(None, "server confirmed the visit"))
        elif isinstance(msg, wire.Error):
            retry_after = msg.retry_after
            failure = Failure.TRANSIENT if msg.retryable else Failure.FATAL
            raise EndConnection(Ended(failure, f"server error {msg.code!r}", retry_after))
        elif isinstance(msg, wire.ServerWarning):
            log.warning("speech server warning (code %s)", msg.code)
        self._on_message(msg)
        self._wake.set()

    # --- sending -------------------------------------------------------------------------------------------------

    async def _send(self) -> None:
        try:
            async with asyncio.timeout(self._settings.session_init_timeout_s):
                await self._session_init.wait()
        except TimeoutError:
            log.info("no session_init within %.1f s; proceeding", self._settings.session_init_timeout_s)
        if self.resume:
            await self.ws.send(wire.encode(self._start))
            async with asyncio.timeout(self._settings.connect_timeout_s):
                next_seq = await self._ready
            self._ring.on_ready(next_seq)
            await self._send_resume()
        else:
            self._basic.on_connected()
            await self._send_basic()

    async def _send_resume(self) -> None:
        pacer = Pacer(self._settings.replay_speed, self._settings.replay_message_ms / 1000, self._clock())
        # Only the replay is paced: audio that waited in the ring while there was no connection. Fresh audio goes
        # out as it comes, also when a file source produces it faster than real time.
        replay_end = self._ring.timeline_end
        while True:
            self._wake.clear()
            for gap in self._ring.gaps_to_send():
                await self.ws.send(wire.encode(gap))
            msg = self._ring.next_message()
            if msg is None:
                if self.finishing and not self.end_sent:
                    end = wire.End(last_seq=self._ring.last_seq, final_sample=self.final_sample)
                    await self.ws.send(wire.encode(end))
                    self.end_sent = True
                await self._wake.wait()
                continue
            audio_s = len(msg.pcm) / (SAMPLE_RATE * BYTES_PER_SAMPLE)
            replay = msg.start < replay_end
            delay = pacer.delay(audio_s, self._clock()) if replay else 0.0
            if delay > 0:
                await asyncio.sleep(delay)
                continue  # the ring may have changed meanwhile (acks, drops)
            await self.ws.send(wire.encode_audio(msg.seq, msg.start, msg.pcm))
            if replay:
                pacer.spend(audio_s, self._clock())
            self._ring.mark_sent(msg.seq, paced=replay)
            self.watchdog.update(self._ring.outstanding, False, self._clock())

    async def _send_basic(self) -> None:
        while True:
            self._wake.clear()
            self._basic.expire(self._clock())
            if self.finishing and self._basic.drained:
                raise EndConnection(Ended(None, "every chunk done"))
            chunk = self._basic.next_chunk()
            if chunk is not None:
                await self.ws.send(self._basic.payload(chunk))
                self._basic.mark_sent(chunk, self._clock())
                continue
            deadline = self._basic.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    # --- liveness ------------------------------------------------------------------------------------------------

    async def _watch(self) -> None:
        if not self.resume:
            await asyncio.Event().wait()  # basic mode: keepalive pings are the only liveness check
        # Sleep until the watchdog's deadline instead of polling (each wake-up of the loop costs CPU). A deadline
        # only ever moves later (progress restarts it from now; one that appears starts now + timeout), so waking
        # at the deadline seen, or after a full timeout when none is set, never misses one.
        timeout = self._settings.ack_timeout_s
        while True:
            deadline = self.watchdog.deadline()
            now = self._clock()
            await asyncio.sleep(timeout if deadline is None else max(0.0, deadline - now))
            if self.watchdog.expired(self._clock()):
                raise EndConnection(Ended(Failure.TRANSIENT, "no ack progress: connection considered dead"))
