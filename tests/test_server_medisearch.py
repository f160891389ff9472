"""The local MediSearch SSE endpoint: validation, event order, citations, filters, error codes."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import httpx
import pytest

from tests.plugins.server import RunningServer


def ask(srv: RunningServer, conversation: list[str], settings: dict[str, Any] | None = None,
        key: str | None = None) -> tuple[int, list[dict[str, Any]]]:
    body: dict[str, Any] = {"conversation": conversation, "key": key or srv.search_key, "id": "conv-1"}
    if settings is not None:
        body["settings"] = settings
    with httpx.stream("POST", srv.search_url, json=body, timeout=30) as reply:
        if reply.status_code != 200:
            return reply.status_code, []
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in reply.iter_lines() if line.startswith("data: ")]
    return 200, events


def test_event_order_citations_and_followups(medisync_server: RunningServer) -> None:
    status, events = ask(medisync_server, ["What is the treatment for type 2 diabetes?"], {"followup_count": 9})
    assert status == 200
    kinds = [e["event"] for e in events]
    n_llm = kinds.count("llm_response")
    assert n_llm >= 3 and kinds == ["llm_response"] * n_llm + ["articles", "followups"]
    assert all(e["id"] == "conv-1" for e in events)
    texts = [e["data"] for e in events[:n_llm]]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    articles = events[n_llm]["data"]
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", texts[-1])}
    assert cited == set(range(1, len(articles) + 1))
    assert all(set(a) == {"title", "url", "authors", "year", "tldr", "journal"} for a in articles)
    assert "diabetes" in articles[0]["title"].lower()
    assert len(events[-1]["data"]) == 6


def test_filters_and_no_followups_by_default(medisync_server: RunningServer) -> None:
    settings = {"filters": {"sources": ["medicineGuidelines"], "year_start": 2023, "year_end": 2023}}
    _, events = ask(medisync_server, ["Is metformin safe for diabetes?"], settings)
    articles = events[-1]["data"]
    assert [e["event"] for e in events][-1] == "articles"
    assert [a["title"] for a in articles] == ["Metformin: drug information"]
    _, none = ask(medisync_server, ["diabetes"], {"filters": {"article_types": ["clinicalTrials"]}})
    assert none == [{"event": "error", "id": "conv-1", "data": "error_not_enough_articles"}]


def test_request_validation_and_bad_key(medisync_server: RunningServer) -> None:
    assert ask(medisync_server, ["What is diabetes?"], key="wrong")[0] == 403
    assert ask(medisync_server, [])[0] == 400
    assert ask(medisync_server, ["What is diabetes?", "Diabetes is..."])[0] == 400
    assert ask(medisync_server, ["What is diabetes?", "Diabetes is...", "Symptoms?"])[0] == 200


@pytest.mark.parametrize("code", ["error_out_of_tokens", "error_internal", "error_llm"])
def test_error_event_knobs(medisync_server: RunningServer, code: str) -> None:
    medisync_server.knobs.fail_search(code)
    assert ask(medisync_server, ["What is diabetes?"]) == (200, [{"event": "error", "id": "conv-1", "data": code}])
    assert ask(medisync_server, ["What is diabetes?"])[1][-1]["event"] == "articles"


def test_http_error_knobs(medisync_server: RunningServer) -> None:
    medisync_server.knobs.fail_search("http_429", "http_500")
    assert ask(medisync_server, ["What is diabetes?"])[0] == 429
    assert ask(medisync_server, ["What is diabetes?"])[0] == 500
    assert ask(medisync_server, ["What is diabetes?"])[0] == 200
