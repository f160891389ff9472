"""The local server against hostile clients over real HTTP: non-audio uploads (415), malformed or deeply nested JSON
(400, never a 500), login guessing (429 with Retry-After), bodies over their endpoint's limit (413), and slow or
half-open requests (closed eventually: raw sockets dribbling headers or stopping mid-body)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from agent.server.limits import MAX_JSON_DEPTH, LoginLimiter
from tests.plugins.server import DEMO_EMAIL, DEMO_PASSWORD, RunningServer
from tests.test_server_rest import Doctor, speech_then_silence, wav_bytes

CLOSED_WITHIN_S = 30.0
"""How long a test waits for the server to close a slow connection (its timeouts are 2 s here; generous margin)."""


# --- 415: uploads judged by content ------------------------------------------------------------------------------


def mp3_bytes(tmp_path: Path) -> bytes:
    wav = tmp_path / "in.wav"
    wav.write_bytes(wav_bytes(speech_then_silence()))
    mp3 = tmp_path / "out.mp3"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-b:a", "32k", str(mp3)], check=True, timeout=60)
    return mp3.read_bytes()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("visit.wav", b"this is a text file, not a recording\n" * 100),
        ("visit.wav", b"\x89PNG\r\n\x1a\n" + bytes(2000)),
        ("visit.mp3", bytes(5000)),
        ("visit.wav", wav_bytes(b"")),  # a WAV header without a single sample
        ("visit.m4a", b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(100)),  # ISO box, no audio track
    ],
)
def test_uploads_that_are_not_audio_are_415_and_not_kept(medisync_server: RunningServer, name: str,
                                                        content: bytes) -> None:  # fmt: skip
    doc = Doctor(medisync_server)
    appointment = doc.appointment()
    reply = doc.upload(appointment, content, name)
    assert reply.status_code == 415, reply.text
    assert reply.json()["success"] is False and reply.json()["error"].startswith("Unsupported recording: ")
    assert medisync_server.server.store.recording(appointment) is None
    assert list((medisync_server.data_dir / "recordings").iterdir()) == []
    good = wav_bytes(speech_then_silence())
    assert doc.upload(appointment, good).status_code == 200  # the appointment still takes a real recording


def test_audio_is_stored_under_the_suffix_of_its_content(medisync_server: RunningServer, tmp_path: Path) -> None:
    doc = Doctor(medisync_server)
    first, second = doc.appointment(), doc.appointment()
    assert doc.upload(first, wav_bytes(speech_then_silence()), "named-wrongly.mp3").status_code == 200
    assert doc.upload(second, mp3_bytes(tmp_path), "no-suffix").status_code == 200
    names = {rec.file_name.rsplit(".", 1)[1] for rec in map(medisync_server.server.store.recording, (first, second))
             if rec is not None}  # fmt: skip
    assert names == {"wav", "mp3"}


# --- 400: malformed JSON -----------------------------------------------------------------------------------------

BAD_JSON = {
    "not JSON": b"{'email': 'single quotes'}",
    "invalid UTF-8": b'{"email": "\xff\xfe"}',
    "deeper than the recursion limit": b"[" * 1500 + b"]" * 1500,
    "deeper than the server takes": b'{"a": ' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1),
    "a list, not an object": b"[1, 2, 3]",
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_malformed_or_deeply_nested_json_is_400_never_500(medisync_server: RunningServer, case: str) -> None:
    doc = Doctor(medisync_server)
    appointment = doc.appointment()
    headers = {"Content-Type": "application/json"}
    for path in ("/login", "/patients/add", "/appointments/add", f"/transcriptions/add/{appointment}",
                 f"/notes/add/{appointment}"):  # fmt: skip
        reply = doc.call("POST", path, content=BAD_JSON[case], headers=headers)
        assert reply.status_code == 400, (path, reply.status_code, reply.text)
        assert reply.json()["success"] is False and "Traceback" not in reply.text
    search = httpx.post(medisync_server.search_url, content=BAD_JSON[case], headers=headers, timeout=30)
    assert search.status_code in (400, 403), search.text  # a list or object without a key is refused too
    if case != "a list, not an object":
        assert search.status_code == 400
    assert doc.call("GET", "/appointments/doctors").status_code == 200  # still serving


# --- 413: body limits per endpoint -------------------------------------------------------------------------------


def test_bodies_over_their_endpoint_limit_are_413(medisync_server: RunningServer) -> None:
    doc = Doctor(medisync_server)
    padded_login = {"email": DEMO_EMAIL, "password": DEMO_PASSWORD, "pad": "x" * 5000}
    assert httpx.post(f"{medisync_server.api_url}/login", json=padded_login, timeout=30).status_code == 413
    big_patient = {"firstName": "Jane", "lastName": "x" * 70_000}
    assert doc.call("POST", "/patients/add", json=big_patient).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"firstName": "Jane", "lastName": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}'

    chunked = doc.call("POST", "/patients/add", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    appointment = doc.appointment()
    note = {"notes": "n" * 500_000}  # notes and transcriptions may be long
    assert doc.call("POST", f"/notes/add/{appointment}", json=note).status_code == 200
    reply = doc.call("POST", f"/recordings/add/{appointment}",
                     files={"audio": ("v.wav", wav_bytes(speech_then_silence()), "audio/wav"),
                            "comment": ("c.txt", b"c" * 100_000, "text/plain")})  # fmt: skip
    assert reply.status_code == 413  # a field beside the audio is bounded too


# --- 429: login guessing -----------------------------------------------------------------------------------------


def login_status(srv: RunningServer, email: str, password: str) -> httpx.Response:
    return httpx.post(f"{srv.api_url}/login", json={"email": email, "password": password}, timeout=30)


def test_login_guessing_is_429_with_retry_after_per_account_and_address(
    make_medisync_server: Callable[..., RunningServer]
) -> None:
    srv = make_medisync_server(login_failures_per_account=5, login_failures_per_address=8, login_window_s=60.0)
    srv.server.add_user("other@example.org", "other-password")
    for _ in range(5):
        assert login_status(srv, DEMO_EMAIL, "guess").status_code == 401
    blocked = login_status(srv, DEMO_EMAIL, "guess")
    assert blocked.status_code == 429 and blocked.json()["success"] is False
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    assert login_status(srv, DEMO_EMAIL, DEMO_PASSWORD).status_code == 429  # not even the right password now
    assert login_status(srv, "DOCTOR@example.org ", DEMO_PASSWORD).status_code == 429  # same account, other spelling
    assert login_status(srv, "other@example.org", "other-password").status_code == 200  # other accounts still work
    for _ in range(3):  # 5 + 3 failures from this address: the address is blocked for every account
        assert login_status(srv, "nobody@example.org", "guess").status_code == 401
    assert login_status(srv, "other@example.org", "other-password").status_code == 429


def test_login_works_again_once_the_window_passed(make_medisync_server: Callable[..., RunningServer]) -> None:
    srv = make_medisync_server(login_failures_per_account=2, login_window_s=1.0)
    for _ in range(2):
        assert login_status(srv, DEMO_EMAIL, "guess").status_code == 401
    assert login_status(srv, DEMO_EMAIL, DEMO_PASSWORD).status_code == 429
    deadline = time.monotonic() + CLOSED_WITHIN_S
    while login_status(srv, DEMO_EMAIL, DEMO_PASSWORD).status_code != 200:
        assert time.monotonic() < deadline, "login stayed blocked"
        time.sleep(0.2)


def test_login_limiter_counts_a_sliding_window() -> None:
    limiter = LoginLimiter(per_account=3, per_address=10, window_s=60.0)
    for t in (0.0, 10.0, 20.0):
        assert limiter.retry_after("a@x", "1.2.3.4", t) is None
        limiter.failed("a@x", "1.2.3.4", t)
    assert limiter.retry_after("A@X", "5.6.7.8", 30.0) == pytest.approx(30.0)  # the first failure expires at 60
    assert limiter.retry_after("a@x", "1.2.3.4", 60.0) is None
    limiter.failed("a@x", "1.2.3.4", 61.0)
    assert limiter.retry_after("a@x", "1.2.3.4", 61.0) == pytest.approx(9.0)
    limiter.succeeded("a@x")
    assert limiter.retry_after("a@x", "1.2.3.4", 61.0) is None  # the account's slate is clean; the address keeps 4


# --- slow and half-open requests ---------------------------------------------------------------------------------


@pytest.fixture
def strict_server(make_medisync_server: Callable[..., RunningServer]) -> RunningServer:
    return make_medisync_server(idle_timeout_s=2.0, body_timeout_s=2.0)


def raw_connection(srv: RunningServer) -> socket.socket:
    url = urlsplit(srv.api_url)
    assert url.hostname is not None and url.port is not None
    sock = socket.create_connection((url.hostname, url.port), timeout=CLOSED_WITHIN_S)
    return sock


def read_until_closed(sock: socket.socket, started: float) -> bytes:
    """Everything the server sends until it closes; fails if that takes longer than CLOSED_WITHIN_S."""
    received = b""
    while True:
        sock.settimeout(max(0.1, started + CLOSED_WITHIN_S - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open; received {received[:200]!r}") from None
        if not chunk:
            return received
        received += chunk


def test_a_connection_that_sends_nothing_is_closed(strict_server: RunningServer) -> None:
    with raw_connection(strict_server) as sock:
        assert read_until_closed(sock, time.monotonic()) == b""


def test_headers_dribbled_a_byte_at_a_time_are_cut_off(strict_server: RunningServer) -> None:
    head = b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + b"X-Slow: " + b"a" * 10_000
    with raw_connection(strict_server) as sock:
        started = time.monotonic()
        sock.settimeout(1.0)
        closed = False
        for byte in head:  # one byte every 0.2 s: always "progressing", never a complete head
            try:
                sock.send(bytes([byte]))
                if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    closed = True
            except (BlockingIOError, TimeoutError):
                pass  # nothing to read: still open
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            if closed:
                break
            assert time.monotonic() - started < CLOSED_WITHIN_S, "the server kept the dribbling connection open"
            time.sleep(0.2)
        assert closed


@pytest.mark.parametrize("path", ["/api/login", "/api/patients/add", "/sse/medichat"])
def test_a_body_that_never_completes_is_answered_408_and_closed(strict_server: RunningServer, path: str) -> None:
    auth = f"Authorization: Bearer {strict_server.login()[0]}\r\n"
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 1000\r\n"
            '\r\n{"email": "').encode()  # fmt: skip
    with raw_connection(strict_server) as sock:
        sock.sendall(head)
        answer = read_until_closed(sock, time.monotonic())
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_an_upload_that_stops_mid_file_is_408_and_leaves_nothing(strict_server: RunningServer) -> None:
    doc = Doctor(strict_server)
    appointment = doc.appointment()
    body_start = (b"--B\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"v.wav\"\r\n"
                  b"Content-Type: audio/wav\r\n\r\n" + wav_bytes(speech_then_silence())[:5000])  # fmt: skip
    head = (f"POST /api/recordings/add/{appointment}?uid={doc.uid} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {doc.token}\r\nContent-Type: multipart/form-data; boundary=B\r\n"
            f"Content-Length: {len(body_start) + 100_000}\r\n\r\n").encode()  # fmt: skip
    with raw_connection(strict_server) as sock:
        sock.sendall(head + body_start)
        answer = read_until_closed(sock, time.monotonic())
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert strict_server.server.store.recording(appointment) is None
    assert list((strict_server.data_dir / "recordings").iterdir()) == []


def test_an_idle_keep_alive_connection_is_closed(strict_server: RunningServer) -> None:
    with raw_connection(strict_server) as sock:
        sock.sendall(b"GET /api/appointments/doctors HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(sock, time.monotonic())
    assert answer.startswith(b"HTTP/1.1 401")  # answered, then closed once idle


def test_normal_clients_are_unaffected(strict_server: RunningServer) -> None:
    doc = Doctor(strict_server)
    appointment = doc.appointment()
    assert doc.upload(appointment, wav_bytes(speech_then_silence())).status_code == 200
