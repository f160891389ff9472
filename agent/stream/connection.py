"""One speech-socket connection (adapter): dial, then pump bytes between the socket and the session.

:func:`dial` opens the WebSocket and translates handshake refusals into :class:`~agent.stream.actions.Ended`
outcomes. :func:`run_connection` then runs two tasks until the first of them ends: the receiver (always reading,
so pongs and acks are never starved) and the sender (writes what :meth:`SpeechSession.poll` hands out and sleeps
until the session's next deadline or a wake-up). All decisions are the session's (:mod:`agent.stream.session`);
the moment one task ends the other is cancelled: nothing more is written into a connection being replaced.
:func:`tcp_probe` is the cheap reachability check the supervisor makes while it waits to dial again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from urllib.parse import urlencode, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import CloseCode

from agent import SAMPLE_RATE
from agent.backoff import parse_retry_after
from agent.errors import ProtocolError
from agent.settings import StreamSettings
from agent.stream import wire
from agent.stream.actions import Ended
from agent.stream.policy import Failure
from agent.stream.session import SpeechSession

log = logging.getLogger(__name__)

TranscriptSink = Callable[[wire.TranscriptEvent], None]


def transcribe_url(speech_url: str, appointment_id: str, session_id: str) -> str:
    base = speech_url.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[4:]
    query = {"appointment_id": appointment_id, "session_id": session_id, "sample_rate": SAMPLE_RATE,
             "encoding": "pcm_s16le", "channels": 1}  # fmt: skip
    return f"{base}/ws/transcribe?{urlencode(query)}"


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
            max_size=wire.MAX_MESSAGE_BYTES,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        retry_after = parse_retry_after(exc.response.headers.get("Retry-After"), time.time())
        failure = {401: Failure.UNAUTHORIZED, 403: Failure.FORBIDDEN}.get(status, Failure.TRANSIENT)
        return Ended(failure, f"handshake refused with HTTP {status}", retry_after)
    except InvalidURI as exc:
        return Ended(Failure.FATAL, f"bad speech URL: {exc}")
    except OSError as exc:  # refused, unreachable, timed out (TimeoutError is an OSError): the link, likely
        return Ended(Failure.TRANSIENT, f"connect failed: {type(exc).__name__}", unreachable=True)
    except (InvalidHandshake, ConnectionClosed) as exc:
        return Ended(Failure.TRANSIENT, f"connect failed: {type(exc).__name__}")


def speech_address(url: str) -> tuple[str, int]:
    """Host and TCP port a ``ws``/``wss``/``http``/``https`` URL dials."""
    parts = urlsplit(url)
    default = 443 if parts.scheme in ("wss", "https") else 80
    return parts.hostname or "localhost", parts.port or default


async def tcp_probe(host: str, port: int, timeout_s: float) -> bool:
    """True if a TCP connection to ``host:port`` opens within ``timeout_s`` (closed again at once)."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.transport.abort()
    return True


async def run_connection(ws: ClientConnection, session: SpeechSession, *, clock: Callable[[], float],
                         wake: asyncio.Event, on_transcript: TranscriptSink | None) -> Ended:  # fmt: skip
    """Pump one open connection until it ends; returns how."""
    tasks = [asyncio.create_task(_receive(ws, session, clock, wake, on_transcript)),
             asyncio.create_task(_send(ws, session, clock, wake))]  # fmt: skip
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        task = next(iter(done))
        exc = task.exception()
        if exc is None:
            ended = task.result()
            if ended.failure is None:  # confirmed: close politely, but a slow close changes nothing
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await ws.close()
            return ended
        if isinstance(exc, ConnectionClosed | OSError | TimeoutError | ProtocolError):
            return Ended(Failure.TRANSIENT, f"connection failed: {type(exc).__name__}")
        raise exc
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ws.transport.abort()


async def _receive(ws: ClientConnection, session: SpeechSession, clock: Callable[[], float], wake: asyncio.Event,
                   on_transcript: TranscriptSink | None) -> Ended:  # fmt: skip
    try:
        async for raw in ws:
            got = session.receive(raw, clock())
            if got.transcript is not None and on_transcript is not None:
                on_transcript(got.transcript)
            if got.ended is not None:
                return got.ended
            if got.wake:
                wake.set()
    except ConnectionClosed as exc:
        if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
            return session.peer_closed(None, too_big=True)
    return session.peer_closed(ws.close_code)


async def _send(ws: ClientConnection, session: SpeechSession, clock: Callable[[], float],
                wake: asyncio.Event) -> Ended:  # fmt: skip
    """Write what the session hands out; between writes wait for a wake-up or the session's deadline.

    One poll per wake-up when the session has nothing more (:meth:`SpeechSession.more`), and one timer for the
    deadline, moved only when the deadline comes earlier than it: a later deadline (the ack watchdog's moves with
    every ack) lets the timer fire early once and be set again, instead of a timer made and cancelled per block."""
    loop = asyncio.get_running_loop()
    timer: asyncio.TimerHandle | None = None
    timer_at = 0.0

    def alarm() -> None:
        nonlocal timer
        timer = None
        wake.set()

    try:
        while True:
            wake.clear()
            out = session.poll(clock())
            if isinstance(out, Ended):
                return out
            if out is not None:
                await ws.send(out)
                session.sent(clock())
                if session.more(clock()):
                    continue
            deadline = session.deadline()
            if deadline is not None and (timer is None or deadline < timer_at):
                if timer is not None:
                    timer.cancel()
                timer, timer_at = loop.call_later(max(0.0, deadline - clock()), alarm), deadline
            await wake.wait()
    finally:
        if timer is not None:
            timer.cancel()
