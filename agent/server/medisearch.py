"""A local MediSearch: ``POST /sse/medichat`` streams Server-Sent Events as MediSearch documents them.

Each event is one ``data:`` line holding the documented JSON object ``{"event", "id", "data"}``. Order:
several progressive ``llm_response`` (each the answer so far), then ``articles``, then ``followups`` (only when
``settings.followup_count`` > 0; above 6 gives 6). No matching article -> one ``error`` event
``error_not_enough_articles``. A missing or unknown key -> HTTP 403; a request breaking the documented rules
(conversation alternating, non-empty, ending with the human; ``id`` present) -> HTTP 400.

The answer is deterministic and assembled from the bundled article summaries (``articles.json``), with ``[n]``
citations into the ``articles`` event; it says plainly that no language model wrote it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.server.limits import JSON_BODY_LIMIT, decode_json, read_body

if TYPE_CHECKING:
    from agent.server.app import MediSyncServer

SOURCES = {"internationalHealthGuidelines", "medicineGuidelines", "scientificArticles", "books", "healthBlogs"}
ARTICLE_TYPES = {"metaAnalysis", "reviews", "clinicalTrials", "observationalStudies", "other"}
MAX_FOLLOWUPS = 6
MAX_CONVERSATION_CHARS = 20_000
"""Longer conversations get ``error_out_of_tokens``, as MediSearch does for conversations over its limit."""
ARTICLE_FIELDS = ("title", "url", "authors", "year", "tldr", "journal")


class SearchInvalid(Exception):
    pass


@dataclass(frozen=True)
class SearchRequest:
    conversation: list[str]
    key: str
    id: str
    followup_count: int = 0
    sources: frozenset[str] = frozenset(SOURCES)
    article_types: frozenset[str] = frozenset(ARTICLE_TYPES)
    year_start: int | None = None
    year_end: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@cache
def bundled_articles() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads((Path(__file__).parent / "articles.json").read_text(encoding="utf-8")))


def _string_set(value: Any, allowed: set[str], name: str) -> frozenset[str]:
    if value is None:
        return frozenset(allowed)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SearchInvalid(f"filters.{name} must be a list of strings")
    unknown = set(value) - allowed
    if unknown:
        raise SearchInvalid(f"unknown filters.{name}: {sorted(unknown)}")
    return frozenset(value)


def parse_request(body: Any) -> SearchRequest:
    """Validate a request body per the MediSearch docs (the key itself is checked by the caller)."""
    if not isinstance(body, dict):
        raise SearchInvalid("request body must be a JSON object")
    conversation, conv_id = body.get("conversation"), body.get("id")
    if not isinstance(conversation, list) or not all(isinstance(m, str) for m in conversation):
        raise SearchInvalid("conversation must be an array of strings")
    if not conversation or len(conversation) % 2 == 0:
        raise SearchInvalid("conversation must alternate human/AI messages and end with the human query")
    if not isinstance(conv_id, str) or not conv_id:
        raise SearchInvalid("id (conversation id) is required")
    settings = body.get("settings") or {}
    filters = settings.get("filters") or {}
    if not isinstance(settings, dict) or not isinstance(filters, dict):
        raise SearchInvalid("settings and settings.filters must be objects")
    if settings.get("model_type", "standard") not in ("standard", "pro"):
        raise SearchInvalid("settings.model_type must be 'standard' or 'pro'")
    followups = settings.get("followup_count", 0)
    years = (filters.get("year_start"), filters.get("year_end"))
    if not isinstance(followups, int) or followups < 0 or not all(y is None or isinstance(y, int) for y in years):
        raise SearchInvalid("followup_count and year filters must be non-negative integers")
    return SearchRequest(
        conversation=conversation, key=str(body.get("key", "")), id=conv_id,
        followup_count=min(followups, MAX_FOLLOWUPS),
        sources=_string_set(filters.get("sources"), SOURCES, "sources"),
        article_types=_string_set(filters.get("article_types"), ARTICLE_TYPES, "article_types"),
        year_start=years[0], year_end=years[1],
    )


def select_articles(request: SearchRequest, limit: int = 3) -> list[dict[str, Any]]:
    """Bundled articles passing the filters, ranked by keyword overlap with the last human message."""
    words = set(re.findall(r"[a-z0-9-]+", request.conversation[-1].lower()))
    scored = []
    for index, article in enumerate(bundled_articles()):
        year = int(article["year"])
        if article["source"] not in request.sources or article["article_type"] not in request.article_types:
            continue
        if (request.year_start and year < request.year_start) or (request.year_end and year > request.year_end):
            continue
        score = len(words & set(article["keywords"]))
        if score:
            scored.append((-score, index, article))
    return [article for _, _, article in sorted(scored, key=lambda item: item[:2])[:limit]]


def answer_text(articles: list[dict[str, Any]]) -> str:
    lines = [f"- {article['tldr']} [{n}]" for n, article in enumerate(articles, 1)]
    return ("**Summary of the bundled sources** (local demo server: assembled from article summaries, "
            "no language model)\n\n" + "\n".join(lines))


def followup_questions(articles: list[dict[str, Any]], count: int) -> list[str]:
    pool = [f"What does \"{a['title']}\" conclude?" for a in articles]
    topics = [a["keywords"][0] for a in articles]
    for topic in topics:
        pool += [f"What are the treatment options for {topic}?", f"When should {topic} be referred to a specialist?"]
    pool += ["What are the risks of the treatment?", "How is this monitored over time?"]
    unique = list(dict.fromkeys(pool))
    return unique[:count]


def event_stream(request: SearchRequest) -> list[dict[str, Any]]:
    """The whole event sequence for a valid request (pure, deterministic)."""
    if sum(len(m) for m in request.conversation) > MAX_CONVERSATION_CHARS:
        return [{"event": "error", "id": request.id, "data": "error_out_of_tokens"}]
    articles = select_articles(request)
    if not articles:
        return [{"event": "error", "id": request.id, "data": "error_not_enough_articles"}]
    text = answer_text(articles)
    words = text.split(" ")
    step = max(1, len(words) // 5)
    events: list[dict[str, Any]] = [{"event": "llm_response", "id": request.id, "data": " ".join(words[:end])}
              for end in range(step, len(words), step)]
    events.append({"event": "llm_response", "id": request.id, "data": text})
    events.append({"event": "articles", "id": request.id,
                   "data": [{k: a[k] for k in ARTICLE_FIELDS} for a in articles]})
    if request.followup_count:
        events.append({"event": "followups", "id": request.id,
                       "data": followup_questions(articles, request.followup_count)})
    return events


def _http_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.HTTPException:
    exc = web.HTTPException(text=json.dumps({"error": message}), content_type="application/json", headers=headers)
    exc.set_status(status)
    return exc


def add_search_routes(app: web.Application, server: MediSyncServer) -> None:
    async def medichat(request: web.Request) -> web.StreamResponse:
        body = decode_json(await read_body(request, JSON_BODY_LIMIT, server.settings.body_timeout_s))
        if not isinstance(body, dict) or body.get("key") not in server.settings.search_keys:
            raise _http_error(403, "Unable to authenticate the request")
        fault = server.knobs.take_search_fault()
        if fault == "http_429":
            raise _http_error(429, "Rate limit exceeded", {"Retry-After": "1"})
        if fault == "http_500":
            raise _http_error(500, "General server error")
        try:
            search = parse_request(body)
        except SearchInvalid as exc:
            raise _http_error(400, str(exc)) from exc
        events = [{"event": "error", "id": search.id, "data": fault}] if fault else event_stream(search)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for event in events:
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write_eof()
        return response

    app.router.add_post("/sse/medichat", medichat)
