"""MediSync client against the local MediSync server over real HTTP on 127.0.0.1.

Faults come from the server's knobs (status, malformed body, error envelope, expired tokens, subscription) and, for
the lost upload response, from a real TCP proxy that forwards the upload and then cuts the connection before the
answer reaches the client. Only the wrong-shape JSON case uses httpx's MockTransport: the server never sends one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agent.account import token_provider
from agent.api.models import NewAppointment, NewNote, NewPatient, PatientUpdate
from agent.errors import (
    AuthError,
    EnvelopeError,
    NotFoundError,
    RateLimitError,
    RecordingMismatchError,
    ResponseError,
    ServerError,
    SubscriptionError,
    TransportError,
    UploadTooLargeError,
)
from agent.server.app import ServerThread
from tests.plugins.api_client import (
    EMAIL,
    OTHER_EMAIL,
    OTHER_PASSWORD,
    PASSWORD,
    RecordingTransport,
    make_client,
    new_appointment,
    run,
    sha256,
    visit_wav,
    write_other_wav,
)
from tests.plugins.proxy import TcpProxy

# --- the quickstart ----------------------------------------------------------------------------------------------


def test_quickstart_flow_end_to_end(api_server: ServerThread, tmp_path: Path) -> None:
    wav = visit_wav(tmp_path)
    progress: list[tuple[int, int]] = []

    async def scenario() -> str:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            session = await api.login()
            assert (session.user_title, session.first_name, session.last_name) == ("Dr.", "John", "Doe")
            assert "eyJ" not in repr(session)
            assert (await api.subscription()).active is True

            patient = await api.add_patient(NewPatient(firstName="Jane", lastName="Smith", dateOfBirth="1985-03-15"))
            assert [p.id for p in await api.search_patients("smith")] == [patient.id]
            updated = await api.update_patient(patient.id, PatientUpdate(dateOfBirth="1985-03-16"))
            assert (updated.id, updated.lastName, updated.dateOfBirth) == (patient.id, "Smith", "1985-03-16")

            appointment = await api.add_appointment(
                NewAppointment(name="Annual Checkup", date="2024-01-15", time="14:30", patient_id=patient.id)
            )
            assert appointment.status == "planned"
            assert (await api.get_appointment(appointment.id)).patient_id == patient.id
            assert appointment.id in [a.id for a in await api.list_appointments()]

            result = await api.upload_recording(appointment.id, wav, progress=lambda s, t: progress.append((s, t)))
            assert not result.already_present and result.recording is not None
            assert result.recording.appointment_id == appointment.id
            assert progress[-1] == (wav.stat().st_size, wav.stat().st_size)

            download = tmp_path / "downloaded.wav"
            got = await api.download_recording(appointment.id, download)
            assert download.read_bytes() == wav.read_bytes()
            assert got.sha256 == sha256(wav)

            segments = await api.wait_for_transcription(appointment.id, timeout_s=30)
            assert segments and all(s.end_time >= s.start_time for s in segments)

            note = await api.add_note(
                appointment.id, NewNote(notes="Patient presents with chest pain...", summary="Brief summary")
            )
            assert note.appointment_id == appointment.id
            notes = await api.get_notes(appointment.id)
            assert any(n.notes == "Patient presents with chest pain..." for n in notes)
            diagnosis = await api.diagnose(appointment.id)
            assert diagnosis.icd_code

            with pytest.raises(RecordingMismatchError):  # a second, different recording for the appointment
                await api.upload_recording(appointment.id, write_other_wav(tmp_path))
            await api.delete_recording(appointment.id)
            with pytest.raises(NotFoundError):
                await api.recording_digest(appointment.id)

            return appointment.id

    appointment_id = run(scenario)
    assert api_server.server.store.recording(appointment_id) is None  # deleted


def test_transcription_added_as_text(api_server: ServerThread) -> None:
    async def scenario() -> None:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            appointment_id = await new_appointment(api)
            record = await api.add_transcription(appointment_id, "Doctor: hello. Patient: chest pain.")
            assert record.appointment_id == appointment_id
            assert record.transcription == "Doctor: hello. Patient: chest pain."
            segments = await api.get_transcription(appointment_id)
            assert "chest pain" in " ".join(s.text for s in segments)

    run(scenario)


# --- one recording per appointment -------------------------------------------------------------------------------


def test_lost_upload_response_then_retry_reports_success_without_double(
    api_server: ServerThread, tcp_proxy: Callable[[str, int], TcpProxy], tmp_path: Path
) -> None:
    wav = visit_wav(tmp_path)
    urls = api_server.urls
    assert urls is not None
    port = int(urls.base_url.rsplit(":", 1)[1])

    proxy = tcp_proxy("127.0.0.1", port)

    async def scenario() -> None:
        async with make_client(urls.api_url) as api:
            appointment_id = await new_appointment(api)
            async with make_client(proxy.url("http") + "/api") as proxied:
                await proxied.login()
                proxy.lose_response_to(b"POST /api/recordings/add")
                with pytest.raises(TransportError):
                    await proxied.upload_recording(appointment_id, wav)
            assert proxy.responses_lost == 1
            first = api_server.server.store.recording(appointment_id)
            assert first is not None, "the first upload reached the server"

            result = await api.upload_recording(appointment_id, wav)  # the retry meets "already exists"
            assert result.already_present and result.recording is None
            assert api_server.server.store.recording(appointment_id) == first  # not stored twice

            with pytest.raises(RecordingMismatchError):
                await api.upload_recording(appointment_id, write_other_wav(tmp_path))
            assert api_server.server.store.recording(appointment_id) == first

    run(scenario)


# --- auth and errors ---------------------------------------------------------------------------------------------


def test_expired_token_costs_exactly_one_relogin(api_server: ServerThread) -> None:
    transport = RecordingTransport()

    async def scenario() -> None:
        async with make_client(api_server.urls.api_url, transport=transport) as api:  # type: ignore[union-attr]
            await api.list_appointments()
            api_server.server.expire_tokens()
            assert await api.list_appointments() == []
            assert api.http.logins == 2
            names = [path.rsplit("/", 1)[-1] for _, path in transport.sent]
            assert names == ["login", "doctors", "doctors", "login", "doctors"]  # refused once, retried once

    run(scenario)


def test_stream_and_requests_refused_together_share_one_login(api_server: ServerThread) -> None:
    """One 401 path: the speech socket's token provider logs in again through the client's own login lock."""
    transport = RecordingTransport()

    async def scenario() -> None:
        async with make_client(api_server.urls.api_url, transport=transport) as api:  # type: ignore[union-attr]
            token = token_provider(api)
            first = await token(False)  # the stream's first dial logs in
            assert api.http.logins == 1
            api_server.server.expire_tokens()
            # The socket was refused with ``first`` (force_login) while a request meets a 401 too: one login.
            renewed, answer = await asyncio.gather(token(True), api.list_appointments())
            assert answer == [] and renewed != first
            assert api.http.logins == 2
            assert await token(True) != renewed  # refused again: a new login, never the refused token
            assert api.http.logins == 3

    run(scenario)


def test_relogin_refused_is_auth_error_not_a_loop(api_server: ServerThread) -> None:
    transport = RecordingTransport()

    async def scenario() -> None:
        async with make_client(api_server.urls.api_url, transport=transport) as api:  # type: ignore[union-attr]
            await api.list_appointments()
            api_server.server.add_user(EMAIL, "a changed password")  # our password no longer works
            api_server.server.expire_tokens()
            with pytest.raises(AuthError, match="login refused") as info:
                await api.list_appointments()
            assert PASSWORD not in str(info.value)
            assert [p.rsplit("/", 1)[-1] for _, p in transport.sent] == ["login", "doctors", "doctors", "login"]

    run(scenario)


def test_no_subscription_is_403_subscription_error(api_server: ServerThread) -> None:
    async def scenario() -> None:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            api_server.server.set_subscription(EMAIL, False)
            assert (await api.subscription()).active is False
            with pytest.raises(SubscriptionError) as info:
                await api.add_patient(NewPatient(firstName="Jane", lastName="Smith"))
            assert info.value.status == 403

    run(scenario)


def test_unknown_appointment_is_404(api_server: ServerThread) -> None:
    async def scenario() -> None:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            with pytest.raises(NotFoundError, match="Appointment not found"):
                await api.get_appointment("0123456789abcdef01234567")

    run(scenario)


def test_rate_limited_carries_retry_after(api_server: ServerThread) -> None:
    async def scenario() -> None:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            api_server.server.knobs.fail_next("/api/appointments/doctors", status=429, retry_after=7)
            with pytest.raises(RateLimitError) as info:
                await api.list_appointments()
            assert info.value.retry_after == 7.0
            assert await api.list_appointments() == []  # only the one request was limited

    run(scenario)


def test_server_error_is_500(api_server: ServerThread) -> None:
    async def scenario() -> None:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            api_server.server.knobs.fail_next("/api/appointments/doctors", status=500)
            with pytest.raises(ServerError) as info:
                await api.list_appointments()
            assert info.value.status == 500

    run(scenario)


def test_success_false_envelope_carries_server_text(api_server: ServerThread) -> None:
    async def scenario() -> None:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            api_server.server.knobs.fail_next("/api/appointments/doctors", kind="envelope")
            with pytest.raises(EnvelopeError, match="Injected failure"):
                await api.list_appointments()

    run(scenario)


def test_malformed_json_is_response_error(api_server: ServerThread) -> None:
    async def scenario() -> None:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            api_server.server.knobs.fail_next("/api/appointments/doctors", kind="malformed")
            with pytest.raises(ResponseError, match="not valid JSON"):
                await api.list_appointments()

    run(scenario)


def test_wrong_shape_is_response_error() -> None:
    # The local server never answers with the wrong shape, so this one case uses httpx's MockTransport.
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/login"):
            return httpx.Response(200, json={"success": True, "token": "t", "uid": "u"})
        return httpx.Response(200, json={"success": True, "data": [{"name": "no id"}]})

    async def scenario() -> None:
        async with make_client("http://mock/api", transport=httpx.MockTransport(handler)) as api:
            with pytest.raises(ResponseError, match="_id"):
                await api.list_appointments()

    run(scenario)


def test_connection_refused_is_transport_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario() -> None:
        async with make_client(f"http://127.0.0.1:{port}/api") as api:
            with pytest.raises(TransportError, match="POST login"):
                await api.list_appointments()

    run(scenario)


def test_other_users_data_is_refused(api_server: ServerThread, tmp_path: Path) -> None:
    wav = write_other_wav(tmp_path)

    async def scenario() -> None:
        urls = api_server.urls
        assert urls is not None
        async with make_client(urls.api_url) as mine, make_client(urls.api_url, OTHER_EMAIL, OTHER_PASSWORD) as other:
            appointment_id = await new_appointment(mine)
            await mine.upload_recording(appointment_id, wav)
            with pytest.raises(NotFoundError):
                await other.get_appointment(appointment_id)
            with pytest.raises(NotFoundError):
                await other.recording_digest(appointment_id)
            with pytest.raises(NotFoundError):
                await other.upload_recording(appointment_id, wav)
            with pytest.raises(NotFoundError):
                await other.delete_recording(appointment_id)
            assert await other.search_patients("smith") == []
            assert (await mine.recording_digest(appointment_id)).sha256 == sha256(wav)

    run(scenario)


# --- upload size and memory --------------------------------------------------------------------------------------


def test_upload_over_limit_refused_before_sending(api_server: ServerThread, tmp_path: Path) -> None:
    big = tmp_path / "huge.wav"
    with big.open("wb") as file:  # sparse: 500 MiB + 1 byte without using the disk
        file.truncate(500 * 1024 * 1024 + 1)
    transport = RecordingTransport()

    async def scenario() -> None:
        async with make_client(api_server.urls.api_url, transport=transport) as api:  # type: ignore[union-attr]
            appointment_id = await new_appointment(api)
            sent_before = list(transport.sent)
            with pytest.raises(UploadTooLargeError, match="over MediSync's limit"):
                await api.upload_recording(appointment_id, big)
            assert transport.sent == sent_before  # not a single request left the client
            assert api_server.server.store.recording(appointment_id) is None
            assert not list(api_server.server.store.recordings_dir.iterdir())  # no partial upload either

    run(scenario)


@pytest.mark.slow
def test_streamed_upload_memory_stays_flat(api_server: ServerThread, tmp_path: Path) -> None:
    """400 MB through the real upload path. tracemalloc counts every Python allocation in this process (the client
    and the in-process server alike), so a peak far below the file size shows neither side held the file."""
    size = 400 * 1024 * 1024
    big = tmp_path / "long-visit.wav"
    # A WAV header (the server judges the content), then sparse silence; 48 kHz stereo, which the local server's
    # placeholder transcriber skips (it reads 16 kHz mono uploads through, which would take long for 400 MB).
    with big.open("wb") as file:
        file.write(b"RIFF" + struct.pack("<I", size - 8) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 2, 48000,
                                                                                     192000, 4, 16)
                   + b"data" + struct.pack("<I", size - 44))
        file.truncate(size)
    progress: list[int] = []

    async def scenario() -> str:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            appointment_id = await new_appointment(api)
            tracemalloc.start()
            try:
                result = await api.upload_recording(appointment_id, big, progress=lambda s, t: progress.append(s))
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert result.recording is not None
            print(f"upload of {size} bytes: tracemalloc peak {peak / 2**20:.1f} MiB")
            assert peak < 32 * 1024 * 1024
            return appointment_id

    appointment_id = run(scenario)
    assert progress[-1] == size
    stored = api_server.server.store.recording(appointment_id)
    assert stored is not None and stored.size == size


def test_password_and_token_never_logged(api_server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("", "httpx", "httpcore", "agent"):
        caplog.set_level(logging.DEBUG, logger=name)  # everything, third-party wire logs included

    async def scenario() -> list[str]:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            first = await api.login()
            api_server.server.expire_tokens()
            await api.list_appointments()  # refused, re-login, retried
            second = api.http.session
            assert second is not None and second.token != first.token
            api_server.server.knobs.fail_next("/api/appointments/doctors", status=500)
            with pytest.raises(ServerError) as info:
                await api.list_appointments()
            shown = [repr(api.http.session), str(info.value), repr(info.value)]
            return [first.token.reveal(), second.token.reveal(), *shown]

    first_token, second_token, *shown = run(scenario)
    assert caplog.records  # the capture really saw the wire logs
    for text in [caplog.text, *shown]:
        for secret in (PASSWORD, first_token, second_token):
            assert secret not in text
