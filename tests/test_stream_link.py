"""The speech socket adapter (agent/stream/link.py, connection.py) against the local server, through a real TCP proxy:
write back-pressure, keepalive through a stall, the close handshake, TLS, and what a dial reports."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from agent.stream import wire
from agent.stream.actions import Ended
from agent.stream.client import SpeechStream, State
from agent.stream.connection import dial, redirect_target
from agent.stream.link import SpeechLink
from agent.stream.policy import Failure
from tests.plugins.proxy import TcpProxy
from tests.plugins.server import RunningServer
from tests.plugins.stream import LoginTokens, expected_runs, fast_settings, gated_visit, wait_until
from tests.plugins.tls import self_signed_certificate


def proxied(tcp_proxy: Callable[[str, int], TcpProxy], server: RunningServer) -> TcpProxy:
    target = urlsplit(server.speech_url)
    assert target.hostname is not None and target.port is not None
    return tcp_proxy(target.hostname, target.port)


@pytest.mark.slow
def test_a_stalled_link_pauses_writing_and_the_rest_follows_on_the_same_connection(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    """No ack watchdog, no keepalive: the stall only fills the buffers. The writer stops at the write buffer's limit
    (the session still holds the rest as unwritten), and once the proxy forwards again every frame is stored once,
    over the one connection."""
    proxy = proxied(tcp_proxy, medisync_server)
    visit = gated_visit(540.0, seed=41, pause_s=(0.02, 0.05))  # ~17 MB: more than loopback's socket buffers
    first = len(visit.events) // 50
    settings = fast_settings(ack_timeout_s=600.0, ping_interval_s=600.0, ping_timeout_s=600.0)

    async def run() -> tuple[bool, SpeechStream, int]:
        stream = SpeechStream(settings, speech_url=proxy.url(), appointment_id="a", session_id="stall",
                              token=LoginTokens(medisync_server.login))  # fmt: skip
        await stream.start()
        stream.feed(visit.events[:2])
        await wait_until(lambda: stream.stats.acked_messages > 0, "the first ack")  # fed from now on: live audio
        stream.feed(visit.events[2:first])
        await wait_until(lambda: stream.stats.held_samples == 0, "the first part confirmed")
        proxy.stall()
        stream.feed(visit.events[first:])  # on the loop: written at once, as far as the link takes it
        written_while_stalled = stream.stats.bytes_sent
        proxy.unstall()
        ok = await stream.finish(final_sample=visit.end, wait_s=120)
        return ok, stream, written_while_stalled

    ok, stream, written_while_stalled = asyncio.run(run())
    fed = sum(len(f.pcm) for f in visit.frames)
    assert written_while_stalled < fed  # the writer paused: the session held back what the link did not take
    assert ok and stream.stats.state is State.DONE and stream.stats.connections == 1
    assert stream.stats.bytes_sent == fed and stream.stats.resent_messages == 0
    audio = medisync_server.session_audio("stall")
    assert audio.runs == expected_runs(visit.frames) and audio.duplicates_ignored == 0


@pytest.mark.slow
def test_keepalive_ends_a_stalled_resume_connection_and_nothing_is_lost_or_doubled(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    """With the ack watchdog out of the way only the missing pongs reveal the half-open connection."""
    proxy = proxied(tcp_proxy, medisync_server)
    visit = gated_visit(12.0, seed=42)
    half = len(visit.events) // 2
    settings = fast_settings(ack_timeout_s=600.0, ping_interval_s=0.3, ping_timeout_s=0.3)

    async def run() -> tuple[bool, SpeechStream]:
        stream = SpeechStream(settings, speech_url=proxy.url(), appointment_id="a", session_id="keepalive",
                              token=LoginTokens(medisync_server.login))  # fmt: skip
        await stream.start()
        stream.feed(visit.events[:half])
        await wait_until(lambda: stream.stats.acked_messages > 0, "the first acks")
        proxy.stall()
        stream.feed(visit.events[half:])
        await wait_until(lambda: proxy.connections >= 2, "a second connection")
        return await stream.finish(final_sample=visit.end, wait_s=60), stream

    ok, stream = asyncio.run(run())
    assert ok and stream.stats.connections >= 2
    assert "connection closed (code 1006)" in stream.stats.end_reasons
    audio = medisync_server.session_audio("keepalive")
    assert audio.runs == expected_runs(visit.frames)  # resent frames the server had are ignored, none stored twice


def test_dial_reports_refusals_and_the_link(medisync_server: RunningServer) -> None:
    settings = fast_settings()
    url = medisync_server.speech_url + "/ws/transcribe?session_id=dial&appointment_id=a&sample_rate=16000"

    async def run() -> list[SpeechLink | Ended]:
        token = (await asyncio.to_thread(medisync_server.login))[0]
        results: list[SpeechLink | Ended] = [await dial(url, "not-a-token", settings)]
        medisync_server.knobs.refuse_handshake(429, retry_after=7, count=1)
        results.append(await dial(url, token, settings))
        results.append(await dial("ftp://127.0.0.1/ws/transcribe", token, settings))
        link = await dial(url, token, settings)
        assert isinstance(link, SpeechLink)
        results.append(link)
        await link.close()  # the close handshake: the server closes the TCP connection
        assert link.lost.done()
        return results

    refused, busy, bad, link = asyncio.run(run())
    assert isinstance(refused, Ended) and refused.failure is Failure.UNAUTHORIZED
    assert refused.reason == "handshake refused with HTTP 401"
    assert isinstance(busy, Ended) and busy.failure is Failure.TRANSIENT and busy.retry_after is not None
    assert isinstance(bad, Ended) and bad.failure is Failure.FATAL and bad.reason.startswith("bad speech URL")
    assert isinstance(link, SpeechLink) and link.subprotocol == wire.RESUME_SUBPROTOCOL


def test_a_closed_port_is_reported_unreachable() -> None:
    async def run() -> SpeechLink | Ended:
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        return await dial(f"ws://127.0.0.1:{port}/ws/transcribe", "t", fast_settings())

    ended = asyncio.run(run())
    assert isinstance(ended, Ended) and ended.failure is Failure.TRANSIENT and ended.unreachable


# --- TLS: a TLS-terminating proxy (certificate made here) in front of the local server --------------------------


async def _tls_front(cert: Path, key: Path, target: tuple[str, int]) -> asyncio.Server:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*target)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)


def test_wss_streams_through_tls_and_a_wrong_certificate_is_refused(
    medisync_server: RunningServer, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path, "localhost")
    target = urlsplit(medisync_server.speech_url)
    assert target.hostname is not None and target.port is not None
    visit = gated_visit(3.0, seed=43)

    host, port = target.hostname, target.port

    async def run() -> tuple[SpeechLink | Ended, list[str | bytes], SpeechLink | Ended]:
        front = await _tls_front(cert, key, (host, port))
        tls_port = front.sockets[0].getsockname()[1]
        url = f"wss://localhost:{tls_port}/ws/transcribe?session_id=tls&appointment_id=a&sample_rate=16000"
        token = (await asyncio.to_thread(medisync_server.login))[0]
        trusting = ssl.create_default_context(cafile=str(cert))
        link = await dial(url, token, fast_settings(), ssl_context=trusting)
        got: list[str | bytes] = []
        if isinstance(link, SpeechLink):
            link.attach(got.append, lambda: None, lambda: None)
            link.send(wire.encode(wire.Start(session_id="tls", appointment_id="a")))
            frame = visit.frames[0]
            link.send(wire.encode_audio(0, frame.start, frame.pcm))
            await wait_until(lambda: any('"ack"' in str(m) for m in got), "the ack over TLS")
            await link.close()
        untrusted = await dial(url, token, fast_settings())  # the system's trust store does not know it
        front.close()
        return link, got, untrusted

    link, got, untrusted = asyncio.run(run())
    assert any('"ack"' in str(m) for m in got)
    assert isinstance(link, SpeechLink) and link.subprotocol == wire.RESUME_SUBPROTOCOL
    assert medisync_server.session_audio("tls").runs == expected_runs(visit.frames[:1])
    assert isinstance(untrusted, Ended) and untrusted.failure is Failure.TRANSIENT
    assert untrusted.reason == "connect failed: SSLCertVerificationError"


async def _redirecting_front(location: str) -> tuple[asyncio.Server, list[str]]:
    """A plain HTTP server that answers every request with ``302 Found`` to ``location``; returns it and the
    request lines it got."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n", 1)[0].decode())
        writer.write(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), seen


def test_dial_follows_a_redirect_on_the_same_host_and_refuses_one_that_would_hand_the_token_elsewhere(
    medisync_server: RunningServer,
) -> None:
    real = urlsplit(medisync_server.speech_url)
    query = "/ws/transcribe?session_id=redirect&appointment_id=a&sample_rate=16000"

    async def run() -> tuple[SpeechLink | Ended, SpeechLink | Ended, SpeechLink | Ended, list[str]]:
        token = (await asyncio.to_thread(medisync_server.login))[0]
        same_host, _ = await _redirecting_front(f"http://127.0.0.1:{real.port}{query}")
        other_host, _ = await _redirecting_front(f"ws://localhost:{real.port}{query}")
        loop, seen = await _redirecting_front(query)  # relative: back to itself, for ever
        dialled = []
        for front in (same_host, other_host, loop):
            port = front.sockets[0].getsockname()[1]
            dialled.append(await dial(f"ws://127.0.0.1:{port}{query}", token, fast_settings()))
            front.close()
        followed = dialled[0]
        assert isinstance(followed, SpeechLink)
        await followed.close()
        return dialled[0], dialled[1], dialled[2], seen

    followed, elsewhere, endless, seen = asyncio.run(run())
    assert isinstance(followed, SpeechLink) and followed.subprotocol == wire.RESUME_SUBPROTOCOL
    assert isinstance(elsewhere, Ended) and elsewhere.failure is Failure.TRANSIENT
    assert "another host" in elsewhere.reason and "not followed" in elsewhere.reason
    assert isinstance(endless, Ended) and endless.reason == "handshake refused: more than 10 redirects"
    assert len(seen) == 11 and set(seen) == {f"GET {query} HTTP/1.1"}


@pytest.mark.parametrize(("url", "location", "target"), [
    ("ws://h:1/ws/transcribe?a=1", "/v2/ws/transcribe?a=1", "ws://h:1/v2/ws/transcribe?a=1"),
    ("ws://h:1/ws/transcribe", "https://H:443/ws/transcribe", "wss://H:443/ws/transcribe"),  # upgraded: allowed
    ("wss://h/ws/transcribe", "wss://h:8443/x", "wss://h:8443/x"),
    ("wss://h/ws/transcribe", "ws://h/ws/transcribe", None),  # the token would travel unencrypted
    ("wss://h/ws/transcribe", "http://h/ws/transcribe", None),
    ("ws://h/ws/transcribe", "ws://evil/ws/transcribe", None),  # another host
    ("ws://h/ws/transcribe", "ftp://h/x", None),
])  # fmt: skip
def test_redirect_target(url: str, location: str, target: str | None) -> None:
    assert redirect_target(url, location) == target
