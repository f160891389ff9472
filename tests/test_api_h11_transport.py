"""The agent's HTTP/1.1 transport (agent/api/h11_transport.py) over real sockets on 127.0.0.1.

Against the local MediSync server: the client never imports httpcore or anyio (issue 11, RSS). Against a small
asyncio HTTP server in this file, whose answers each test chooses: keep-alive reuse, a connection the server closed
while idle, streamed request and response bodies compared byte for byte, the server closing before it answers, a
read timeout, a refused connection, and TLS (a trusted and an untrusted certificate).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from agent.api.h11_transport import AsyncioTransport
from agent.server.app import ServerThread
from tests.plugins.api_client import EMAIL, PASSWORD
from tests.plugins.tls import self_signed_certificate

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback TCP server; ``connections`` counts the connections it accepted, ``closed`` those it closed."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.closed = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            finally:
                writer.close()
                await writer.wait_closed()
                self.closed += 1

        self._server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request: its head, and its body by Content-Length (empty without one)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request on the connection with its path."""
    while not reader.at_eof():
        try:
            head, _ = await read_request(reader)
        except asyncio.IncompleteReadError:
            return
        writer.write(answer(head.split(b" ")[1]))
        await writer.drain()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_the_client_never_imports_httpcore_or_anyio(api_server: ServerThread) -> None:
    """httpx's default transport would import httpcore and, at the first request, anyio's asyncio backend."""
    code = ("import asyncio, sys\n"
            "from agent.api.medisync import MediSyncClient\nfrom agent.api.secret import Credentials, Secret\n"
            "from agent.settings import ApiSettings\n"
            "async def main():\n"
            f"    settings = ApiSettings(api_url={api_server.urls.api_url!r}, email={EMAIL!r})\n"  # type: ignore[union-attr]
            f"    async with MediSyncClient(settings, Credentials({EMAIL!r}, Secret({PASSWORD!r}))) as api:\n"
            "        await api.login()\n        await api.subscription()\n"
            "asyncio.run(main())\n"
            "print([m for m in ('httpcore', 'anyio', 'h2') if m in sys.modules])\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"the HTTP client imports {proc.stdout.strip()}"


def test_requests_share_one_kept_alive_connection() -> None:
    async def scenario() -> None:
        async with Server(keep_answering) as srv, httpx.AsyncClient(transport=AsyncioTransport()) as client:
            paths = [(await client.get(srv.url(f"/n{i}?q=1"))).text for i in range(3)]
            assert paths == ["/n0?q=1", "/n1?q=1", "/n2?q=1"]
            assert srv.connections == 1

    run(scenario)


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"once"))
        await writer.drain()  # then closed (keep-alive header or not)

    async def scenario() -> None:
        async with Server(once) as srv, httpx.AsyncClient(transport=AsyncioTransport()) as client:
            assert (await client.get(srv.url())).text == "once"
            await poll_until(lambda: srv.closed == 1)  # its FIN is in the client's socket now (loopback)
            assert (await client.get(srv.url())).text == "once"
            assert srv.connections == 2

    run(scenario)


def test_streamed_bodies_arrive_byte_for_byte() -> None:
    payload = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4, sent in uneven chunks

    async def digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await read_request(reader)
        reply = hashlib.sha256(body).digest() * 50_000  # 1.6 MB back, chunked
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(reply), 70_000):
            part = reply[start:start + 70_000]
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 65_537):
            yield payload[start:start + 65_537]

    async def scenario() -> None:
        async with Server(digest) as srv, httpx.AsyncClient(transport=AsyncioTransport()) as client:
            headers = {"Content-Length": str(len(payload))}
            async with client.stream("POST", srv.url("/up"), content=chunks(), headers=headers) as response:
                got = b"".join([part async for part in response.aiter_raw()])
            assert got == hashlib.sha256(payload).digest() * 50_000

    run(scenario)


def test_the_server_closing_before_it_answers_is_a_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async def scenario() -> None:
        async with Server(hang_up) as srv, httpx.AsyncClient(transport=AsyncioTransport()) as client:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await client.get(srv.url())

    run(scenario)


def test_a_server_that_never_answers_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client gives up and closes

    async def scenario() -> None:
        async with Server(silent) as srv, httpx.AsyncClient(transport=AsyncioTransport(), timeout=0.2) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(srv.url())

    run(scenario)


def test_a_refused_connection_is_a_connect_error() -> None:
    async def scenario() -> None:
        async with Server(keep_answering) as srv:
            port = srv.port
        async with httpx.AsyncClient(transport=AsyncioTransport()) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")

    run(scenario)


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh self-signed certificate for 127.0.0.1, and the certificate's PEM file."""
    cert_pem, key_pem = self_signed_certificate(tmp_path, "127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_pem, key_pem)
    return context, cert_pem


def test_tls_with_a_trusted_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The context is httpx's default one, which honours SSL_CERT_FILE: here the test's own CA."""
    context, cert_pem = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_pem))

    async def scenario() -> None:
        async with Server(keep_answering, context) as srv, httpx.AsyncClient(transport=AsyncioTransport()) as client:
            assert [(await client.get(srv.url(f"/t{i}", "https"))).text for i in range(2)] == ["/t0", "/t1"]
            assert srv.connections == 1

    run(scenario)


def test_tls_with_an_untrusted_certificate_is_a_connect_error(tmp_path: Path) -> None:
    context, _ = self_signed(tmp_path)

    async def scenario() -> None:
        async with Server(keep_answering, context) as srv, httpx.AsyncClient(transport=AsyncioTransport()) as client:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(srv.url("/", "https"))

    run(scenario)


async def poll_until(condition: Callable[[], bool], deadline_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        assert loop.time() < end, "condition not met before the deadline"
        await asyncio.sleep(0.01)


def test_a_proxy_in_the_environment_is_still_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """With HTTP_PROXY set the client keeps httpx's own transport, which sends the request to the proxy (here a
    server that answers in the origin's place with the absolute URL it was asked for)."""
    from agent.api.secret import Credentials, Secret
    from agent.api.transport import AuthedHttp
    from agent.settings import ApiSettings

    async def scenario() -> None:
        async with Server(keep_answering) as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url())
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            http = AuthedHttp(ApiSettings(api_url="http://origin.invalid:8080/api", email=EMAIL),
                              Credentials(EMAIL, Secret(PASSWORD)))  # fmt: skip
            try:
                response = await http._client.get("ping")
            finally:
                await http.aclose()
            assert response.text == "http://origin.invalid:8080/api/ping"
            assert proxy.connections == 1

    run(scenario)


def test_a_url_that_is_not_http_is_refused() -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(transport=AsyncioTransport()) as client:
            with pytest.raises(httpx.UnsupportedProtocol):
                await client.get("ftp://127.0.0.1/")

    run(scenario)
