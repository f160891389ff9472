"""MediSync REST endpoints under ``/api`` with the documented request and response shapes.

Envelope ``{"success": true, "data": ...}``, errors ``{"success": false, "error": "..."}``. Where the quickstart
shows another shape it wins, and ``data`` carries the same object too: login puts its fields at the top level;
``appointments/add`` answers ``{"success": true, "appointment": {...}, "data": {...}}``; ``GET transcriptions``
answers ``{"success": true, "transcription": [...], "data": [...]}``. Another user's ids answer 404, like unknown ids.

MediSync's documents leave the shape open, so the ``rest_shape`` knob answers every endpoint only under ``data``,
only under the quickstart's key, or at the top level instead; ``garble_next`` replaces answers with garbage
(:mod:`agent.server.garbage`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import wave
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent import SAMPLE_RATE
from agent.server.app import json_error
from agent.server.garbage import garble
from agent.server.limits import body_limit, decode_json, read_body, too_many_logins
from agent.server.store import Recording, Segment, iso, new_object_id
from agent.server.transcriber import Span, SpanDetector
from agent.server.upload_body import receive_audio

if TYPE_CHECKING:
    from agent.server.app import MediSyncServer

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MULTIPART_OVERHEAD = 64 * 1024
"""Bytes of multipart framing allowed on top of the file limit when judging Content-Length up front."""


async def json_body(request: web.Request, idle_s: float) -> dict[str, Any]:
    """The request's JSON object: 400 if it is not one (or nests too deeply), 413 over the endpoint's limit."""
    body = decode_json(await read_body(request, body_limit(request.path), idle_s))
    if not isinstance(body, dict):
        raise json_error(400, "Request body must be a JSON object")
    return body


def segment_json(seg: Segment) -> dict[str, Any]:
    return {"speaker": seg.speaker, "text": seg.text, "start_time": round(seg.start_s, 3),
            "end_time": round(seg.end_s, 3), "source": seg.source}


def wav_spans(path: Path) -> Iterator[list[Span]]:
    """Speech spans of an uploaded 16 kHz mono s16 WAV, a minute of audio per step (never the whole file in
    memory); nothing for a file that is not such a WAV."""
    try:
        with wave.open(str(path), "rb") as wav:
            if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (SAMPLE_RATE, 1, 2):
                return
            detector, pos = SpanDetector(), 0
            while block := wav.readframes(60 * SAMPLE_RATE):
                yield detector.feed(pos, block)
                pos += len(block) // 2
            yield detector.flush()
    except (wave.Error, EOFError, OSError):
        return


async def transcribe_recording(server: MediSyncServer, appointment_id: str, recording_id: str, path: Path) -> None:
    """Transcribe an uploaded recording after the upload was answered (as MediSync does: the transcript appears
    later); one span at a time, so live spans of other visits wait behind at most one of them."""
    steps = wav_spans(path)
    while (spans := await asyncio.to_thread(next, steps, None)) is not None:
        for span in spans:
            segments = await server.transcription.submit(span)
            current = server.store.recording(appointment_id)
            if current is None or current.id != recording_id:  # deleted (or replaced) meanwhile
                return
            server.store.add_segments(appointment_id, [
                Segment(s.speaker, s.start / SAMPLE_RATE, s.end / SAMPLE_RATE, s.text, "recording") for s in segments])


class RestApi:
    def __init__(self, server: MediSyncServer) -> None:
        self.server = server
        self.store = server.store

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/api/login", self.login)
        r.add_get("/api/settings/subscription", self.subscription)
        r.add_post("/api/patients/add", self.add_patient)
        r.add_get("/api/patients/search", self.search_patients)
        r.add_put("/api/patients/{patient_id}", self.update_patient)
        r.add_post("/api/appointments/add", self.add_appointment)
        r.add_get("/api/appointments/doctors", self.list_appointments)
        r.add_get("/api/appointments/get/{appointment_id}", self.get_appointment)
        r.add_post("/api/recordings/add/{appointment_id}", self.add_recording)
        r.add_get("/api/recordings/get/{appointment_id}", self.get_recording)
        r.add_delete("/api/recordings/{appointment_id}", self.delete_recording)
        r.add_get("/api/transcriptions/{appointment_id}", self.get_transcription)
        r.add_post("/api/transcriptions/add/{appointment_id}", self.add_transcription)
        r.add_post("/api/notes/add/{appointment_id}", self.add_notes)
        r.add_get("/api/notes/{appointment_id}", self.get_notes)
        r.add_post("/api/notes/diagnosis/{appointment_id}", self.diagnosis)

    @web.middleware
    async def fault_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self.server.knobs.take_rest_fault(request.path)
        if fault is not None and not fault.garbage:
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
            if fault.kind == "malformed":
                return web.Response(status=fault.status or 200, text='{"success": tru', headers=headers,
                                    content_type="application/json")
            body = {"success": False, "error": "Injected failure (test knob)"}
            return web.json_response(body, status=fault.status or (500 if fault.kind == "status" else 200),
                                     headers=headers)
        try:
            response = await handler(request)
        except web.HTTPException:
            raise
        except Exception:  # the envelope is the contract even for our own bugs; the traceback goes to the log
            log.exception("internal error serving %s %s", request.method, request.path)
            return web.json_response({"success": False, "error": "Internal server error"}, status=500)
        return response if fault is None else await garble(fault, response)

    def ok(self, data: Any, key: str, *, quickstart: bool = False) -> web.Response:
        """A success answer carrying ``data`` in the shape the ``rest_shape`` knob asks for. ``key`` is the
        quickstart's name for the object; ``quickstart``: the quickstart shows this answer with it (so the
        documented shape carries it beside ``data``)."""
        shape = self.server.knobs.rest_shape
        if shape == "named":
            return web.json_response({"success": True, key: data})
        if shape == "top":
            return web.json_response({"success": True, **data} if isinstance(data, dict) else data)
        if shape == "documented" and quickstart:
            return web.json_response({"success": True, key: data, "data": data})
        return web.json_response({"success": True, "data": data})

    # --- helpers ------------------------------------------------------------------------------------------------
    async def json_body(self, request: web.Request) -> dict[str, Any]:
        return await json_body(request, self.server.settings.body_timeout_s)

    def _appointment(self, uid: str, appointment_id: str) -> dict[str, Any]:
        doc = self.store.get_doc("appointment", uid, appointment_id)
        if doc is None:
            raise json_error(404, "Appointment not found")
        return doc

    # --- login & settings ---------------------------------------------------------------------------------------
    async def login(self, request: web.Request) -> web.Response:
        body = await self.json_body(request)
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            raise json_error(400, "email and password are required")
        address, limiter = request.remote or "unknown", self.server.logins
        wait = limiter.retry_after(email, address, self.server.clock())
        if wait is not None:  # checked before the password: a guess now tells nothing
            raise too_many_logins(wait)
        user = await asyncio.to_thread(self.store.check_password, email, password)  # PBKDF2: off the loop
        if user is None:
            limiter.failed(email, address, self.server.clock())
            raise json_error(401, "Invalid email or password")
        limiter.succeeded(email)
        fields = {"token": self.server.issue_token(user.uid), "uid": user.uid, "userTitle": user.title,
                  "firstName": user.first_name, "lastName": user.last_name}
        if self.server.knobs.rest_shape == "data":  # the reference's envelope; the quickstart shows the top level
            return web.json_response({"success": True, "data": fields})
        return web.json_response({"success": True, **fields})

    async def subscription(self, request: web.Request) -> web.Response:
        user = self.server.authenticate(request, need_subscription=False)
        return self.ok({"uid": user.uid, "active": user.subscription,
                        "status": "active" if user.subscription else "inactive", "plan": "local-demo"}, "subscription")

    # --- patients -----------------------------------------------------------------------------------------------
    async def add_patient(self, request: web.Request) -> web.Response:
        user = self.server.authenticate(request)
        return self.ok(self.store.put_doc("patient", user.uid, await self.json_body(request)), "patient")

    async def search_patients(self, request: web.Request) -> web.Response:
        user = self.server.authenticate(request)
        query = request.query.get("query", "").strip().lower()
        hits = [p for p in self.store.list_docs("patient", user.uid)
                if query in f"{p.get('firstName', '')} {p.get('lastName', '')}".lower()]
        return self.ok(hits, "patients")

    async def update_patient(self, request: web.Request) -> web.Response:
        user = self.server.authenticate(request)
        patient_id = request.match_info["patient_id"]
        old = self.store.get_doc("patient", user.uid, patient_id)
        if old is None:
            raise json_error(404, "Patient not found")
        doc = self.store.put_doc("patient", user.uid, {**old, **await self.json_body(request)}, doc_id=patient_id)
        return self.ok(doc, "patient")

    # --- appointments -------------------------------------------------------------------------------------------
    async def add_appointment(self, request: web.Request) -> web.Response:
        user = self.server.authenticate(request)
        body = await self.json_body(request)
        patient_id = body.get("patient_id")
        if patient_id is not None and self.store.get_doc("patient", user.uid, str(patient_id)) is None:
            raise json_error(404, "Patient not found")
        body.setdefault("status", "planned")
        doc = self.store.put_doc("appointment", user.uid, body)
        return self.ok(doc, "appointment", quickstart=True)

    async def list_appointments(self, request: web.Request) -> web.Response:
        user = self.server.authenticate(request)
        return self.ok(self.store.list_docs("appointment", user.uid), "appointments")

    async def get_appointment(self, request: web.Request) -> web.Response:
        user = self.server.authenticate(request)
        return self.ok(self._appointment(user.uid, request.match_info["appointment_id"]), "appointment")

    # --- recordings ---------------------------------------------------------------------------------------------
    def _recording_json(self, rec: Recording) -> dict[str, Any]:
        base = self.server.urls.api_url if self.server.urls else ""
        suffix = Path(rec.file_name).suffix
        return {"_id": rec.id, "appointment_id": rec.appointment_id,
                "recording_url": f"{base}/recordings/get/{rec.appointment_id}",
                "recording_key": f"recordings/{rec.id}{suffix}", "createdAt": iso(rec.created),
                "updatedAt": iso(rec.created), "size": rec.size, "sha256": rec.sha256}

    async def add_recording(self, request: web.Request) -> web.Response:
        user = self.server.authenticate(request)
        appointment_id = request.match_info["appointment_id"]
        self._appointment(user.uid, appointment_id)
        if self.store.recording(appointment_id) is not None:
            raise json_error(409, "Recording already exists for this appointment")
        limit = self.server.settings.max_upload_bytes
        if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD:
            raise json_error(413, f"File too large (max {limit} bytes)")
        if not request.content_type.startswith("multipart/"):
            raise json_error(400, "Expected multipart/form-data with field 'audio'")
        rec_id = new_object_id()
        tmp = self.store.recordings_dir / f"{rec_id}.upload"
        try:
            stored = await receive_audio(request, tmp, limit, self.server.settings.body_timeout_s)
            if stored is None:
                raise json_error(400, "Missing multipart field 'audio'")
            final = tmp.with_suffix(stored.format.suffix)  # named by its content, not by the client's file name
            os.replace(tmp, final)
            rec = Recording(rec_id, appointment_id, user.uid, final.name, stored.size, stored.sha256,
                            stored.content_type, self.server.clock())
            if not self.store.add_recording(rec):
                final.unlink()
                raise json_error(409, "Recording already exists for this appointment")
        finally:
            tmp.unlink(missing_ok=True)
        self.server.spawn(transcribe_recording(self.server, appointment_id, rec.id, final))
        return self.ok(self._recording_json(rec), "recording")

    def _owned_recording(self, request: web.Request) -> Recording:
        user = self.server.authenticate(request)
        appointment_id = request.match_info["appointment_id"]
        self._appointment(user.uid, appointment_id)
        rec = self.store.recording(appointment_id)
        if rec is None or rec.uid != user.uid:
            raise json_error(404, "Recording not found")
        return rec

    async def get_recording(self, request: web.Request) -> web.StreamResponse:
        rec = self._owned_recording(request)
        return web.FileResponse(self.store.recordings_dir / rec.file_name,
                                headers={"Content-Type": rec.content_type})

    async def delete_recording(self, request: web.Request) -> web.Response:
        rec = self._owned_recording(request)
        self.store.delete_recording(rec.appointment_id)
        (self.store.recordings_dir / rec.file_name).unlink(missing_ok=True)
        return self.ok(self._recording_json(rec), "recording")

    # --- transcriptions, notes, diagnosis -----------------------------------------------------------------------
    async def get_transcription(self, request: web.Request) -> web.Response:
        user = self.server.authenticate(request)
        appointment_id = request.match_info["appointment_id"]
        self._appointment(user.uid, appointment_id)
        segments = [segment_json(s) for s in self.store.segments(appointment_id)]
        return self.ok(segments, "transcription", quickstart=True)

    async def add_transcription(self, request: web.Request) -> web.Response:
        user = self.server.authenticate(request)
        appointment_id = request.match_info["appointment_id"]
        self._appointment(user.uid, appointment_id)
        text = (await self.json_body(request)).get("transcription")
        if not isinstance(text, str):
            raise json_error(400, "transcription (text) is required")
        if self.store.list_docs("transcription", user.uid, appointment_id):
            raise json_error(409, "Transcription already exists for this appointment")
        doc = self.store.put_doc("transcription", user.uid, {"appointment_id": appointment_id,
                                                              "transcription": text}, appointment_id)
        self.store.add_segments(appointment_id, [Segment("SPEAKER_0", 0.0, 0.0, text, "manual")])
        self._generate_notes(user.uid, appointment_id)
        return self.ok(doc, "transcription")

    def _generate_notes(self, uid: str, appointment_id: str) -> dict[str, Any]:
        segments = self.store.segments(appointment_id)
        speech_s = sum(s.end_s - s.start_s for s in segments)
        notes = (f"[placeholder: AI clinical notes would be generated here from {len(segments)} transcript "
                 f"segment(s), {speech_s:.1f} s of speech; the local server has no language model]")
        return self.store.put_doc("note", uid, {"appointment_id": appointment_id, "notes": notes,
                                                "summary": "[placeholder: AI summary]"}, appointment_id)

    async def add_notes(self, request: web.Request) -> web.Response:
        user = self.server.authenticate(request)
        appointment_id = request.match_info["appointment_id"]
        self._appointment(user.uid, appointment_id)
        body = await self.json_body(request)
        fields: dict[str, Any] = {k: body[k] for k in ("notes", "summary", "feedback_score") if k in body}
        return self.ok(self.store.put_doc("note", user.uid, {"appointment_id": appointment_id, **fields},
                                          appointment_id), "notes")  # fmt: skip

    async def get_notes(self, request: web.Request) -> web.Response:
        user = self.server.authenticate(request)
        appointment_id = request.match_info["appointment_id"]
        self._appointment(user.uid, appointment_id)
        return self.ok(self.store.list_docs("note", user.uid, appointment_id), "notes")

    async def diagnosis(self, request: web.Request) -> web.Response:
        user = self.server.authenticate(request)
        appointment_id = request.match_info["appointment_id"]
        self._appointment(user.uid, appointment_id)
        notes = self.store.list_docs("note", user.uid, appointment_id)
        note = notes[-1] if notes else self._generate_notes(user.uid, appointment_id)
        note["diagnosis_prediction"] = {
            "status": "placeholder", "main_diagnosis": "[placeholder: AI diagnosis would appear here]",
            "icd_code": "R69", "reason": "ICD-10 R69 (illness, unspecified): the local server has no AI model",
        }
        return self.ok(self.store.put_doc("note", user.uid, note, appointment_id, doc_id=note["_id"]), "notes")
