"""MediSearch request validation and answer assembly (pure, no server)."""

from __future__ import annotations

import re

import msgspec
import pytest

from agent.api.medisearch import decode_event
from agent.api.medisearch_models import (
    AnswerAssembler,
    ArticlesEvent,
    Filters,
    FollowupsEvent,
    LlmError,
    MediSearchError,
    NotEnoughArticlesError,
    OutOfTokensError,
    SearchInputError,
    SearchInternalError,
    TextDelta,
    build_request,
    cited_indices,
)
from agent.errors import ApiError, InputError, ResponseError


@pytest.mark.parametrize(
    "conversation",
    [["What is diabetes?"], ["What is diabetes?", "Diabetes is...", "What are the symptoms?"]],
)
def test_valid_conversations(conversation: list[str]) -> None:
    request = build_request(conversation, conversation_id="c1")
    assert request.conversation == conversation


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        ([], "at least one message"),
        (["What is diabetes?", "Diabetes is..."], "end with a question"),
        (["What is diabetes?", "", "More?"], "message 2 (answer) is empty"),
        (["  "], "message 1 (question) is empty"),
    ],
)
def test_invalid_conversations_refused(conversation: list[str], message: str) -> None:
    with pytest.raises(SearchInputError, match=re.escape(message)) as info:
        build_request(conversation, conversation_id="c1")
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)


def test_followup_count_range() -> None:
    assert build_request(["q"], conversation_id="c", followup_count=9).settings.followup_count == 6
    assert build_request(["q"], conversation_id="c", followup_count=0).settings.followup_count == 0
    assert build_request(["q"], conversation_id="c", followup_count=3).settings.followup_count == 3
    with pytest.raises(SearchInputError, match="0 to 6"):
        build_request(["q"], conversation_id="c", followup_count=-1)


def test_model_type() -> None:
    assert build_request(["q"], conversation_id="c", model_type="pro").settings.model_type == "pro"
    with pytest.raises(SearchInputError, match="standard or pro"):
        build_request(["q"], conversation_id="c", model_type="turbo")


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (Filters(sources=["scientificArticles", "tabloids"]), "unknown source tabloids"),
        (Filters(article_types=["opinion"]), "unknown article type opinion"),
        (Filters(year_start=2023, year_end=2020), "after year end"),
        (Filters(year_start=20), "not a plausible"),
    ],
)
def test_invalid_filters_refused(filters: Filters, message: str) -> None:
    with pytest.raises(SearchInputError, match=message):
        build_request(["q"], conversation_id="c", filters=filters)


def test_request_json_matches_documentation() -> None:
    filters = Filters(sources=["scientificArticles"], year_start=2020, year_end=2023, article_types=["reviews"])
    request = build_request(["Is cancer transmissible?"], conversation_id="c1", followup_count=3, filters=filters)
    doc = msgspec.to_builtins(request)
    assert doc == {
        "conversation": ["Is cancer transmissible?"],
        "id": "c1",
        "settings": {
            "followup_count": 3,
            "filters": {"sources": ["scientificArticles"], "year_start": 2020, "year_end": 2023,
                        "article_types": ["reviews"]},
        },
    }


def test_progressive_text_yields_only_what_is_new() -> None:
    assembler = AnswerAssembler("c1")
    assert assembler.feed("llm_response", "No,") == TextDelta("No,")
    assert assembler.feed("llm_response", "No, cancer") == TextDelta(" cancer")
    assert assembler.feed("llm_response", "No, cancer") is None
    assert assembler.feed("llm_response", "Yes") == TextDelta("Yes", restart=True)
    assert assembler.text == "Yes"


def test_event_sequence_and_finish() -> None:
    assembler = AnswerAssembler("c1")
    assembler.feed("llm_response", "A [1]", "c1")
    articles = assembler.feed("articles", [{"title": "T", "url": "u", "authors": ["X"], "year": "2021"}], "c1")
    assert isinstance(articles, ArticlesEvent) and articles.articles[0].title == "T"
    assert assembler.feed("followups", ["Why?"]) == FollowupsEvent(["Why?"])
    assert assembler.feed("something_new", {"x": 1}) is None
    assembler.finish()
    assert assembler.order == ["llm_response", "articles", "followups", "something_new"]


def test_stream_without_answer_or_articles_is_a_response_error() -> None:
    with pytest.raises(ResponseError, match="without an answer"):
        AnswerAssembler("c").finish()
    assembler = AnswerAssembler("c")
    assembler.feed("llm_response", "partial")
    with pytest.raises(ResponseError, match="before the articles"):
        assembler.finish()


def test_event_for_another_conversation_rejected() -> None:
    with pytest.raises(ResponseError):
        AnswerAssembler("c1").feed("llm_response", "x", "other")


@pytest.mark.parametrize(
    ("code", "cls"),
    [("error_not_enough_articles", NotEnoughArticlesError), ("error_out_of_tokens", OutOfTokensError),
     ("error_internal", SearchInternalError), ("error_llm", LlmError), ("error_new", MediSearchError)],
)
def test_error_codes_are_distinct_api_errors(code: str, cls: type[Exception]) -> None:
    with pytest.raises(cls) as info:
        AnswerAssembler("c").feed("error", code)
    assert type(info.value) is cls and isinstance(info.value, ApiError)
    assert code in str(info.value)


def test_citations() -> None:
    assert cited_indices("No [1]. Except rare cases [2]. Also [1, 3] and [2][4].") == [1, 2, 3, 4]
    assert cited_indices("no citations [a]") == []


def test_decode_event_both_wire_forms() -> None:
    documented = '{"event": "llm_response", "id": "c1", "data": "Hello"}'
    assert decode_event("message", documented) == ("llm_response", "Hello", "c1")
    assert decode_event("articles", '[{"title": "T"}]') == ("articles", [{"title": "T"}], None)
    assert decode_event("llm_response", "plain text") == ("llm_response", "plain text", None)
    assert decode_event("llm_response", "42") == ("llm_response", "42", None)
    assert decode_event("error", '"error_llm"') == ("error", "error_llm", None)
