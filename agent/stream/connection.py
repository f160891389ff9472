"""One speech-socket connection (adapter): dial, then pump messages between the socket and the session.

:func:`dial` opens a :class:`~agent.stream.link.SpeechLink` (websockets' sans-I/O protocol over an asyncio
transport) and translates handshake refusals into :class:`~agent.stream.actions.Ended` outcomes.
:func:`run_connection` then drives the session from the link's callbacks, without tasks: each message read is
handed to :meth:`SpeechSession.receive` where the transport delivered it, and what :meth:`SpeechSession.poll` hands
out is written at once from wherever the session got something to write (a block fed, a message read, its own
deadline timer, the write buffer draining below its limit). All decisions are the session's
(:mod:`agent.stream.session`); once the connection's end is decided nothing more is written into it.
:func:`tcp_probe` is the cheap reachability check the supervisor makes while it waits to dial again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlencode, urljoin, urlsplit

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.uri import parse_uri

from agent import SAMPLE_RATE
from agent.backoff import parse_retry_after
from agent.errors import ProtocolError
from agent.settings import StreamSettings
from agent.stream import wire
from agent.stream.actions import Ended
from agent.stream.link import SpeechLink
from agent.stream.policy import Failure
from agent.stream.session import SpeechSession

log = logging.getLogger(__name__)

TranscriptSink = Callable[[wire.TranscriptEvent], None]
CLOSE_TIMEOUT_S = 2.0
"""Seconds a close handshake may take (ours at the visit's end, or after the server's close frame)."""
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
"""Redirects one dial follows (websockets' own ``connect`` stopped at the same number)."""


def transcribe_url(speech_url: str, appointment_id: str, session_id: str) -> str:
    base = speech_url.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[4:]
    query = {"appointment_id": appointment_id, "session_id": session_id, "sample_rate": SAMPLE_RATE,
             "encoding": "pcm_s16le", "channels": 1}  # fmt: skip
    return f"{base}/ws/transcribe?{urlencode(query)}"


async def dial(url: str, token: str, settings: StreamSettings, *,
               ssl_context: ssl.SSLContext | None = None) -> SpeechLink | Ended:  # fmt: skip
    """Open the socket and do the opening handshake within ``connect_timeout_s`` (``wss``: TLS with
    ``ssl_context``, default: the system's trust store, checking the URL's host name). A redirect (301, 302, 303,
    307, 308) is followed, at most :data:`MAX_REDIRECTS` times, when :func:`redirect_target` allows it."""
    for _ in range(MAX_REDIRECTS + 1):
        dialled = await _dial_once(url, token, settings, ssl_context)
        if not isinstance(dialled, str):
            return dialled
        log.info("speech socket redirected (the path or port changed; the host did not)")
        url = dialled
    return Ended(Failure.TRANSIENT, f"handshake refused: more than {MAX_REDIRECTS} redirects")


def redirect_target(url: str, location: str) -> str | None:
    """The ``ws``/``wss`` URL a redirect's ``Location`` (absolute or relative, ``http(s)`` or ``ws(s)``) points at,
    or None when following it would hand the bearer token to someone else: another host, or from ``wss`` to an
    unencrypted ``ws`` or ``http``."""
    target = urlsplit(urljoin(url, location))
    scheme = {"http": "ws", "https": "wss"}.get(target.scheme, target.scheme)
    source = urlsplit(url)
    if scheme not in ("ws", "wss") or (source.scheme == "wss" and scheme != "wss"):
        return None
    if (target.hostname or "").lower() != (source.hostname or "").lower():
        return None
    return target._replace(scheme=scheme).geturl()


async def _dial_once(url: str, token: str, settings: StreamSettings,
                     ssl_context: ssl.SSLContext | None) -> SpeechLink | Ended | str:  # fmt: skip
    """:func:`dial` without redirects: a redirect it may follow comes back as the URL to dial next."""
    try:
        uri = parse_uri(url)
    except InvalidURI as exc:
        return Ended(Failure.FATAL, f"bad speech URL: {exc}")
    protocol = ClientProtocol(uri, subprotocols=[wire.RESUME_SUBPROTOCOL],  # type: ignore[list-item]
                              max_size=wire.MAX_MESSAGE_BYTES)  # fmt: skip
    factory = functools.partial(SpeechLink, protocol, {"Authorization": f"Bearer {token}"},
                                ping_interval_s=settings.ping_interval_s, ping_timeout_s=settings.ping_timeout_s,
                                close_timeout_s=CLOSE_TIMEOUT_S)  # fmt: skip
    tls: ssl.SSLContext | bool | None = (ssl_context or True) if uri.secure else None
    try:
        async with asyncio.timeout(settings.connect_timeout_s):
            _, link = await asyncio.get_running_loop().create_connection(
                factory, uri.host, uri.port, ssl=tls, server_hostname=uri.host if uri.secure else None
            )
            try:
                await link.opened
            except BaseException:
                link.abort()
                raise
    except InvalidStatus as exc:
        status = exc.response.status_code
        location = exc.response.headers.get("Location")
        if status in REDIRECT_STATUSES and location:
            target = redirect_target(url, location)
            if target is not None:
                return target
            return Ended(Failure.TRANSIENT, f"handshake redirected (HTTP {status}) to another host or to an "
                                            "unencrypted URL: not followed, the token would go with it")  # fmt: skip
        retry_after = parse_retry_after(exc.response.headers.get("Retry-After"), time.time())
        failure = {401: Failure.UNAUTHORIZED, 403: Failure.FORBIDDEN}.get(status, Failure.TRANSIENT)
        return Ended(failure, f"handshake refused with HTTP {status}", retry_after)
    except OSError as exc:  # refused, unreachable, timed out (TimeoutError is an OSError): the link, likely
        return Ended(Failure.TRANSIENT, f"connect failed: {type(exc).__name__}", unreachable=True)
    except InvalidHandshake as exc:
        return Ended(Failure.TRANSIENT, f"connect failed: {type(exc).__name__}")
    return link


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


class Wake:
    """What the stream calls when the session may have something new to write: pumps the live connection now."""

    __slots__ = ("_pump",)

    def __init__(self) -> None:
        self._pump: Callable[[], None] | None = None

    def set(self) -> None:
        if self._pump is not None:
            self._pump()

    def bind(self, pump: Callable[[], None] | None) -> None:
        """What :meth:`set` calls from now on (None: nothing, no connection is open)."""
        self._pump = pump


async def run_connection(link: SpeechLink, session: SpeechSession, *, clock: Callable[[], float], wake: Wake,
                         on_transcript: TranscriptSink | None) -> Ended:  # fmt: skip
    """Pump one open connection until it ends; returns how."""
    driver = _Driver(link, session, clock, on_transcript)
    wake.bind(driver.pump)
    try:
        link.attach(driver.receive, driver.pump, driver.lost)
        driver.pump()
        ended = await driver.ended
        if ended.failure is None:  # confirmed: close politely, but a slow close changes nothing
            await link.close()
        return ended
    finally:
        wake.bind(None)
        driver.stop()
        link.detach()
        link.abort()


class _Driver:
    """The session's side of one connection: messages in, messages out, the session's deadline as one timer."""

    def __init__(self, link: SpeechLink, session: SpeechSession, clock: Callable[[], float],
                 on_transcript: TranscriptSink | None) -> None:  # fmt: skip
        self._link, self._session, self._clock, self._on_transcript = link, session, clock, on_transcript
        self._loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[Ended] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def receive(self, raw: str | bytes) -> None:
        """One message read (also while a confirmed connection closes: late transcripts still count)."""
        try:
            got = self._session.receive(raw, self._clock())
            if got.transcript is not None and self._on_transcript is not None:
                self._on_transcript(got.transcript)
        except Exception as exc:
            if not self.ended.done():
                self._failed(exc)
            return
        if self.ended.done():
            return
        if got.ended is not None:
            self.ended.set_result(got.ended)
        elif got.wake:
            self.pump()

    def pump(self) -> None:
        """Write what the session hands out while the link takes it; then wait for its deadline or a wake-up.

        One poll per wake-up when the session has nothing more (:meth:`SpeechSession.more`), and one timer for the
        deadline, moved only when the deadline comes earlier than it: a later deadline (the ack watchdog's moves
        with every ack) lets the timer fire early once and be set again, instead of a timer made and cancelled per
        block. While the write buffer is full nothing is polled: the link calls this again once it drained."""
        if self.ended.done() or not self._link.writable:
            return
        session, clock = self._session, self._clock
        try:
            while True:
                out = session.poll(clock())
                if isinstance(out, Ended):
                    self.ended.set_result(out)
                    return
                if out is None:
                    break
                self._link.send(out, hold_reads=session.reads_may_wait())
                session.sent(clock())
                if not self._link.writable or not session.more(clock()):
                    break
        except Exception as exc:
            self._failed(exc)
            return
        deadline = session.deadline()
        if deadline is not None and (self._timer is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = self._loop.call_later(max(0.0, deadline - clock()), self._alarm), deadline

    def lost(self) -> None:
        if not self.ended.done():
            self.ended.set_result(self._session.peer_closed(self._link.close_code, too_big=self._link.too_big))

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _alarm(self) -> None:
        self._timer = None
        self.pump()

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, OSError | ProtocolError):
            self.ended.set_result(Ended(Failure.TRANSIENT, f"connection failed: {type(exc).__name__}"))
        else:  # a bug: raised from run_connection (the supervisor logs it and goes on)
            self.ended.set_exception(exc)
