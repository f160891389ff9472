"""The HTTP session against MediSync: bearer token, one re-login on 401, httpx errors translated.

:class:`AuthedHttp` is the thin adapter the endpoint methods in :mod:`agent.api.medisync` sit on. Every
request is built fresh from a :class:`Call` (so a request can be sent again after a re-login, even one whose
body streams a file), sent with the current token and, if MediSync answers 401, sent once more after exactly one
re-login. A second 401 is an :class:`~agent.errors.AuthError`, never a loop. Non-2xx answers become the typed
errors of :mod:`agent.api.responses`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent.api.h11_transport import default_transport
from agent.api.models import Login
from agent.api.responses import Document, decode_answer, decode_document, error_for_status, unwrap
from agent.api.secret import Credentials, Secret
from agent.errors import ApiError, AuthError, EnvelopeError, NotFoundError, ResponseError, TransportError
from agent.settings import ApiSettings

log = logging.getLogger(__name__)

# httpx logs every request URL at INFO, query string included: a patient search term is patient data.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

ERROR_BODY_LIMIT = 64 * 1024
"""Bytes of a non-2xx body read to find its error text; the rest is discarded."""
API_URL_EXAMPLE = "https://app.medisync.me/api"


def api_base(api_url: str) -> str:
    """The REST base every request is relative to: ``api_url`` with one trailing ``/api/``.

    MediSync documents its endpoints as ``/api/login`` etc. under ``https://app.medisync.me``, and its base URL
    as ``https://app.medisync.me/api/``: both readings of ``api_url`` (with or without ``/api``, with or without
    a trailing slash) name the same endpoints.
    """
    base = api_url.strip().rstrip("/")
    if not base.endswith("/api"):
        base += "/api"
    return base + "/"


def shown_url(url: httpx.URL) -> str:
    """A URL for a message: scheme, host, port and path; never user info or a query (uids, search terms)."""
    return str(url.copy_with(userinfo=b"", query=None, fragment=None))


@dataclass(frozen=True)
class Session:
    """A logged-in MediSync user: what ``POST /login`` returned."""

    token: Secret
    uid: str
    user_title: str | None = None
    first_name: str | None = None
    last_name: str | None = None


@dataclass(frozen=True)
class Call:
    """One request, kept so it can be rebuilt after a re-login."""

    method: str
    path: str
    """Relative to the API base URL, ids already percent-encoded."""
    label: str
    """Short name for messages, e.g. ``POST recordings/add`` (no ids of patients, no query)."""
    uid: bool = False
    """Add the ``uid`` query parameter (where MediSync documents it)."""
    params: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    body: Callable[[], AsyncIterable[bytes]] | None = None
    """Makes a fresh streamed body for each attempt."""
    headers: Mapping[str, str] = field(default_factory=dict)


class AuthedHttp:
    """An ``httpx.AsyncClient`` plus the MediSync login session."""

    def __init__(
        self,
        settings: ApiSettings,
        credentials: Credentials,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credentials = credentials
        self._clock = clock
        self._session: Session | None = None
        self._login_lock = asyncio.Lock()
        self.logins = 0
        """How many times this client has logged in (first login included)."""
        self._client = httpx.AsyncClient(
            base_url=api_base(settings.api_url),
            timeout=httpx.Timeout(settings.timeout_s),
            transport=transport if transport is not None else default_transport(),
            follow_redirects=False,
        )

    @property
    def session(self) -> Session | None:
        return self._session

    @property
    def base_url(self) -> str:
        """The REST base requests go to (``api_url`` normalised, see :func:`api_base`)."""
        return shown_url(self._client.base_url)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def login(self) -> Session:
        """Log in with the configured credentials (always a new login).

        Token and uid are read at the top level (the quickstart) or under ``data`` (the reference's envelope).
        A 404 means ``api_url`` points somewhere that is not MediSync's REST base: the error names the URL that
        answered (it is not an "unknown appointment" and must not be taken for one).
        """
        body = {
            "email": self._credentials.email,
            "password": self._credentials.password.reveal(),
            "remember": False,
        }
        request = self._client.build_request("POST", "login", json=body)
        response = await self._send_once(request, "POST login")
        try:
            raw = await self._read_checked(response, "POST login")
            doc = decode_document(raw, endpoint="POST login", status=response.status_code)
            login = unwrap(doc, Login, endpoint="POST login", what="token and uid")
        except (AuthError, EnvelopeError) as exc:
            raise AuthError(f"MediSync login refused for the configured account ({exc})", status=exc.status) from None
        except NotFoundError:
            raise ApiError(
                f"POST login: {shown_url(request.url)} answered HTTP 404 (not found): is api_url right? It must be "
                f"MediSync's REST base, like {API_URL_EXAMPLE}",
                status=404,
            ) from None
        except ResponseError as exc:
            hint = f"{exc} (from {shown_url(request.url)}; is api_url right?)"
            raise ResponseError(hint, status=exc.status) from None
        self.logins += 1
        self._session = Session(Secret(login.token), login.uid, login.userTitle, login.firstName, login.lastName)
        log.info("logged in to MediSync as uid %s", login.uid)
        return self._session

    async def bearer(self, refused: str | None = None) -> str:
        """The bearer token for a connection this client does not send itself (the speech socket).

        Logs in if there is no session yet. ``refused`` is a token a server just refused (401): it is replaced by
        a new login, under the same lock and with the same sharing as a refused request (callers refused with the
        same token get one login between them; a token already replaced is not replaced again).
        """
        session = await self._current_session()
        if refused is not None and session.token.reveal() == refused:
            log.info("speech socket: token refused, logging in again")
            session = await self._relogin(session)
        return session.token.reveal()

    async def open(self, call: Call) -> httpx.Response:
        """Send ``call`` and return the 2xx response with its body not yet read (caller closes it)."""
        session = await self._current_session()
        response = await self._send_once(self._build(call, session), call.label)
        if response.status_code == 401:
            await response.aclose()
            log.info("%s: token refused, logging in again", call.label)
            session = await self._relogin(session)
            response = await self._send_once(self._build(call, session), call.label)
        await self._raise_for_status(response, call.label)
        return response

    async def request(self, call: Call) -> Document:
        """Send ``call`` and return its checked JSON (an object, or an array for list endpoints)."""
        response = await self.open(call)
        try:
            raw = await response.aread()
        except httpx.DecodingError:
            raise ResponseError(f"{call.label}: response body cannot be decoded", status=response.status_code) from None
        except httpx.TransportError as exc:
            raise _transport_error(call.label, exc) from None
        finally:
            await response.aclose()
        return decode_answer(raw, endpoint=call.label, status=response.status_code)

    async def _current_session(self) -> Session:
        if self._session is not None:
            return self._session
        async with self._login_lock:
            if self._session is None:
                await self.login()
        assert self._session is not None
        return self._session

    async def _relogin(self, refused: Session) -> Session:
        async with self._login_lock:
            # Concurrent requests refused with the same token share one re-login.
            if self._session is refused or self._session is None:
                self._session = None
                await self.login()
        assert self._session is not None
        return self._session

    def _build(self, call: Call, session: Session) -> httpx.Request:
        params = dict(call.params)
        if call.uid:
            params["uid"] = session.uid
        headers = {"Authorization": f"Bearer {session.token.reveal()}", **call.headers}
        content = call.body() if call.body is not None else None
        return self._client.build_request(
            call.method, call.path, params=params or None, json=call.json, content=content, headers=headers
        )

    async def _send_once(self, request: httpx.Request, label: str) -> httpx.Response:
        try:
            return await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _transport_error(label, exc) from None

    async def _read_checked(self, response: httpx.Response, label: str) -> bytes:
        await self._raise_for_status(response, label)
        try:
            return await response.aread()
        except httpx.DecodingError:
            raise ResponseError(f"{label}: response body cannot be decoded", status=response.status_code) from None
        except httpx.TransportError as exc:
            raise _transport_error(label, exc) from None
        finally:
            await response.aclose()

    async def _raise_for_status(self, response: httpx.Response, label: str) -> None:
        if response.is_success:
            return
        body = b""
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= ERROR_BODY_LIMIT:
                    break
        except (httpx.TransportError, httpx.DecodingError):
            log.debug("%s: error body unreadable", label)  # the status alone still says what happened
        finally:
            await response.aclose()
        error = error_for_status(response.status_code, response.headers, body, endpoint=label, now=self._clock())
        if error is not None:
            raise error


def _transport_error(label: str, exc: httpx.TransportError) -> TransportError:
    detail = str(exc).strip()
    return TransportError(f"{label}: {type(exc).__name__}{': ' + detail if detail else ''}")
