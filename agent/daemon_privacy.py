"""The daemon's side of the clinician's privacy controls: consent at visit start, the pause, the audit trail.

- ``visit_start`` carries the patient's consent answer (:mod:`agent.consent`): with ``visit.require_consent`` on, a
  start without ``given`` or ``declined`` is refused with code 77 (the CLI's exit code); ``declined`` records
  nothing but its ``consent`` line in the audit trail and counts in ``visits_declined``.
- ``visit_pause`` / ``visit_resume`` drive the recording visit's pause (:mod:`agent.visit_pause`); ``status``
  shows ``paused``, the metrics ``visit_paused`` and ``paused_seconds``.
- The audit trail (:mod:`agent.audit_log`) hears every visit's events, and the upload queue's confirmations and
  retention deletions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeGuard

from agent.archive.upload_queue import UploadQueue
from agent.audit_log import AuditLog, confirm_uploads, queue_listener
from agent.consent import Consent, decide, parse_consent, record_declined
from agent.control import DaemonStatus, PauseVisit, Response, ResumeVisit, failure, ok
from agent.draining import EndedTotals
from agent.errors import AgentError, ConsentRequiredError
from agent.pause_key import Pausable, apply_pause
from agent.settings import AgentSettings


class Privacy:
    def __init__(self, settings: AgentSettings, totals: EndedTotals, status: Callable[[], DaemonStatus],
                 expect_speech: Callable[[bool], None], queue: UploadQueue) -> None:  # fmt: skip
        self.audit = AuditLog.for_settings(settings)
        self._settings = settings
        self._totals = totals
        self._status = status
        self._expect_speech = expect_speech
        """The microphone detector's "no speech" rule: off while paused (a pause is quiet on purpose)."""
        self.listen(queue)

    def reload(self, settings: AgentSettings, queue: UploadQueue) -> None:
        """New settings (SIGHUP): the trail may have moved; ``queue`` reports to it."""
        self._settings = settings
        self.audit = AuditLog.for_settings(settings)
        self.listen(queue)

    def listen(self, queue: UploadQueue) -> None:
        queue.on_event = queue_listener(self.audit)
        confirm_uploads(self.audit, queue.items())

    async def consent(self, appointment_id: str, answer: str | None) -> Consent | Response:
        """The consent a visit starts with, or the answer that ends the start request (declined, refused)."""
        try:
            consent = decide(parse_consent(answer), required=self._settings.visit.require_consent)
            if consent != "declined":
                return consent
            visit_id = await asyncio.to_thread(record_declined, self.audit, appointment_id)
        except AgentError as exc:
            return failure(str(exc), exc.exit_code if isinstance(exc, ConsentRequiredError) else 0)
        self._totals.visits_declined += 1
        return ok(self._status(), f"consent declined: nothing recorded (audit trail: visit {visit_id})")

    @staticmethod
    def handles(request: object) -> TypeGuard[PauseVisit | ResumeVisit]:
        return isinstance(request, PauseVisit | ResumeVisit)

    async def pause(self, request: PauseVisit | ResumeVisit, visit: Pausable | None) -> Response:
        """``visit_pause`` or ``visit_resume`` on the recording visit (None: no visit is recording)."""
        pause = isinstance(request, PauseVisit)
        done, message = await apply_pause(visit, pause)
        if done:
            self._expect_speech(not pause)
        return ok(self._status(), message) if done else failure(message)
