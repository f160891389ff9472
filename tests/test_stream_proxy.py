"""The fault-injection TCP proxy itself, against a plain echo server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.plugins.proxy import TcpProxy


@pytest.fixture
def echo_server() -> Iterator[tuple[int, list[bytes]]]:
    """Echoes everything; records what each connection received in total."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve(conn: socket.socket) -> None:
        data = b""
        with conn:
            try:
                while chunk := conn.recv(65536):
                    data += chunk
                    conn.sendall(chunk)
            except OSError:
                pass
        received.append(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1], received
    listener.close()


def connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    return sock


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def test_forwards_and_counts(tcp_proxy: Callable[[str, int], TcpProxy], echo_server: tuple[int, list[bytes]]) -> None:
    proxy = tcp_proxy("127.0.0.1", echo_server[0])
    with connect(proxy) as a, connect(proxy) as b:
        a.sendall(b"hello")
        b.sendall(b"world")
        assert recv_exact(a, 5) == b"hello" and recv_exact(b, 5) == b"world"
    assert proxy.connections == 2


def test_cut_closes_with_eof(tcp_proxy: Callable[[str, int], TcpProxy], echo_server: tuple[int, list[bytes]]) -> None:
    proxy = tcp_proxy("127.0.0.1", echo_server[0])
    with connect(proxy) as sock:
        sock.sendall(b"x")
        recv_exact(sock, 1)
        proxy.cut()
        assert sock.recv(10) == b""


def test_reset_sends_rst(tcp_proxy: Callable[[str, int], TcpProxy], echo_server: tuple[int, list[bytes]]) -> None:
    proxy = tcp_proxy("127.0.0.1", echo_server[0])
    with connect(proxy) as sock:
        sock.sendall(b"x")
        recv_exact(sock, 1)
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            sock.recv(10)


def test_stall_holds_data_without_closing(
    tcp_proxy: Callable[[str, int], TcpProxy], echo_server: tuple[int, list[bytes]]
) -> None:
    proxy = tcp_proxy("127.0.0.1", echo_server[0])
    with connect(proxy) as sock:
        sock.sendall(b"x")
        recv_exact(sock, 1)
        proxy.stall()
        sock.sendall(b"held")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(10)
        with connect(proxy) as fresh:  # new connections are not stalled
            fresh.sendall(b"new")
            assert recv_exact(fresh, 3) == b"new"
        proxy.unstall()
        sock.settimeout(10)
        assert recv_exact(sock, 4) == b"held"


def test_cut_after_client_bytes(
    tcp_proxy: Callable[[str, int], TcpProxy], echo_server: tuple[int, list[bytes]]
) -> None:
    port, received = echo_server
    proxy = tcp_proxy("127.0.0.1", port)
    proxy.cut_after_client_bytes(10)
    with connect(proxy) as sock:
        sock.sendall(b"0123456789abcdef")
        data = b""
        try:
            while chunk := sock.recv(100):
                data += chunk
        except ConnectionResetError:
            pass
        assert b"0123456789".startswith(data)
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert received == [b"0123456789"]
