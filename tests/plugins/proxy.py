"""A real TCP proxy for fault injection (owner: H-stream).

``tcp_proxy(host, port)`` (fixture factory) -> :class:`TcpProxy` listening on 127.0.0.1 port 0 in its own thread
and event loop, forwarding to ``host:port``. Control methods are thread-safe and take effect before they return:

    proxy.port / proxy.url(scheme="ws")      where clients connect
    proxy.connections                        connections accepted so far; proxy.active: currently open
    proxy.cut()                              close every open connection (FIN both ways)
    proxy.reset()                            abort every open connection with RST (SO_LINGER 0)
    proxy.stall()                            stop forwarding on open connections without closing them (half-open);
                                             new connections work normally; proxy.unstall() resumes
    proxy.delay_s = 0.2                      delay every forwarded chunk (both ways)
    proxy.down() / proxy.up()                the link goes away: the listener closes (new connections are refused,
                                             a TCP connect fails) and open links are reset; up() listens again on
                                             the same port
    proxy.cut_after_client_bytes(n)          cut each *new* connection once n bytes came from the client (None: off)
    proxy.client_bytes                       total bytes forwarded client -> server
    proxy.lose_response_to(marker)           once: the request carrying ``marker`` (e.g. b"POST /api/recordings/add")
                                             reaches the server whole, its answer is replaced by an RST to the client
                                             (the server did the work, the client never hears of it);
                                             proxy.marked_requests / proxy.responses_lost count what happened
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    running: asyncio.Event = field(default_factory=asyncio.Event)
    cut_after: int | None = None
    client_bytes: int = 0
    closed: bool = False
    answer_doomed: bool = False
    """The request whose answer is to be lost went through on this link."""
    tail: bytes = b""
    """Last client bytes, so a marker split across reads is still found."""

    def writers(self) -> tuple[asyncio.StreamWriter, asyncio.StreamWriter]:
        return self.client, self.upstream


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.connections = 0
        self.client_bytes = 0
        self.delay_s = 0.0
        self._cut_after: int | None = None
        self._lose_marker: bytes | None = None
        self.marked_requests = 0
        self.responses_lost = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._call(self._shutdown())  # asyncio objects belong to the proxy's loop thread
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        """Close the listener and every link, and end the pump tasks (none is left pending at loop stop)."""
        assert self._server is not None
        self._server.close()
        for link in list(self._links):
            self._close(link, rst=True)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def url(self, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def active(self) -> int:
        return len(self._links)

    # --- faults ----------------------------------------------------------------------------------------------------

    def cut(self) -> None:
        self._run_sync(lambda: [self._close(link, rst=False) for link in list(self._links)])

    def reset(self) -> None:
        self._run_sync(lambda: [self._close(link, rst=True) for link in list(self._links)])

    def down(self) -> None:
        server = self._server
        assert server is not None

        def go_down() -> None:
            server.close()  # the listening socket closes at once: a connect is refused
            for link in list(self._links):
                self._close(link, rst=True)

        self._run_sync(go_down)

    def up(self) -> None:
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True))

    def stall(self) -> None:
        self._run_sync(lambda: [link.running.clear() for link in self._links])

    def unstall(self) -> None:
        self._run_sync(lambda: [link.running.set() for link in self._links])

    def cut_after_client_bytes(self, count: int | None) -> None:
        self._cut_after = count

    def lose_response_to(self, marker: bytes) -> None:
        self._lose_marker = marker

    # --- internals -------------------------------------------------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _run_sync(self, fn: Callable[[], object]) -> None:
        done: Future[None] = Future()

        def run() -> None:
            try:
                fn()
                done.set_result(None)
            except BaseException as exc:  # handed to the calling thread
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        done.result(10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer, cut_after=self._cut_after)
        link.running.set()
        self._links.add(link)
        try:
            await asyncio.gather(self._pump(link, reader, up_writer, True), self._pump(link, up_reader, writer, False))
        finally:
            self._close(link, rst=False)

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    from_client: bool) -> None:  # fmt: skip
        try:
            while data := await reader.read(65536):
                await link.running.wait()
                if link.closed:
                    return
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if from_client and link.cut_after is not None:
                    room = link.cut_after - link.client_bytes
                    if len(data) >= room:
                        writer.write(data[:room])
                        await writer.drain()
                        self._close(link, rst=True)
                        return
                if not from_client and link.answer_doomed:
                    self.responses_lost += 1
                    self._close(link, rst=True)
                    return
                writer.write(data)
                await writer.drain()
                if from_client:
                    link.client_bytes += len(data)
                    self.client_bytes += len(data)
                    self._watch_for_marker(link, data)
        except (ConnectionError, OSError):
            pass
        finally:
            self._close(link, rst=False)

    def _watch_for_marker(self, link: _Link, data: bytes) -> None:
        marker = self._lose_marker
        if marker is None:
            return
        if marker in link.tail + data:
            self._lose_marker = None
            self.marked_requests += 1
            link.answer_doomed = True
        link.tail = data[-len(marker):]

    def _close(self, link: _Link, *, rst: bool) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        link.closed = True
        link.running.set()  # a stalled pump wakes up, sees the link closed and ends
        for w in link.writers():
            if rst:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):  # already closed by the peer: nothing left to reset
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.transport.abort()
            else:
                w.close()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str, int], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()
