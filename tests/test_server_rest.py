"""REST endpoints of the local MediSync server, exercised with plain httpx over loopback."""

from __future__ import annotations

import base64
import io
import json
import wave
from typing import Any

import httpx
import numpy as np

from tests.plugins.archive import poll
from tests.plugins.server import RunningServer


def wav_bytes(pcm: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(pcm)
    return out.getvalue()


def speech_then_silence() -> bytes:
    t = np.arange(16000)
    return (np.sin(t * 2 * np.pi * 300 / 16000) * 6000).astype("<i2").tobytes() + bytes(32000)


class Doctor:
    """A logged-in user talking to the server with httpx."""

    def __init__(self, srv: RunningServer, email: str | None = None, password: str | None = None) -> None:
        self.api = srv.api_url
        self.token, self.uid = srv.login(email, password)
        self.client = httpx.Client(headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        params = {"uid": self.uid, **kwargs.pop("params", {})}
        return self.client.request(method, f"{self.api}{path}", params=params, **kwargs)

    def appointment(self) -> str:
        patient = self.call("POST", "/patients/add", json={"firstName": "Jane", "lastName": "Smith"}).json()
        reply = self.call("POST", "/appointments/add", json={"name": "Annual Checkup", "date": "2024-01-15",
                                                             "patient_id": patient["data"]["_id"]})
        assert reply.status_code == 200
        return str(reply.json()["appointment"]["_id"])

    def upload(self, appointment: str, content: bytes, name: str = "visit.wav") -> httpx.Response:
        return self.call("POST", f"/recordings/add/{appointment}", files={"audio": (name, content, "audio/wav")})


def test_login_shape_and_bad_password(medisync_server: RunningServer) -> None:
    reply = httpx.post(f"{medisync_server.api_url}/login",
                       json={"email": medisync_server.email, "password": medisync_server.password, "remember": False})
    body = reply.json()
    assert reply.status_code == 200
    assert set(body) == {"success", "token", "uid", "userTitle", "firstName", "lastName"} and body["success"] is True
    header = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}
    bad = httpx.post(f"{medisync_server.api_url}/login", json={"email": medisync_server.email, "password": "nope"})
    assert bad.status_code == 401 and bad.json()["success"] is False and "error" in bad.json()


def test_patients_appointments_and_envelopes(medisync_server: RunningServer) -> None:
    doc = Doctor(medisync_server)
    patient = doc.call("POST", "/patients/add", json={"firstName": "Jane", "lastName": "Smith"}).json()["data"]
    assert doc.call("GET", "/patients/search", params={"query": "smi"}).json()["data"] == [patient]
    updated = doc.call("PUT", f"/patients/{patient['_id']}", json={"lastName": "Jones"}).json()["data"]
    assert updated["lastName"] == "Jones" and updated["firstName"] == "Jane"
    appointment = doc.appointment()
    listed = doc.call("GET", "/appointments/doctors").json()
    assert listed["success"] is True and [a["_id"] for a in listed["data"]] == [appointment]
    got = doc.call("GET", f"/appointments/get/{appointment}").json()["data"]
    assert got["name"] == "Annual Checkup" and got["status"] == "planned" and "createdAt" in got
    assert doc.call("GET", "/appointments/get/ffffffffffffffffffffffff").status_code == 404


def test_auth_expiry_subscription_and_isolation(medisync_server: RunningServer) -> None:
    alice = Doctor(medisync_server)
    appointment = alice.appointment()
    medisync_server.server.add_user("bob@example.org", "pw-bob")
    bob = Doctor(medisync_server, "bob@example.org", "pw-bob")
    for method, path in [("GET", f"/appointments/get/{appointment}"), ("GET", f"/transcriptions/{appointment}"),
                         ("GET", f"/notes/{appointment}"), ("GET", f"/recordings/get/{appointment}")]:
        reply = bob.call(method, path)
        assert reply.status_code == 404 and reply.json() == {"success": False, "error": reply.json()["error"]}
    assert bob.upload(appointment, b"x").status_code == 404
    assert bob.call("GET", "/appointments/doctors").json()["data"] == []
    assert httpx.get(f"{medisync_server.api_url}/appointments/doctors").status_code == 401

    medisync_server.server.set_subscription("bob@example.org", False)
    refused = bob.call("GET", "/appointments/doctors")
    assert refused.status_code == 403 and refused.json()["success"] is False
    status = bob.call("GET", "/settings/subscription").json()
    assert status["success"] is True and status["data"]["active"] is False

    medisync_server.server.expire_tokens()
    expired = alice.call("GET", "/appointments/doctors")
    assert expired.status_code == 401 and "expired" in expired.json()["error"]
    assert Doctor(medisync_server).call("GET", "/appointments/doctors").status_code == 200


def test_short_token_ttl_expires(make_medisync_server: Any) -> None:
    srv = make_medisync_server(token_ttl_s=-1.0)  # issued already expired: no waiting in the test
    assert Doctor(srv).call("GET", "/appointments/doctors").status_code == 401


def test_one_recording_per_appointment_download_and_delete(medisync_server: RunningServer) -> None:
    doc = Doctor(medisync_server)
    appointment = doc.appointment()
    content = wav_bytes(speech_then_silence())
    first = doc.upload(appointment, content)
    data = first.json()["data"]
    assert first.status_code == 200
    assert {"_id", "appointment_id", "recording_url", "recording_key", "createdAt", "updatedAt"} <= set(data)
    second = doc.upload(appointment, content)
    assert second.status_code == 409 and "already exists" in second.json()["error"]
    assert doc.call("GET", f"/recordings/get/{appointment}").content == content
    # transcribed after the upload was answered, as MediSync does: poll with a deadline
    poll(lambda: bool(doc.call("GET", f"/transcriptions/{appointment}").json()["transcription"]), "the transcript")
    segments = doc.call("GET", f"/transcriptions/{appointment}").json()["transcription"]
    assert segments == [{"speaker": "SPEAKER_0", "text": "[speech 0.000-1.000 s]", "start_time": 0.0,
                         "end_time": 1.0, "source": "recording"}]
    assert doc.call("DELETE", f"/recordings/{appointment}").json()["success"] is True
    assert doc.call("GET", f"/recordings/get/{appointment}").status_code == 404
    assert doc.upload(appointment, content).status_code == 200


def test_upload_over_the_limit_is_413(make_medisync_server: Any) -> None:
    srv = make_medisync_server(max_upload_bytes=10_000)
    doc = Doctor(srv)
    appointment = doc.appointment()
    streamed = doc.upload(appointment, bytes(20_000))  # within the Content-Length allowance: caught while streaming
    assert streamed.status_code == 413 and streamed.json()["success"] is False
    upfront = doc.upload(appointment, bytes(200_000))  # refused from Content-Length before reading the body
    assert upfront.status_code == 413
    assert doc.upload(appointment, wav_bytes(bytes(10_000 - 44))).status_code == 200  # exactly the limit
    assert not list((srv.data_dir / "recordings").glob("*.upload"))


def test_transcriptions_notes_and_diagnosis_are_labelled_placeholders(medisync_server: RunningServer) -> None:
    doc = Doctor(medisync_server)
    appointment = doc.appointment()
    assert doc.call("GET", f"/notes/{appointment}").json() == {"success": True, "data": []}
    added = doc.call("POST", f"/transcriptions/add/{appointment}", json={"transcription": "Hello."}).json()
    assert added["data"]["transcription"] == "Hello." and added["data"]["appointment_id"] == appointment
    assert doc.call("POST", f"/transcriptions/add/{appointment}", json={"transcription": "x"}).status_code == 409
    notes = doc.call("GET", f"/notes/{appointment}").json()["data"]
    assert len(notes) == 1 and notes[0]["notes"].startswith("[placeholder:")
    mine = doc.call("POST", f"/notes/add/{appointment}", json={"notes": "Chest pain.", "summary": "Short"}).json()
    assert mine["data"]["notes"] == "Chest pain."
    diagnosed = doc.call("POST", f"/notes/diagnosis/{appointment}").json()["data"]
    prediction = diagnosed["diagnosis_prediction"]
    assert set(prediction) == {"status", "main_diagnosis", "icd_code", "reason"}
    assert prediction["icd_code"] == "R69" and "placeholder" in prediction["main_diagnosis"]


def test_rest_fault_knobs(medisync_server: RunningServer) -> None:
    doc = Doctor(medisync_server)
    knobs = medisync_server.knobs
    knobs.fail_next("/api/appointments/doctors", 2, status=429, retry_after=3)
    knobs.fail_next("/api/patients/search", kind="malformed")
    knobs.fail_next("/api/appointments/add", kind="envelope")
    first, second, third = (doc.call("GET", "/appointments/doctors") for _ in range(3))
    assert (first.status_code, first.headers["Retry-After"], second.status_code) == (429, "3", 429)
    assert third.status_code == 200
    malformed = doc.call("GET", "/patients/search")
    assert malformed.status_code == 200
    try:
        malformed.json()
        raise AssertionError("body should not be JSON")
    except json.JSONDecodeError:
        pass
    envelope = doc.call("POST", "/appointments/add", json={"name": "x"})
    assert envelope.status_code == 200 and envelope.json()["success"] is False


def test_state_survives_restart(server_process: Any) -> None:
    proc = server_process()
    token, uid = proc.login()
    headers = {"Authorization": f"Bearer {token}"}
    api = proc.urls.api_url
    appointment = httpx.post(f"{api}/appointments/add", params={"uid": uid}, headers=headers,
                             json={"name": "Visit"}).json()["appointment"]["_id"]
    content = wav_bytes(speech_then_silence())
    upload = httpx.post(f"{api}/recordings/add/{appointment}", params={"uid": uid}, headers=headers,
                        files={"audio": ("visit.wav", content, "audio/wav")})
    assert upload.status_code == 200
    proc.restart(kill=True)
    api = proc.urls.api_url
    assert httpx.get(f"{api}/appointments/get/{appointment}", headers=headers).json()["data"]["name"] == "Visit"
    assert httpx.get(f"{api}/recordings/get/{appointment}", headers=headers).content == content
    again = httpx.post(f"{api}/recordings/add/{appointment}", params={"uid": uid}, headers=headers,
                       files={"audio": ("visit.wav", content, "audio/wav")})
    assert again.status_code == 409
