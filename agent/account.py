"""What a visit needs from the MediSync account before recording starts: a login, the subscription, the appointment.

Recording never waits for permission. Only two answers stop a visit before it starts, because with them nothing
recorded could ever be delivered: the password refused by a fresh login, and the appointment unknown (404 on its
own GET). Anything else (unreachable, timeout, 5xx, 429, an answer we cannot read, checks slower than
``api.confirm_timeout_s``) logs one WARNING and the visit records; the stream keeps dialling, the upload waits in
the queue. The warning names what failed, never a token, a server's own words or patient data.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime

from agent.api.medisync import MediSyncClient
from agent.api.models import NewAppointment
from agent.errors import (
    ApiError,
    AuthError,
    EnvelopeError,
    NotFoundError,
    RateLimitError,
    ResponseError,
    ServerError,
    SubscriptionError,
    TransportError,
)
from agent.stream.client import TokenProvider

log = logging.getLogger(__name__)


def token_provider(client: MediSyncClient) -> TokenProvider:
    """The speech stream's token source: the HTTP client's token; after a 401 (``force_login``) the token handed out
    last is reported refused, so the new login goes through the client's own login lock (one 401 path)."""
    last: str | None = None

    async def token(force_login: bool) -> str:
        nonlocal last
        last = await client.http.bearer(refused=last if force_login else None)
        return last

    return token


@dataclass(frozen=True, slots=True)
class VisitAccess:
    appointment_id: str
    stream_allowed: bool
    """False when MediSync says the subscription is inactive: record and queue, but do not stream."""
    online: bool
    """False when MediSync did not confirm the visit; it is recorded anyway and delivered later."""


@dataclass
class _Checks:
    """What the checks found so far (kept when the deadline cuts them short)."""

    stream_allowed: bool = True
    problems: list[str] = field(default_factory=list)


async def prepare_visit(
    client: MediSyncClient, appointment_id: str | None, *, patient_id: str | None = None
) -> VisitAccess:
    """Log in, check the subscription, check (or create, given a patient) the appointment.

    Raises AuthError for a refused password and NotFoundError for an unknown appointment; every other answer
    only logs one warning (``online=False``). Creating an appointment needs MediSync: there any failure raises.
    """
    if appointment_id is None:
        if patient_id is None:
            raise ValueError("an appointment id or a patient id to create one for is needed")
        return await _with_new_appointment(client, patient_id)
    checks = _Checks()
    deadline = client.settings.confirm_timeout_s
    try:
        async with asyncio.timeout(deadline):
            await _check(client, appointment_id, checks)
    except TimeoutError:
        checks.problems.append(f"no answer within {deadline:g} s")
    if checks.problems:
        log.warning("MediSync did not confirm the visit (%s): recording anyway; the stream and the upload will "
                    "catch up", "; ".join(checks.problems))  # fmt: skip
    return VisitAccess(appointment_id, stream_allowed=checks.stream_allowed, online=not checks.problems)


async def _check(client: MediSyncClient, appointment_id: str, checks: _Checks) -> None:
    try:
        await client.login()
    except AuthError as exc:
        raise AuthError(f"MediSync refused the login: {exc}", status=exc.status) from exc
    except ApiError as exc:
        checks.problems.append(f"login: {describe(exc)}")
        return
    checks.stream_allowed = await _subscription_active(client, checks)
    try:
        await client.get_appointment(appointment_id)
    except NotFoundError as exc:
        raise NotFoundError(f"appointment {appointment_id} not found for this account", status=exc.status) from exc
    except SubscriptionError:
        # MediSync answers 403 to every appointment request without a subscription: no reason to lose the visit.
        log.warning("appointment not checked: no active MediSync subscription; recording anyway, the upload waits")
        checks.stream_allowed = False
    except ApiError as exc:
        checks.problems.append(f"appointment: {describe(exc)}")


async def _subscription_active(client: MediSyncClient, checks: _Checks) -> bool:
    try:
        subscription = await client.subscription()
    except SubscriptionError:
        log.warning("no active MediSync subscription: recording without live transcript; the upload waits")
        return False
    except ApiError as exc:
        checks.problems.append(f"subscription: {describe(exc)}")
        return True  # unknown: the stream tries, and MediSync's answer there decides
    if subscription.active is False:
        log.warning("MediSync subscription inactive: recording without live transcript; the upload waits")
        return False
    return True


def describe(exc: ApiError) -> str:
    """One short reason for a log line: fixed words per kind of failure, never the server's own text."""
    status = f" (HTTP {exc.status})" if exc.status is not None else ""
    if isinstance(exc, TransportError | ResponseError):
        return str(exc)  # our own words: the exception type, the URL or the shape that did not match
    if isinstance(exc, ServerError):
        return f"server error{status}"
    if isinstance(exc, RateLimitError):
        return f"rate limited{status}"
    if isinstance(exc, AuthError):
        return f"token refused{status}"
    if isinstance(exc, EnvelopeError):
        return f"refused{status}"
    if isinstance(exc, NotFoundError):
        return f"not found{status}"
    if exc.status == 404:
        return str(exc)  # the login's 404 names the URL that answered and what api_url should look like
    return f"{type(exc).__name__}{status}"


async def _with_new_appointment(client: MediSyncClient, patient_id: str) -> VisitAccess:
    try:
        await client.login()
    except AuthError as exc:
        raise AuthError(f"MediSync refused the login: {exc}", status=exc.status) from exc
    checks = _Checks()
    stream_allowed = await _subscription_active(client, checks)
    if checks.problems:
        log.warning("MediSync did not confirm the subscription (%s): streaming anyway", checks.problems[0])
    try:
        appointment_id = await _create_appointment(client, patient_id)
    except NotFoundError as exc:
        raise NotFoundError(f"patient {patient_id} not found for this account", status=exc.status) from exc
    return VisitAccess(appointment_id, stream_allowed=stream_allowed, online=True)


async def _create_appointment(client: MediSyncClient, patient_id: str) -> str:
    now = datetime.now()
    new = NewAppointment(name="Visit", date=now.strftime("%Y-%m-%d"), time=now.strftime("%H:%M"),
                         patient_id=patient_id, status="planned", appointment_type="in_person")  # fmt: skip
    appointment = await client.add_appointment(new)
    log.info("created appointment %s", appointment.id)
    return appointment.id
