"""MediSearch SSE client: sends a validated question, yields the answer as it streams.

SSE framing (lines, ``event:``/``data:`` fields, multi-line data, comments, chunk boundaries anywhere) is done by
the kept ``httpx-sse`` library; what the events mean is :class:`~agent.api.medisearch_models.AnswerAssembler`'s
job. MediSearch documents each event as a JSON object ``{"event": ..., "id": ..., "data": ...}``; servers that
put the event name in the SSE ``event:`` field and only the payload in ``data:`` are read too.

HTTP errors arrive as plain status codes: 403 (key refused) :class:`~agent.errors.AuthError`, 429
:class:`~agent.errors.RateLimitError`, 5xx :class:`~agent.errors.ServerError`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from httpx_sse import EventSource, SSEError

from agent.api.medisearch_models import (
    AnswerAssembler,
    AnswerEvent,
    Article,
    ArticlesEvent,
    FollowupsEvent,
    SearchRequest,
    TextDelta,
    validate_request,
)
from agent.api.responses import envelope_error_text, rate_limited
from agent.api.secret import Secret
from agent.errors import ApiError, AuthError, ResponseError, ServerError, TransportError

DEFAULT_URL = "https://api.backend.medisearch.io/sse/medichat"
"""MediSearch's SSE endpoint."""
LABEL = "MediSearch"


@dataclass
class Answer:
    text: str
    articles: list[Article]
    followups: list[str] = field(default_factory=list)


def decode_event(sse_event: str, sse_data: str) -> tuple[str, Any, str | None]:
    """(event name, payload, conversation id) of one SSE event, in either wire form."""
    try:
        doc = msgspec.json.decode(sse_data)
    except msgspec.DecodeError:
        return sse_event, sse_data, None
    if isinstance(doc, dict) and isinstance(doc.get("event"), str):
        event_id = doc.get("id")
        return doc["event"], doc.get("data"), event_id if isinstance(event_id, str) else None
    if sse_event == "llm_response" and not isinstance(doc, str):
        return sse_event, sse_data, None  # plain text that happens to parse as a JSON number or list
    return sse_event, doc, None


def http_error(status: int, headers: httpx.Headers, body: bytes, now: float) -> ApiError:
    text = envelope_error_text(body)
    detail = f": {text}" if text else ""
    if status in (401, 403):
        return AuthError(f"{LABEL}: API key refused (HTTP {status}){detail}", status=status)
    if status == 429:
        return rate_limited(LABEL, headers, detail, now)
    if status >= 500:
        return ServerError(f"{LABEL}: server error (HTTP {status}){detail}", status=status)
    return ApiError(f"{LABEL}: unexpected HTTP status {status}{detail}", status=status)


class MediSearchClient:
    def __init__(
        self,
        api_key: Secret,
        *,
        url: str = DEFAULT_URL,
        timeout_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = api_key
        self._url = url
        self._clock = clock
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), transport=transport)

    async def __aenter__(self) -> MediSearchClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stream(self, request: SearchRequest) -> AsyncIterator[AnswerEvent]:
        """Send ``request``; yield new answer text, then the articles, then the follow-up questions."""
        validate_request(request)  # also when the request was built by hand, not by build_request
        assembler = AnswerAssembler(request.id)
        body = msgspec.json.encode({**msgspec.to_builtins(request), "key": self._key.reveal()})
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store", "Content-Type": "application/json"}
        try:
            async with self._client.stream("POST", self._url, content=body, headers=headers) as response:
                if not response.is_success:
                    raise http_error(response.status_code, response.headers, await response.aread(), self._clock())
                async for sse in EventSource(response).aiter_sse():
                    event = assembler.feed(*decode_event(sse.event, sse.data))
                    if event is not None:
                        yield event
        except SSEError as exc:
            raise ResponseError(f"{LABEL}: not an event stream ({exc})") from None
        except httpx.TransportError as exc:
            raise TransportError(f"{LABEL}: {type(exc).__name__}: {str(exc)[:200]}") from None
        assembler.finish()

    async def ask(self, request: SearchRequest) -> Answer:
        """The whole answer once the stream has ended."""
        text = ""
        articles: list[Article] = []
        followups: list[str] = []
        async for event in self.stream(request):
            if isinstance(event, TextDelta):
                text = event.text if event.restart else text + event.text
            elif isinstance(event, ArticlesEvent):
                articles = event.articles
            elif isinstance(event, FollowupsEvent):
                followups = event.questions
        return Answer(text, articles, followups)
