"""Fixtures and helpers for the MediSync / MediSearch client tests (H-client's area).

``api_server``: the local MediSync server (agent.server) in a background thread on 127.0.0.1 port 0, with two
users (``EMAIL`` and ``OTHER_EMAIL``). Helpers: ``make_client``, ``visit_wav``, ``new_appointment``.
"""

from __future__ import annotations

import asyncio
import hashlib
import wave
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import soxr

from agent.api.medisync import MediSyncClient
from agent.api.models import NewAppointment, NewPatient
from agent.api.secret import Credentials, Secret
from agent.server.app import ServerSettings, ServerThread
from agent.settings import ApiSettings

T = TypeVar("T")
EMAIL, PASSWORD = "doctor@example.org", "correct horse battery"
OTHER_EMAIL, OTHER_PASSWORD = "other@example.org", "another long password"
SEARCH_KEY = "demo-medisearch-key"
DIALOGUE = Path(__file__).resolve().parents[2] / "agent" / "data" / "dialogue.wav"


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(ServerSettings(data_dir=str(tmp_path / "server"), transcriber="placeholder")) as running:
        running.server.add_user(EMAIL, PASSWORD, title="Dr.", first_name="John", last_name="Doe")
        running.server.add_user(OTHER_EMAIL, OTHER_PASSWORD)
        yield running


class RecordingTransport(httpx.AsyncHTTPTransport):
    """The real HTTP transport, noting (method, path) of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        return await super().handle_async_request(request)


def make_client(api_url: str, email: str = EMAIL, password: str = PASSWORD, **kwargs: Any) -> MediSyncClient:
    settings = ApiSettings(api_url=api_url, email=email, timeout_s=30.0)
    return MediSyncClient(settings, Credentials(email, Secret(password)), **kwargs)


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


def visit_wav(tmp_path: Path) -> Path:
    """The bundled dialogue as 16 kHz mono s16 (resampled if the bundled file has another rate)."""
    with wave.open(str(DIALOGUE), "rb") as src:
        rate, channels, width = src.getframerate(), src.getnchannels(), src.getsampwidth()
        pcm = np.frombuffer(src.readframes(src.getnframes()), dtype=np.int16)
    assert (channels, width) == (1, 2)
    if rate == 16000:
        return DIALOGUE
    resampled = soxr.resample(pcm.astype(np.float32) / 32768.0, rate, 16000)
    out = tmp_path / "dialogue16k.wav"
    with wave.open(str(out), "wb") as dst:
        dst.setnchannels(1)
        dst.setsampwidth(2)
        dst.setframerate(16000)
        dst.writeframes((np.clip(resampled, -1, 1) * 32767).astype(np.int16).tobytes())
    return out


async def new_appointment(api: MediSyncClient) -> str:
    patient = await api.add_patient(NewPatient(firstName="Jane", lastName="Smith", dateOfBirth="1985-03-15"))
    appointment = await api.add_appointment(
        NewAppointment(name="Annual Checkup", date="2024-01-15", time="14:30", patient_id=patient.id, language="de",
                       notes_type="soap_clinical_notes_de", appointment_type="in_person")
    )
    return appointment.id


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()



def write_other_wav(tmp_path: Path) -> Path:
    path = tmp_path / "other.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(np.arange(16000, dtype=np.int16).tobytes())
    return path
