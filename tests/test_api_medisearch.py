"""MediSearch SSE client against the local server's ``/sse/medichat`` over real HTTP."""

from __future__ import annotations

import re

import pytest

from agent.api.medisearch import MediSearchClient
from agent.api.medisearch_models import (
    AnswerEvent,
    ArticlesEvent,
    Filters,
    FollowupsEvent,
    LlmError,
    NotEnoughArticlesError,
    OutOfTokensError,
    SearchInputError,
    SearchInternalError,
    SearchRequest,
    SearchSettings,
    TextDelta,
    build_request,
    cited_indices,
)
from agent.api.secret import Secret
from agent.errors import AuthError, RateLimitError, ServerError
from agent.server.app import ServerThread
from tests.plugins.api_client import SEARCH_KEY, RecordingTransport, run


def search_client(server: ServerThread, key: str = SEARCH_KEY, **kwargs: object) -> MediSearchClient:
    assert server.urls is not None
    return MediSearchClient(Secret(key), url=server.urls.search_url, timeout_s=30, **kwargs)  # type: ignore[arg-type]


def collect(server: ServerThread, request: SearchRequest, key: str = SEARCH_KEY) -> list[AnswerEvent]:
    async def scenario() -> list[AnswerEvent]:
        async with search_client(server, key) as client:
            return [event async for event in client.stream(request)]

    return run(scenario)


def question(text: str, **kwargs: object) -> SearchRequest:
    return build_request([text], conversation_id="conv-1", **kwargs)  # type: ignore[arg-type]


def test_event_order_and_progressive_text(api_server: ServerThread) -> None:
    events = collect(api_server, question("Is cancer transmissible?", followup_count=3))
    kinds = [type(e).__name__ for e in events]
    first_other = kinds.index("ArticlesEvent")
    assert set(kinds[:first_other]) == {"TextDelta"} and len(kinds[:first_other]) > 1  # several progressive parts
    assert kinds[first_other:] == ["ArticlesEvent", "FollowupsEvent"]
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert not any(d.restart for d in deltas)
    followups = events[-1]
    assert isinstance(followups, FollowupsEvent) and len(followups.questions) == 3

    async def whole() -> str:
        async with search_client(api_server) as client:
            return (await client.ask(question("Is cancer transmissible?"))).text

    assert "".join(d.text for d in deltas) == run(whole)  # the pieces add up to the final answer, nothing doubled


def test_citations_point_at_the_articles(api_server: ServerThread) -> None:
    events = collect(api_server, question("What treatment for type 2 diabetes with metformin?"))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    articles = next(e for e in events if isinstance(e, ArticlesEvent)).articles
    cited = cited_indices(text)
    assert cited and max(cited) <= len(articles) and min(cited) >= 1
    for line in text.splitlines():  # the local server writes "- <tldr> [n]" lines: [n] must be article n
        match = re.fullmatch(r"- (.*) \[(\d+)\]", line)
        if match:
            assert articles[int(match.group(2)) - 1].tldr == match.group(1)


def test_no_followups_when_not_asked(api_server: ServerThread) -> None:
    events = collect(api_server, question("Is cancer transmissible?"))
    assert not any(isinstance(e, FollowupsEvent) for e in events)


def test_followups_above_six_give_six(api_server: ServerThread) -> None:
    events = collect(api_server, question("Is cancer transmissible?", followup_count=10))
    assert len(next(e for e in events if isinstance(e, FollowupsEvent)).questions) == 6


def test_longer_valid_conversation(api_server: ServerThread) -> None:
    request = build_request(["What is diabetes?", "Diabetes is...", "What are the symptoms of diabetes?"],
                            conversation_id="conv-2")
    assert any(isinstance(e, ArticlesEvent) for e in collect(api_server, request))


@pytest.mark.parametrize(
    ("code", "cls"),
    [("error_not_enough_articles", NotEnoughArticlesError), ("error_out_of_tokens", OutOfTokensError),
     ("error_internal", SearchInternalError), ("error_llm", LlmError)],
)
def test_error_events_are_distinct_exceptions(api_server: ServerThread, code: str, cls: type[Exception]) -> None:
    api_server.server.knobs.fail_search(code)
    with pytest.raises(cls) as info:
        collect(api_server, question("Is cancer transmissible?"))
    assert type(info.value) is cls


def test_no_matching_articles_is_not_enough_articles(api_server: ServerThread) -> None:
    with pytest.raises(NotEnoughArticlesError):
        collect(api_server, question("Zebra quantum origami?"))


def test_http_errors_are_typed(api_server: ServerThread) -> None:
    with pytest.raises(AuthError, match="HTTP 403"):
        collect(api_server, question("Is cancer transmissible?"), key="wrong-key")
    api_server.server.knobs.fail_search("http_429", "http_500")
    with pytest.raises(RateLimitError) as info:
        collect(api_server, question("Is cancer transmissible?"))
    assert info.value.retry_after == 1.0
    with pytest.raises(ServerError, match="HTTP 500"):
        collect(api_server, question("Is cancer transmissible?"))


def test_filters_reach_the_server(api_server: ServerThread) -> None:
    request = question("Is cancer transmissible?", filters=Filters(year_start=1800, year_end=1801))
    with pytest.raises(NotEnoughArticlesError):  # nothing that old in the bundle: the filter was applied
        collect(api_server, request)


@pytest.mark.parametrize("conversation", [[], ["What is diabetes?", "Diabetes is..."], ["What?", "", "Why?"]])
def test_invalid_conversation_never_sent(api_server: ServerThread, conversation: list[str]) -> None:
    transport = RecordingTransport()

    async def scenario() -> None:
        with pytest.raises(SearchInputError):
            build_request(conversation, conversation_id="c")
        by_hand = SearchRequest(conversation=conversation, id="c", settings=SearchSettings())
        async with search_client(api_server, transport=transport) as client:
            with pytest.raises(SearchInputError):
                async for _ in client.stream(by_hand):
                    pass

    run(scenario)
    assert transport.sent == []
