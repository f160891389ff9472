"""Patient consent to record a visit: the answer given at visit start, and what the configuration requires. Pure.

``visit start --consent given|declined|not-asked`` (also ``run`` and the control socket). With
``visit.require_consent`` on, a start needs an answer (``given`` or ``declined``): without one it is refused with
:class:`~agent.errors.ConsentRequiredError` (exit 77) and nothing is recorded. ``declined`` records nothing either:
the visit exists only as one ``consent`` line in the audit trail (:mod:`agent.audit_log`), and the daemon counts it
(``visits_declined``).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Literal

from agent.errors import ConsentRequiredError, InputError

if TYPE_CHECKING:
    from agent.audit_log import AuditLog

Consent = Literal["given", "declined", "not-asked"]
CONSENT_VALUES: tuple[Consent, ...] = ("given", "declined", "not-asked")

REQUIRED_MESSAGE = ("consent required (visit.require_consent is on): ask the patient, then start with --consent given "
                    "or --consent declined; nothing was recorded")  # fmt: skip


def parse_consent(value: str | None) -> Consent | None:
    """A consent answer as typed (None: not given); InputError naming the allowed values otherwise."""
    if value is None:
        return None
    text = value.strip().lower()
    if text not in CONSENT_VALUES:
        raise InputError(f"unknown consent {value.strip()[:40]!r}: use given, declined or not-asked")
    return text


def decide(consent: Consent | None, *, required: bool) -> Consent:
    """The consent the visit runs with; ConsentRequiredError when an answer is required and none was given."""
    if consent is None or consent == "not-asked":
        if required:
            raise ConsentRequiredError(REQUIRED_MESSAGE)
        return "not-asked"
    return consent


def record_declined(audit: AuditLog, appointment_id: str | None) -> str:
    """Audit a declined visit (its only trace on disk); returns the visit id it was given."""
    visit_id = str(uuid.uuid4())
    audit.append("consent", visit=visit_id, consent="declined", appointment=appointment_id or "")
    return visit_id
