"""Tolerant reading of MediSync's answers, against the local server's answer-shape and garbage knobs (real HTTP).

MediSync's reference puts every answer under ``data``, its quickstart under a named key or at the top level; an
independently written server chose ``subscription`` and our agent refused to record. Here every endpoint is read
in every shape, every kind of garbage on the endpoints a visit needs becomes one typed error (never a crash), and
``api_url`` works with and without ``/api``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.api.medisync import MediSyncClient
from agent.api.models import NewAppointment, NewNote, NewPatient, PatientUpdate
from agent.api.secret import Credentials, Secret
from agent.api.transport import api_base
from agent.errors import ApiError, ResponseError, ServerError, TransportError, WrongAppointmentError
from agent.server.app import ServerThread
from agent.server.knobs import GARBAGE_KINDS, REST_SHAPES, GarbageKind, RestShape
from agent.settings import ApiSettings
from tests.plugins.api_client import EMAIL, PASSWORD, make_client, new_appointment, run, sha256, visit_wav


@pytest.mark.parametrize("shape", REST_SHAPES)
def test_every_endpoint_is_read_in_every_shape(api_server: ServerThread, tmp_path: Path, shape: RestShape) -> None:
    wav = visit_wav(tmp_path)
    api_server.server.knobs.answer_shape(shape)

    async def scenario() -> None:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            session = await api.login()
            assert session.uid and session.first_name == "John"
            subscription = await api.subscription()
            assert (subscription.active, subscription.plan) == (True, "local-demo")
            patient = await api.add_patient(NewPatient(firstName="Jane", lastName="Smith"))
            assert [p.id for p in await api.search_patients("smith")] == [patient.id]
            assert (await api.update_patient(patient.id, PatientUpdate(dateOfBirth="1985-03-16"))).id == patient.id
            appointment = await api.add_appointment(
                NewAppointment(name="Checkup", date="2024-01-15", time="14:30", patient_id=patient.id)
            )
            assert (await api.get_appointment(appointment.id)).patient_id == patient.id
            assert [a.id for a in await api.list_appointments()] == [appointment.id]
            result = await api.upload_recording(appointment.id, wav)
            assert result.recording is not None and result.recording.appointment_id == appointment.id
            assert (await api.recording_digest(appointment.id)).sha256 == sha256(wav)
            segments = await api.wait_for_transcription(appointment.id, timeout_s=30)
            assert segments and all(s.end_time >= s.start_time for s in segments)
            note = await api.add_note(appointment.id, NewNote(notes="chest pain", summary="short"))
            assert note.appointment_id == appointment.id
            assert [n.id for n in await api.get_notes(appointment.id)] == [note.id]
            assert (await api.diagnose(appointment.id)).icd_code == "R69"
            other = await new_appointment(api)
            record = await api.add_transcription(other, "Doctor: hello.")
            assert record.appointment_id == other and record.transcription == "Doctor: hello."

    run(scenario)


def test_shape_knob_really_changes_the_answers(api_server: ServerThread) -> None:
    """The shapes above differ on the wire (else that test would prove nothing)."""
    urls = api_server.urls
    assert urls is not None
    seen: dict[str, dict[str, Any]] = {}
    for shape in REST_SHAPES:
        api_server.server.knobs.answer_shape(shape)
        login = httpx.post(f"{urls.api_url}/login", json={"email": EMAIL, "password": PASSWORD}).json()
        token = login.get("token") or login["data"]["token"]
        uid = login.get("uid") or login["data"]["uid"]
        seen[shape] = httpx.get(f"{urls.api_url}/settings/subscription", params={"uid": uid},
                                headers={"Authorization": f"Bearer {token}"}).json()  # fmt: skip
    assert set(seen["data"]) == {"success", "data"}
    assert set(seen["named"]) == {"success", "subscription"}
    assert "active" in seen["top"] and "data" not in seen["top"]


@pytest.mark.parametrize(
    ("configured", "base"),
    [
        ("https://app.medisync.me/api", "https://app.medisync.me/api/"),
        ("https://app.medisync.me/api/", "https://app.medisync.me/api/"),
        ("https://app.medisync.me", "https://app.medisync.me/api/"),
        ("https://app.medisync.me/", "https://app.medisync.me/api/"),
        ("http://host:8080/medisync/api//", "http://host:8080/medisync/api/"),
    ],
)
def test_api_url_is_normalised_in_one_place(configured: str, base: str) -> None:
    assert api_base(configured) == base


@pytest.mark.parametrize("suffix", ["", "/", "/api", "/api/"])
def test_api_url_with_or_without_api_suffix_reaches_the_same_endpoints(api_server: ServerThread, suffix: str) -> None:
    urls = api_server.urls
    assert urls is not None

    async def scenario() -> None:
        async with make_client(urls.base_url + suffix) as api:
            await api.login()
            assert (await api.subscription()).active is True
            assert api.http.base_url == urls.api_url + "/"

    run(scenario)


def test_login_404_names_the_url_and_what_api_url_should_be(api_server: ServerThread) -> None:
    urls = api_server.urls
    assert urls is not None

    async def scenario() -> None:
        async with make_client(urls.base_url + "/wrong") as api:
            with pytest.raises(ApiError) as info:
                await api.login()
        text = str(info.value)
        assert f"{urls.base_url}/wrong/api/login answered HTTP 404" in text
        assert "api_url" in text and "https://app.medisync.me/api" in text
        assert "appointment" not in text and PASSWORD not in text

    run(scenario)


# --- garbage ---------------------------------------------------------------------------------------------------

VISIT_ENDPOINTS = ("/api/login", "/api/settings/subscription", "/api/appointments/get")
"""What a visit asks before it records (the upload is below)."""


def expected_error(kind: GarbageKind) -> type[ApiError]:
    return {"server_error": ServerError, "stall": TransportError}.get(kind, ResponseError)


@pytest.mark.parametrize("endpoint", VISIT_ENDPOINTS)
@pytest.mark.parametrize("kind", [k for k in GARBAGE_KINDS if k != "other_appointment"])
def test_garbage_before_a_visit_is_one_typed_error(api_server: ServerThread, endpoint: str, kind: GarbageKind) -> None:
    urls = api_server.urls
    assert urls is not None

    async def scenario() -> None:
        settings = ApiSettings(api_url=urls.api_url, email=EMAIL, timeout_s=3.0 if kind == "stall" else 30.0)
        async with MediSyncClient(settings, Credentials(EMAIL, Secret(PASSWORD))) as api:
            if endpoint == "/api/login":
                ask = api.login
            else:
                appointment_id = await new_appointment(api)  # logs in
                ask = api.subscription if "subscription" in endpoint else lambda: api.get_appointment(appointment_id)
            api_server.server.knobs.garble_next(endpoint, kind, delay_s=60.0)
            with pytest.raises(expected_error(kind)) as info:
                await ask()
            assert "\n" not in str(info.value)

    run(scenario)


def test_subscription_without_any_known_field_is_not_taken_for_an_answer(api_server: ServerThread) -> None:
    """``{"success": true, "data": {...wrong types...}}`` must not read as an (all-optional) subscription."""
    api_server.server.knobs.garble_next("/api/settings/subscription", "wrong_types")

    async def scenario() -> None:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            with pytest.raises(ResponseError, match=r"subscription not as documented .*\$\.active"):
                await api.subscription()

    run(scenario)


UPLOAD = "/api/recordings/add"


@pytest.mark.parametrize("kind", ["not_json", "array", "wrong_types", "empty", "html", "bad_encoding"])
def test_unreadable_upload_answer_is_settled_by_what_the_server_holds(
    api_server: ServerThread, tmp_path: Path, kind: GarbageKind
) -> None:
    wav = visit_wav(tmp_path)

    async def scenario() -> None:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            appointment_id = await new_appointment(api)
            api_server.server.knobs.garble_next(UPLOAD, kind)
            result = await api.upload_recording(appointment_id, wav)
            assert result.already_present and result.recording is None  # checked, not assumed
            assert (await api.recording_digest(appointment_id)).sha256 == sha256(wav)

    run(scenario)


def test_unreadable_upload_answer_without_the_recording_on_the_server_stays_an_error(
    api_server: ServerThread, tmp_path: Path
) -> None:
    wav = visit_wav(tmp_path)

    async def scenario() -> None:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            appointment_id = await new_appointment(api)
            api_server.server.knobs.fail_next(UPLOAD, kind="malformed")  # answered before storing anything
            with pytest.raises(ResponseError, match="not valid JSON"):
                await api.upload_recording(appointment_id, wav)
            assert api_server.server.store.recording(appointment_id) is None

    run(scenario)


def test_upload_answer_naming_another_appointment_is_an_error(api_server: ServerThread, tmp_path: Path) -> None:
    wav = visit_wav(tmp_path)

    async def scenario() -> None:
        async with make_client(api_server.urls.api_url) as api:  # type: ignore[union-attr]
            appointment_id = await new_appointment(api)
            api_server.server.knobs.garble_next(UPLOAD, "other_appointment")
            with pytest.raises(WrongAppointmentError, match="another appointment"):
                await api.upload_recording(appointment_id, wav)

    run(scenario)


def test_bad_knob_values_are_refused(api_server: ServerThread) -> None:
    with pytest.raises(ValueError, match="garbage kind"):
        api_server.server.knobs.garble_next("/api/login", "nonsense")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="answer shape"):
        api_server.server.knobs.answer_shape("sideways")  # type: ignore[arg-type]


def test_shape_and_garbage_knobs_over_the_test_hooks(server_process: Any) -> None:
    """``medisync-agent serve --test-hooks`` takes the same knobs over HTTP (for servers in another process)."""
    served = server_process()
    token, uid = served.login()
    headers = {"Authorization": f"Bearer {token}"}
    subscription = f"{served.urls.api_url}/settings/subscription"
    served.admin("knobs", {"rest_shape": "named",
                           "garble_next": [{"path": "/api/settings/subscription", "kind": "html", "count": 1}]})

    garbage = httpx.get(subscription, params={"uid": uid}, headers=headers)
    named = httpx.get(subscription, params={"uid": uid}, headers=headers)

    assert garbage.status_code == 200 and garbage.headers["content-type"].startswith("text/html")
    assert set(named.json()) == {"success", "subscription"}
    with pytest.raises(httpx.HTTPStatusError):
        served.admin("knobs", {"rest_shape": "sideways"})
