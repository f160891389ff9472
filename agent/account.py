"""What a visit needs from the MediSync account before recording starts: a login, the subscription, the appointment.

Recording never depends on the network: when MediSync cannot be reached the visit is recorded anyway (the stream
keeps dialling, the upload waits in the queue). Only definite answers stop a visit before it starts: a wrong
password and an appointment that does not exist, because then nothing recorded could ever be delivered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from agent.api.medisync import MediSyncClient
from agent.api.models import NewAppointment
from agent.errors import AuthError, NotFoundError, SubscriptionError, TransportError
from agent.stream.client import TokenProvider

log = logging.getLogger(__name__)


def token_provider(client: MediSyncClient) -> TokenProvider:
    """The speech stream's token source: the client's current token, a fresh login when asked (after a 401)."""

    async def token(force_login: bool) -> str:
        session = client.http.session
        if force_login or session is None:
            session = await client.login()
        return session.token.reveal()

    return token


@dataclass(frozen=True, slots=True)
class VisitAccess:
    appointment_id: str
    stream_allowed: bool
    """False when MediSync says the subscription is inactive: record and queue, but do not stream."""
    online: bool
    """False when MediSync could not be reached; the visit is recorded and delivered later."""


async def prepare_visit(
    client: MediSyncClient, appointment_id: str | None, *, patient_id: str | None = None
) -> VisitAccess:
    """Log in, check the subscription, check (or create, given a patient) the appointment.

    Raises AuthError for refused credentials and NotFoundError for an unknown appointment; network trouble only
    logs a warning and returns ``online=False``.
    """
    try:
        await client.login()
        stream_allowed = await _subscription_active(client)
        if appointment_id is None:
            if patient_id is None:
                raise ValueError("an appointment id or a patient id to create one for is needed")
            appointment_id = await _create_appointment(client, patient_id)
        elif not await _appointment_exists(client, appointment_id):
            stream_allowed = False
    except AuthError as exc:
        raise AuthError(f"MediSync refused the login: {exc}", status=exc.status) from exc
    except NotFoundError as exc:
        raise NotFoundError(f"appointment {appointment_id or '(new)'} not found for this account",
                            status=exc.status) from exc  # fmt: skip
    except TransportError as exc:
        if appointment_id is None:
            raise
        log.warning("MediSync unreachable (%s): recording anyway; streaming and upload will catch up", exc)
        return VisitAccess(appointment_id, stream_allowed=True, online=False)
    return VisitAccess(appointment_id, stream_allowed=stream_allowed, online=True)


async def _subscription_active(client: MediSyncClient) -> bool:
    try:
        subscription = await client.subscription()
    except SubscriptionError:
        log.warning("no active MediSync subscription: recording without live transcript; the upload waits")
        return False
    if subscription.active is False:
        log.warning("MediSync subscription inactive: recording without live transcript; the upload waits")
        return False
    return True


async def _appointment_exists(client: MediSyncClient, appointment_id: str) -> bool:
    """True when MediSync shows the appointment; False when it cannot say because the subscription is inactive.

    MediSync answers 403 to every appointment request without a subscription. That is no reason to lose the visit:
    it is recorded and queued (the upload is blocked until the subscription is active again).
    """
    try:
        await client.get_appointment(appointment_id)
    except SubscriptionError:
        log.warning("appointment not checked: no active MediSync subscription; recording anyway, the upload waits")
        return False
    return True


async def _create_appointment(client: MediSyncClient, patient_id: str) -> str:
    now = datetime.now()
    new = NewAppointment(name="Visit", date=now.strftime("%Y-%m-%d"), time=now.strftime("%H:%M"),
                         patient_id=patient_id, status="planned", appointment_type="in_person")  # fmt: skip
    appointment = await client.add_appointment(new)
    log.info("created appointment %s", appointment.id)
    return appointment.id
