"""MediSync REST models, field names exactly as MediSync spells them.

Response models tolerate fields they do not know (MediSync may add some); request models are what we send.
Only ``_id`` is required in returned objects: MediSync documents the rest loosely, and a missing optional field
must not make an upload or a transcript unreadable.
"""

from __future__ import annotations

from typing import Any

import msgspec

# --- responses -------------------------------------------------------------------------------------------------


class Envelope(msgspec.Struct, kw_only=True):
    """The outer shape of every response: ``{"success": true, "data": ...}`` or ``{"success": false, "error": ...}``."""

    success: bool = True
    error: str | None = None


class Login(msgspec.Struct, kw_only=True):
    """``POST /login``: fields at the top level (the quickstart) or under ``data`` (the reference's envelope)."""

    success: bool = True
    token: str
    uid: str
    userTitle: str | None = None
    firstName: str | None = None
    lastName: str | None = None


class Address(msgspec.Struct, kw_only=True, omit_defaults=True):
    street: str | None = None
    city: str | None = None
    zipCode: str | None = None
    country: str | None = None


class Insurance(msgspec.Struct, kw_only=True, omit_defaults=True):
    provider: str | None = None
    policyNumber: str | None = None


class Contact(msgspec.Struct, kw_only=True, omit_defaults=True):
    phone: str | None = None
    email: str | None = None


class Patient(msgspec.Struct, kw_only=True):
    id: str = msgspec.field(name="_id")
    firstName: str | None = None
    lastName: str | None = None
    dateOfBirth: str | None = None
    address: Address | None = None
    insurance: Insurance | None = None
    contact: Contact | None = None
    createdAt: str | None = None
    updatedAt: str | None = None

    def __repr__(self) -> str:
        # Patient details stay out of logs and tracebacks.
        return f"Patient(id={self.id!r})"


class Appointment(msgspec.Struct, kw_only=True):
    id: str = msgspec.field(name="_id")
    name: str | None = None
    date: str | None = None
    time: str | None = None
    patient_id: str | None = None
    status: str | None = None
    language: str | None = None
    notes_type: str | None = None
    appointment_type: str | None = None
    createdAt: str | None = None
    updatedAt: str | None = None

    def __repr__(self) -> str:
        return f"Appointment(id={self.id!r}, status={self.status!r})"


class Recording(msgspec.Struct, kw_only=True):
    """``data`` of ``POST /recordings/add/{appointment_id}``; ``appointment_id`` optional: checked when present."""

    id: str = msgspec.field(name="_id")
    appointment_id: str | None = None
    recording_url: str | None = None
    recording_key: str | None = None
    createdAt: str | None = None
    updatedAt: str | None = None


class Segment(msgspec.Struct, kw_only=True):
    """One diarised piece of ``GET /transcriptions/{appointment_id}``."""

    speaker: str
    text: str
    start_time: float
    end_time: float

    def __repr__(self) -> str:
        return f"Segment(speaker={self.speaker!r}, start_time={self.start_time}, end_time={self.end_time})"


class TranscriptionRecord(msgspec.Struct, kw_only=True):
    """``data`` of ``POST /transcriptions/add/{appointment_id}``."""

    id: str = msgspec.field(name="_id")
    appointment_id: str
    transcription: str
    createdAt: str | None = None
    updatedAt: str | None = None

    def __repr__(self) -> str:
        return f"TranscriptionRecord(id={self.id!r}, appointment_id={self.appointment_id!r})"


class DiagnosisPrediction(msgspec.Struct, kw_only=True):
    status: str | None = None
    main_diagnosis: str | None = None
    icd_code: str | None = None
    reason: str | None = None

    def __repr__(self) -> str:
        return f"DiagnosisPrediction(status={self.status!r}, icd_code={self.icd_code!r})"


class Note(msgspec.Struct, kw_only=True):
    id: str = msgspec.field(name="_id")
    appointment_id: str | None = None
    notes: str | None = None
    summary: str | None = None
    feedback_score: float | None = None
    diagnosis_prediction: DiagnosisPrediction | None = None
    createdAt: str | None = None
    updatedAt: str | None = None

    def __repr__(self) -> str:
        return f"Note(id={self.id!r}, appointment_id={self.appointment_id!r})"


class Subscription(msgspec.Struct, kw_only=True):
    """``data`` of ``GET /settings/subscription``: MediSync does not document its fields, so all are optional."""

    active: bool | None = None
    status: str | None = None
    plan: str | None = None
    expiresAt: str | None = None


# --- requests --------------------------------------------------------------------------------------------------


class NewPatient(msgspec.Struct, kw_only=True, omit_defaults=True):
    firstName: str
    lastName: str
    dateOfBirth: str | None = None
    address: Address | None = None
    insurance: Insurance | None = None
    contact: Contact | None = None

    def __repr__(self) -> str:
        return "NewPatient(...)"


class PatientUpdate(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Fields to change with ``PUT /patients/{patient_id}``; unset fields stay as they are."""

    firstName: str | None = None
    lastName: str | None = None
    dateOfBirth: str | None = None
    address: Address | None = None
    insurance: Insurance | None = None
    contact: Contact | None = None

    def __repr__(self) -> str:
        return "PatientUpdate(...)"


class NewAppointment(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    date: str
    time: str
    patient_id: str
    status: str = "planned"
    language: str | None = None
    notes_type: str | None = None
    appointment_type: str | None = None

    def __repr__(self) -> str:
        return f"NewAppointment(patient_id={self.patient_id!r})"


class NewNote(msgspec.Struct, kw_only=True, omit_defaults=True):
    notes: str
    summary: str | None = None

    def __repr__(self) -> str:
        return "NewNote(...)"


def to_builtins(obj: Any) -> Any:
    """A request model as JSON-ready builtins (omitting unset optional fields)."""
    return msgspec.to_builtins(obj)
