"""MediSync REST client: every endpoint of the quickstart and the API reference notes.

    async with MediSyncClient(settings.api, load_credentials(settings.api)) as api:
        patient = await api.add_patient(NewPatient(firstName=..., lastName=...))
        appointment = await api.add_appointment(NewAppointment(name=..., date=..., time=..., patient_id=patient.id))
        await api.upload_recording(appointment.id, Path("visit.wav"), progress=print)

Login happens on first use; an expired token costs one re-login and one retry (see :mod:`agent.api.transport`).
Recording uploads stream from disk, refuse files over the documented limit before sending and reconcile the
"already exists" answer by comparing what the server holds (see :mod:`agent.api.recordings`).
Pass ``transport=`` (an httpx transport) to run against something other than the network.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from agent.api import recordings
from agent.api.models import (
    Appointment,
    DiagnosisPrediction,
    NewAppointment,
    NewNote,
    NewPatient,
    Note,
    Patient,
    PatientUpdate,
    Recording,
    Segment,
    Subscription,
    TranscriptionRecord,
    to_builtins,
)
from agent.api.multipart import AudioBody, Progress
from agent.api.recordings import Download, UploadResult
from agent.api.responses import Document, unwrap
from agent.api.secret import Credentials
from agent.api.transport import AuthedHttp, Call, Session
from agent.errors import NotFoundError, ResponseError
from agent.settings import ApiSettings

T = TypeVar("T")

MAX_UPLOAD_BYTES = 500 * 1024 * 1024
"""MediSync's documented recording size limit ("Max file size: 500MB"), as in ``UploadSettings.max_bytes``."""


def _id(value: str) -> str:
    """An id as one path segment (an id can never reach another path)."""
    if not value:
        raise ValueError("empty id")
    return quote(value, safe="")


class MediSyncClient:
    """Async client for MediSync's REST API."""

    def __init__(
        self,
        settings: ApiSettings,
        credentials: Credentials,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
    ) -> None:
        self.settings = settings
        self.http = AuthedHttp(settings, credentials, transport=transport, clock=clock)
        self.max_upload_bytes = max_upload_bytes

    async def __aenter__(self) -> MediSyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # --- account ---------------------------------------------------------------------------------------------

    async def login(self) -> Session:
        """``POST /login``; later calls log in by themselves when needed."""
        return await self.http.login()

    async def subscription(self) -> Subscription:
        """``GET /settings/subscription?uid=``."""
        call = Call("GET", "settings/subscription", "GET settings/subscription", uid=True)
        return _answer(await self.http.request(call), Subscription, call.label, "subscription")

    # --- patients --------------------------------------------------------------------------------------------

    async def add_patient(self, patient: NewPatient) -> Patient:
        """``POST /patients/add?uid=``."""
        call = Call("POST", "patients/add", "POST patients/add", uid=True, json=to_builtins(patient))
        return _answer(await self.http.request(call), Patient, call.label, "patient")

    async def search_patients(self, query: str) -> list[Patient]:
        """``GET /patients/search?uid=&query=``."""
        call = Call("GET", "patients/search", "GET patients/search", uid=True, params={"query": query})
        return _answer(await self.http.request(call), list[Patient], call.label, "patients", "patient")

    async def update_patient(self, patient_id: str, update: PatientUpdate) -> Patient:
        """``PUT /patients/{patient_id}?uid=``."""
        call = Call("PUT", f"patients/{_id(patient_id)}", "PUT patients", uid=True, json=to_builtins(update))
        return _answer(await self.http.request(call), Patient, call.label, "patient")

    # --- appointments ----------------------------------------------------------------------------------------

    async def add_appointment(self, appointment: NewAppointment) -> Appointment:
        """``POST /appointments/add?uid=``; the quickstart shows the result under ``appointment``, not ``data``."""
        call = Call("POST", "appointments/add", "POST appointments/add", uid=True, json=to_builtins(appointment))
        return _answer(await self.http.request(call), Appointment, call.label, "appointment")

    async def get_appointment(self, appointment_id: str) -> Appointment:
        """``GET /appointments/get/{appointment_id}``."""
        call = Call("GET", f"appointments/get/{_id(appointment_id)}", "GET appointments/get")
        return _answer(await self.http.request(call), Appointment, call.label, "appointment")

    async def list_appointments(self) -> list[Appointment]:
        """``GET /appointments/doctors?uid=``: the logged-in doctor's appointments."""
        call = Call("GET", "appointments/doctors", "GET appointments/doctors", uid=True)
        return _answer(await self.http.request(call), list[Appointment], call.label, "appointments", "appointment")

    # --- recordings ------------------------------------------------------------------------------------------

    async def upload_recording(
        self, appointment_id: str, path: Path | AudioBody, *, progress: Progress | None = None
    ) -> UploadResult:
        """Upload ``path`` (a plaintext file, or an :class:`AudioBody` such as a sealed recording decrypted while it
        streams) as the appointment's recording.

        Refuses a file over the limit before sending (:class:`~agent.errors.UploadTooLargeError`). When MediSync
        already holds a recording for the appointment, downloads it while hashing: the same bytes end as success
        (``already_present=True``), different bytes as :class:`~agent.errors.RecordingMismatchError`.
        """
        return await recordings.upload(self, appointment_id, path, progress=progress)

    async def post_recording(self, appointment_id: str, path: Path | AudioBody, *,
                             progress: Progress | None = None) -> Recording:  # fmt: skip
        """One ``POST /recordings/add/{appointment_id}?uid=`` (multipart field ``audio``), no reconciliation."""
        return await recordings.post(self, appointment_id, path, progress=progress)

    async def download_recording(self, appointment_id: str, destination: Path) -> Download:
        """``GET /recordings/get/{appointment_id}`` streamed into ``destination`` (replaced only when complete)."""
        return await recordings.download(self, appointment_id, destination)

    async def recording_digest(self, appointment_id: str) -> Download:
        """Size and SHA-256 of the recording MediSync holds, hashed while streaming (nothing kept)."""
        return await recordings.download(self, appointment_id, None)

    async def delete_recording(self, appointment_id: str) -> None:
        """``DELETE /recordings/{appointment_id}``."""
        await self.http.request(Call("DELETE", f"recordings/{_id(appointment_id)}", "DELETE recordings"))

    def recording_call(self, method: str, appointment_id: str, **kwargs: Any) -> Call:
        """The :class:`Call` for a recordings endpoint (used by :mod:`agent.api.recordings`)."""
        if method == "POST":
            return Call("POST", f"recordings/add/{_id(appointment_id)}", "POST recordings/add", uid=True, **kwargs)
        return Call("GET", f"recordings/get/{_id(appointment_id)}", "GET recordings/get", **kwargs)

    # --- transcriptions --------------------------------------------------------------------------------------

    async def get_transcription(self, appointment_id: str) -> list[Segment]:
        """``GET /transcriptions/{appointment_id}``: diarised segments (quickstart: top-level ``transcription``)."""
        call = Call("GET", f"transcriptions/{_id(appointment_id)}", "GET transcriptions")
        return _answer(await self.http.request(call), list[Segment], call.label, "transcription")

    async def wait_for_transcription(
        self,
        appointment_id: str,
        *,
        timeout_s: float,
        interval_s: float = 0.5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> list[Segment]:
        """Poll until the transcription exists and has segments (processing takes a while after an upload)."""
        deadline = clock() + timeout_s
        while True:
            try:
                segments = await self.get_transcription(appointment_id)
            except NotFoundError:
                segments = []
            if segments:
                return segments
            if clock() >= deadline:
                raise NotFoundError(f"GET transcriptions: no transcription after {timeout_s:g} s")
            await sleep(interval_s)

    async def add_transcription(self, appointment_id: str, text: str) -> TranscriptionRecord:
        """``POST /transcriptions/add/{appointment_id}?uid=`` with ``{"transcription": text}``."""
        call = Call(
            "POST",
            f"transcriptions/add/{_id(appointment_id)}",
            "POST transcriptions/add",
            uid=True,
            json={"transcription": text},
        )
        return _answer(await self.http.request(call), TranscriptionRecord, call.label, "transcription")

    # --- notes and diagnosis ---------------------------------------------------------------------------------

    async def add_note(self, appointment_id: str, note: NewNote) -> Note:
        """``POST /notes/add/{appointment_id}``."""
        call = Call("POST", f"notes/add/{_id(appointment_id)}", "POST notes/add", json=to_builtins(note))
        return _answer(await self.http.request(call), Note, call.label, "note", "notes")

    async def get_notes(self, appointment_id: str) -> list[Note]:
        """``GET /notes/{appointment_id}?uid=``: an array, empty when there are none."""
        call = Call("GET", f"notes/{_id(appointment_id)}", "GET notes", uid=True)
        return _answer(await self.http.request(call), list[Note], call.label, "notes")

    async def diagnose(self, appointment_id: str) -> DiagnosisPrediction:
        """``POST /notes/diagnosis/{appointment_id}``: the AI diagnosis with its ICD-10 code."""
        call = Call("POST", f"notes/diagnosis/{_id(appointment_id)}", "POST notes/diagnosis")
        doc = await self.http.request(call)
        try:  # MediSync may answer with the whole notes object, wherever it puts that
            note: Note | None = _answer(doc, Note, call.label, "notes", "note")
        except ResponseError:
            note = None
        if note is not None and note.diagnosis_prediction is not None:
            return note.diagnosis_prediction
        return _answer(doc, DiagnosisPrediction, call.label, "diagnosis_prediction", "diagnosis")


def _answer(doc: Document, into: type[T], endpoint: str, *keys: str) -> T:
    """The answer's object under ``data``, one of ``keys`` (the quickstart's names) or at the top level."""
    return unwrap(doc, into, keys=keys, endpoint=endpoint, what=keys[0] if keys else "data")
