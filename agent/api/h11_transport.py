"""HTTP/1.1 for httpx over asyncio streams and h11, without httpcore (issue 11: the daemon's memory).

httpx's default transport goes through httpcore, which runs on anyio under asyncio: httpcore imports anyio, and
its first request imports anyio's asyncio backend; together about 1.7 MB resident in the daemon, for a few
requests per visit. :class:`AsyncioTransport` is the part of that transport the agent uses: HTTP/1.1 through h11
(the same parser httpcore uses), keep-alive connections per origin, TLS with httpx's own default context (certifi's
CAs, ``SSL_CERT_FILE``) built at the first https connection, httpx's connect/read/write timeouts, and httpx's
exception types, so callers see what they saw before. Not supported: HTTP/2, a connection limit (the agent sends
one request at a time per client), proxies: with a proxy variable in the environment (``HTTPS_PROXY`` ...)
:func:`default_transport` leaves the client to httpx's own transports, which honour them as before.
"""

from __future__ import annotations

import asyncio
import select
import ssl
import urllib.request
from collections.abc import AsyncIterator
from typing import NoReturn

import h11
import httpx

READ_BYTES = 64 * 1024
"""Bytes asked of the socket per read."""
MAX_INCOMPLETE_EVENT_BYTES = 100 * 1024
"""Largest response head h11 buffers (httpcore's value)."""
MAX_IDLE_PER_ORIGIN = 2
"""Idle keep-alive connections kept per (scheme, host, port); more are closed."""

NO_RESPONSE = "Server disconnected without sending a response."
"""httpcore's words for a connection closed before a response head, kept for logs that compare."""

Origin = tuple[bytes, str, int]


class _Connection:
    """One TCP (or TLS) connection and its h11 state machine."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        self.reader = reader
        self.writer = writer
        self.origin = origin
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_INCOMPLETE_EVENT_BYTES)
        self.write_error: httpx.WriteError | None = None
        """A failed write of the current request's body, raised if no response follows."""

    def idle_and_open(self) -> bool:
        """True when a new request can go out on it: both sides idle, and the socket open with nothing to read (a
        readable idle socket means the server closed it, or sent what no request asked for)."""
        if self.h11.our_state is not h11.IDLE or self.h11.their_state is not h11.IDLE or self.writer.is_closing():
            return False
        sock = self.writer.get_extra_info("socket")
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


def _timeout(request: httpx.Request, kind: str) -> float | None:
    """The request's timeout of this kind (``connect``, ``read``, ``write``) in seconds, None for none."""
    value = request.extensions.get("timeout", {}).get(kind)
    return None if value is None else float(value)


def _protocol_error(exc: h11.ProtocolError, request: httpx.Request) -> NoReturn:
    if isinstance(exc, h11.RemoteProtocolError):
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    raise httpx.LocalProtocolError(str(exc), request=request) from exc


def default_transport() -> httpx.AsyncBaseTransport | None:
    """:class:`AsyncioTransport`, or None (httpx's default transport) when the environment names a proxy: httpx
    reads proxy variables only for a client without a transport of its own."""
    return None if urllib.request.getproxies() else AsyncioTransport()


class AsyncioTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport``: HTTP/1.1 on asyncio streams, keep-alive per origin (see module doc)."""

    def __init__(self) -> None:
        self._idle: dict[Origin, list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.raw_scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"not an http or https URL: {url.scheme!r}", request=request)
        origin: Origin = (url.raw_scheme, url.host, url.port or (443 if url.raw_scheme == b"https" else 80))
        conn = self._take_idle(origin) or await self._connect(request, origin)
        conn.write_error = None
        try:
            await self._send(conn, request)
            head = await self._response_head(conn, request)
        except BaseException:
            conn.close()
            raise
        return httpx.Response(
            status_code=head.status_code,
            headers=head.headers.raw_items(),
            stream=_ResponseBody(self, conn, request),
            extensions={"http_version": b"HTTP/" + head.http_version, "reason_phrase": head.reason},
        )

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin, [])
        while idle:
            conn = idle.pop()
            if conn.idle_and_open():
                return conn
            conn.close()
        return None

    def release(self, conn: _Connection) -> None:
        """After a response's body: keep the connection for the next request if both sides allow, else close it."""
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            idle = self._idle.setdefault(conn.origin, [])
            if len(idle) < MAX_IDLE_PER_ORIGIN and conn.idle_and_open():
                idle.append(conn)
                return
        conn.close()

    async def _connect(self, request: httpx.Request, origin: Origin) -> _Connection:
        scheme, host, port = origin
        tls = self._ssl_context() if scheme == b"https" else None
        try:
            async with asyncio.timeout(_timeout(request, "connect")):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls is not None else None, limit=READ_BYTES)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connect timed out: {exc}", request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return _Connection(reader, writer, origin)

    async def _write(self, conn: _Connection, request: httpx.Request, event: h11.Event) -> None:
        try:
            data = conn.h11.send(event)
        except h11.ProtocolError as exc:
            _protocol_error(exc, request)
        if not data:
            return
        try:
            async with asyncio.timeout(_timeout(request, "write")):
                conn.writer.write(data)
                await conn.writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("write timed out", request=request) from exc
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc

    async def _send(self, conn: _Connection, request: httpx.Request) -> None:
        """The request head and body. A write error is held back while a response may still come (a server may
        answer, e.g. 413, and close before reading the whole body): raised only if no response head follows."""
        target = request.url.raw_path
        await self._write(conn, request, h11.Request(method=request.method, target=target,
                                                      headers=list(request.headers.raw)))  # fmt: skip
        assert isinstance(request.stream, httpx.AsyncByteStream)
        try:
            async for chunk in request.stream:
                await self._write(conn, request, h11.Data(data=chunk))
            await self._write(conn, request, h11.EndOfMessage())
        except httpx.WriteError as exc:
            conn.write_error = exc

    async def next_event(self, conn: _Connection, request: httpx.Request) -> h11.Event | type[h11.PAUSED]:
        """The next event from the server, reading the socket as h11 needs (read timeout per read)."""
        while True:
            try:
                event = conn.h11.next_event()
            except h11.ProtocolError as exc:
                _protocol_error(exc, request)
            if isinstance(event, h11.Event) or event is h11.PAUSED:
                return event
            try:
                async with asyncio.timeout(_timeout(request, "read")):
                    data = await conn.reader.read(READ_BYTES)
            except TimeoutError as exc:
                raise httpx.ReadTimeout("read timed out", request=request) from exc
            except OSError as exc:
                raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
            if not data and conn.h11.their_state is h11.SEND_RESPONSE:
                raise httpx.RemoteProtocolError(NO_RESPONSE, request=request)
            try:
                conn.h11.receive_data(data)
            except h11.ProtocolError as exc:
                _protocol_error(exc, request)

    async def _response_head(self, conn: _Connection, request: httpx.Request) -> h11.Response:
        try:
            while True:
                event = await self.next_event(conn, request)
                if isinstance(event, h11.Response):
                    return event
                if not isinstance(event, h11.InformationalResponse):  # 100 Continue etc. are skipped
                    raise httpx.RemoteProtocolError(NO_RESPONSE, request=request)
        except httpx.TransportError:
            if conn.write_error is not None:
                raise conn.write_error from None
            raise


class _ResponseBody(httpx.AsyncByteStream):
    """The body of one response as it arrives; closing it gives the connection back (or closes it)."""

    def __init__(self, transport: AsyncioTransport, conn: _Connection, request: httpx.Request) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        while True:
            event = await self._transport.next_event(conn, self._request)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise httpx.RemoteProtocolError("the server closed the connection in the middle of a response",
                                                request=self._request)  # fmt: skip

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport.release(conn)
