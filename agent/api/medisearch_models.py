"""MediSearch request validation, answer events and error codes: pure code, no I/O.

The request is checked before anything is sent (conversation shape, follow-up count, model type, filter
vocabularies, year range). The answer arrives as SSE events; :class:`AnswerAssembler` turns them into what a
user interface needs: the newly added text of each progressive ``llm_response``, then the articles, then the
follow-up questions. The four documented ``error`` codes become four exception classes.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from agent.errors import ApiError, InputError, ResponseError

SOURCES = frozenset(
    {"internationalHealthGuidelines", "medicineGuidelines", "scientificArticles", "books", "healthBlogs"}
)
ARTICLE_TYPES = frozenset({"metaAnalysis", "reviews", "clinicalTrials", "observationalStudies", "other"})
MODEL_TYPES = ("standard", "pro")
MAX_FOLLOWUPS = 6
"""MediSearch returns at most 6 follow-up questions; larger counts are sent as 6."""
YEAR_MIN, YEAR_MAX = 1800, 2200
"""Publication years outside this range are taken as typing mistakes."""


# --- errors ----------------------------------------------------------------------------------------------------


class SearchInputError(InputError, ValueError):
    """A MediSearch request that breaks a documented rule; refused before sending."""


class MediSearchError(ApiError):
    """An ``error`` event of the MediSearch stream."""

    code = "error"


class NotEnoughArticlesError(MediSearchError):
    code = "error_not_enough_articles"


class OutOfTokensError(MediSearchError):
    code = "error_out_of_tokens"


class SearchInternalError(MediSearchError):
    code = "error_internal"


class LlmError(MediSearchError):
    code = "error_llm"


ERROR_EXPLANATIONS: dict[str, tuple[type[MediSearchError], str]] = {
    NotEnoughArticlesError.code: (NotEnoughArticlesError, "not enough relevant articles found for the question"),
    OutOfTokensError.code: (OutOfTokensError, "conversation too long; start a new conversation or shorten it"),
    SearchInternalError.code: (SearchInternalError, "internal MediSearch error while answering"),
    LlmError.code: (LlmError, "MediSearch's language model failed while answering"),
}


def error_for_code(code: str) -> MediSearchError:
    """The exception for an ``error`` event's code (unknown codes give the base class)."""
    known = ERROR_EXPLANATIONS.get(code)
    if known is None:
        return MediSearchError(f"MediSearch error: {' '.join(code.split())[:100]}")
    cls, explanation = known
    return cls(f"MediSearch: {explanation} ({code})")


# --- request ---------------------------------------------------------------------------------------------------


class Filters(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    sources: list[str] | None = None
    year_start: int | None = None
    year_end: int | None = None
    article_types: list[str] | None = None


class SearchSettings(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    language: str | None = None
    model_type: Literal["standard", "pro"] = "standard"
    system_prompt: str | None = None
    followup_count: int | None = None
    filters: Filters | None = None


class SearchRequest(msgspec.Struct, kw_only=True, frozen=True):
    """The JSON body MediSearch expects minus ``key`` (the client adds it when sending); build it with
    :func:`build_request` so it is validated."""

    conversation: list[str]
    id: str
    settings: SearchSettings

    def __repr__(self) -> str:
        return f"SearchRequest(id={self.id!r}, turns={len(self.conversation)})"


def validate_conversation(conversation: list[str]) -> None:
    if not isinstance(conversation, list) or not conversation:
        raise SearchInputError("conversation must have at least one message (the question)")
    for index, message in enumerate(conversation):
        if not isinstance(message, str) or not message.strip():
            speaker = "question" if index % 2 == 0 else "answer"
            raise SearchInputError(f"conversation message {index + 1} ({speaker}) is empty")
    if len(conversation) % 2 == 0:
        raise SearchInputError(
            "conversation must alternate question, answer, question ... and end with a question "
            f"(got {len(conversation)} messages, the last one an answer)"
        )


def validate_filters(filters: Filters) -> None:
    for name, values, vocabulary in (
        ("source", filters.sources, SOURCES),
        ("article type", filters.article_types, ARTICLE_TYPES),
    ):
        unknown = sorted(set(values or ()) - vocabulary)
        if unknown:
            raise SearchInputError(f"unknown {name} {', '.join(unknown)}; choose from {', '.join(sorted(vocabulary))}")
    for label, year in (("start", filters.year_start), ("end", filters.year_end)):
        if year is not None and not YEAR_MIN <= year <= YEAR_MAX:
            raise SearchInputError(f"year {label} {year} is not a plausible publication year")
    if filters.year_start is not None and filters.year_end is not None and filters.year_start > filters.year_end:
        raise SearchInputError(f"year start {filters.year_start} is after year end {filters.year_end}")


def validate_request(request: SearchRequest) -> None:
    """Check a request against the documented rules (see :func:`build_request`)."""
    validate_conversation(request.conversation)
    if not request.id:
        raise SearchInputError("conversation id must not be empty")
    count = request.settings.followup_count
    if count is not None and not 0 <= count <= MAX_FOLLOWUPS:
        raise SearchInputError(f"follow-up count must be 0 to {MAX_FOLLOWUPS}, not {count}")
    if request.settings.filters is not None:
        validate_filters(request.settings.filters)


def build_request(
    conversation: list[str],
    *,
    conversation_id: str,
    followup_count: int | None = None,
    model_type: str = "standard",
    language: str | None = None,
    system_prompt: str | None = None,
    filters: Filters | None = None,
) -> SearchRequest:
    """A validated request; raises :class:`SearchInputError` naming the broken rule."""
    validate_conversation(conversation)
    if not conversation_id:
        raise SearchInputError("conversation id must not be empty")
    if followup_count is not None and followup_count < 0:
        raise SearchInputError(f"follow-up count must be 0 to {MAX_FOLLOWUPS}, not {followup_count}")
    if model_type not in MODEL_TYPES:
        raise SearchInputError(f"model type must be {' or '.join(MODEL_TYPES)}, not {model_type!r}")
    if filters is not None:
        validate_filters(filters)
    settings = SearchSettings(
        language=language,
        model_type="pro" if model_type == "pro" else "standard",
        system_prompt=system_prompt,
        followup_count=None if followup_count is None else min(followup_count, MAX_FOLLOWUPS),
        filters=filters,
    )
    return SearchRequest(conversation=list(conversation), id=conversation_id, settings=settings)


# --- answer ----------------------------------------------------------------------------------------------------


class Article(msgspec.Struct, kw_only=True, frozen=True):
    title: str
    url: str | None = None
    authors: list[str] = msgspec.field(default_factory=list)
    year: str | int | None = None
    tldr: str | None = None
    journal: str | None = None


class TextDelta(msgspec.Struct, frozen=True):
    """Text newly added to the answer; ``restart`` when the answer so far was replaced rather than extended."""

    text: str
    restart: bool = False


class ArticlesEvent(msgspec.Struct, frozen=True):
    articles: list[Article]


class FollowupsEvent(msgspec.Struct, frozen=True):
    questions: list[str]


AnswerEvent = TextDelta | ArticlesEvent | FollowupsEvent

_CITATION_GROUP = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def cited_indices(text: str) -> list[int]:
    """1-based article numbers cited in ``text`` as ``[n]`` or ``[n, m]``, sorted, each once."""
    found = {int(n) for group in _CITATION_GROUP.findall(text) for n in group.split(",")}
    return sorted(found)


class AnswerAssembler:
    """Feeds on (event name, decoded data) pairs in arrival order; keeps the answer, articles and follow-ups."""

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.text = ""
        self.articles: list[Article] | None = None
        self.followups: list[str] = []
        self.order: list[str] = []
        """Names of the events seen, in order (duplicates of ``llm_response`` collapsed)."""

    def feed(self, event: str, data: Any, event_id: str | None = None) -> AnswerEvent | None:
        """Take one event; returns what a user interface should show now (None: nothing new)."""
        if event_id and event_id != self.conversation_id:
            raise ResponseError(f"MediSearch event for another conversation ({event_id!r})")
        if not self.order or self.order[-1] != event or event != "llm_response":
            self.order.append(event)
        if event == "error":
            raise error_for_code(data if isinstance(data, str) else str(data))
        if event == "llm_response":
            return self._text(data)
        if event == "articles":
            self.articles = _convert(data, list[Article], "articles")
            return ArticlesEvent(self.articles)
        if event == "followups":
            self.followups = _convert(data, list[str], "follow-up questions")
            return FollowupsEvent(self.followups)
        return None  # events MediSearch may add later are not ours to fail on

    def finish(self) -> None:
        """The stream ended: check that an answer and its articles arrived."""
        if not self.text:
            raise ResponseError("MediSearch stream ended without an answer")
        if self.articles is None:
            raise ResponseError("MediSearch stream ended before the articles (answer may be incomplete)")

    def _text(self, data: Any) -> TextDelta | None:
        if not isinstance(data, str):
            raise ResponseError("MediSearch llm_response data is not text")
        previous, self.text = self.text, data
        if data.startswith(previous):
            added = data[len(previous) :]
            return TextDelta(added) if added else None
        return TextDelta(data, restart=True)


def _convert(data: Any, into: Any, what: str) -> Any:
    try:
        return msgspec.convert(data, into)
    except msgspec.ValidationError as exc:
        raise ResponseError(f"MediSearch {what} not as documented ({exc})") from None
