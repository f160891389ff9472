"""``medisync-agent ask``: ask MediSearch a medical question and stream the answer to the terminal."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from typing import TextIO

from agent.api.medisearch import DEFAULT_URL, MediSearchClient
from agent.api.medisearch_models import (
    ARTICLE_TYPES,
    SOURCES,
    Article,
    ArticlesEvent,
    Filters,
    FollowupsEvent,
    SearchRequest,
    TextDelta,
    build_request,
    cited_indices,
)
from agent.api.secret import Secret, read_secret_file
from agent.config_rules import has_userinfo
from agent.errors import AgentError, ConfigError
from agent.safe_text import clean_line, clean_text

KEY_FILE_ENV = "MEDISEARCH_API_KEY_FILE"
KEY_ENV = "MEDISEARCH_API_KEY"
URL_ENV = "MEDISEARCH_URL"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ask",
        help="ask MediSearch a medical question",
        description=(
            "Ask MediSearch a medical question. The answer streams to the terminal as it is written, followed by "
            "the articles its citations [n] point to and suggested follow-up questions."
        ),
        epilog=f"The API key comes from --api-key-file, ${KEY_FILE_ENV} or ${KEY_ENV} (in that order).",
    )
    parser.add_argument("question", help="the question, in quotes")
    parser.add_argument(
        "--followups",
        type=int,
        default=None,
        metavar="N",
        help="suggest N follow-up questions (0-6; more than 6 gives 6)",
    )
    parser.add_argument(
        "--source",
        action="append",
        choices=sorted(SOURCES),
        metavar="SOURCE",
        help=f"search only this source type (repeatable): {', '.join(sorted(SOURCES))}",
    )
    parser.add_argument(
        "--article-type",
        action="append",
        choices=sorted(ARTICLE_TYPES),
        metavar="TYPE",
        help=f"search only this article type (repeatable): {', '.join(sorted(ARTICLE_TYPES))}",
    )
    parser.add_argument("--year-start", type=int, metavar="YEAR", help="earliest publication year")
    parser.add_argument("--year-end", type=int, metavar="YEAR", help="latest publication year")
    parser.add_argument("--pro", action="store_true", help="use MediSearch's pro model (default: standard)")
    parser.add_argument("--language", default=None, help="answer language (default: English)")
    parser.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="file holding the MediSearch API key (must not be readable by group or others)",
    )
    parser.add_argument("--url", default=None, help=f"MediSearch SSE endpoint (default: ${URL_ENV} or {DEFAULT_URL})")
    parser.set_defaults(func=run)


def api_key(args: argparse.Namespace) -> Secret:
    path = args.api_key_file or os.environ.get(KEY_FILE_ENV, "")
    if path:
        return read_secret_file(path, "MediSearch API key")
    key = os.environ.get(KEY_ENV, "")
    if key:
        return Secret(key)
    raise ConfigError(f"no MediSearch API key: use --api-key-file, ${KEY_FILE_ENV} or ${KEY_ENV}")


def request_from(args: argparse.Namespace) -> SearchRequest:
    filters = None
    if args.source or args.article_type or args.year_start is not None or args.year_end is not None:
        filters = Filters(
            sources=args.source, article_types=args.article_type, year_start=args.year_start, year_end=args.year_end
        )
    return build_request(
        [args.question],
        conversation_id=str(uuid.uuid4()),
        followup_count=args.followups,
        model_type="pro" if args.pro else "standard",
        language=args.language,
        filters=filters,
    )


def format_article(number: int, article: Article) -> str:
    """Two lines at most; every part comes from MediSearch, so each is cleaned for the terminal."""
    details = ", ".join(clean_line(str(x)) for x in (article.journal, article.year) if x)
    line = f"[{number}] {clean_line(article.title)}" + (f" ({details})" if details else "")
    return line + (f"\n    {clean_line(article.url)}" if article.url else "")


def print_articles(text: str, articles: list[Article], out: TextIO) -> None:
    """The articles the answer cites, under their citation numbers (all of them if nothing is cited)."""
    numbers = cited_indices(text) or list(range(1, len(articles) + 1))
    if not numbers:
        return
    print("\nArticles:", file=out)
    for number in numbers:
        if 1 <= number <= len(articles):
            print(format_article(number, articles[number - 1]), file=out)
        else:
            print(f"[{number}] (cited, but MediSearch returned no article {number})", file=out)


async def stream_answer(client: MediSearchClient, request: SearchRequest, out: TextIO) -> None:
    text = ""
    try:
        async for event in client.stream(request):
            if isinstance(event, TextDelta):
                if event.restart:
                    out.write("\n")  # the answer was rewritten: start it again on a fresh line
                text = event.text if event.restart else text + event.text
                out.write(clean_text(event.text))
                out.flush()
            elif isinstance(event, ArticlesEvent):
                out.write("\n")
                print_articles(text, event.articles, out)
            elif isinstance(event, FollowupsEvent) and event.questions:
                print("\nFollow-up questions:", file=out)
                for question in event.questions:
                    print(f"  - {clean_line(question)}", file=out)
    except AgentError:
        if text:
            out.write("\n")  # keep the error line off the end of a partial answer
        out.flush()
        raise


def run(args: argparse.Namespace) -> int:
    request = request_from(args)  # refuse bad input before needing a key
    key = api_key(args)
    url = args.url or os.environ.get(URL_ENV, "") or DEFAULT_URL
    if has_userinfo(url):  # not repeated: it holds a password
        where = "--url" if args.url else f"environment variable {URL_ENV}"
        raise ConfigError(f"{where}: an address with a user name or password ('user:password@') is refused; write "
                          "it without them (the API key has its own file or variable)")

    async def main() -> None:
        async with MediSearchClient(key, url=url) as client:
            await stream_answer(client, request, sys.stdout)

    asyncio.run(main())
    return 0
