"""Text from a server never drives the terminal: escape sequences, control characters and bidi overrides are
stripped before transcript lines, errors and log records are printed."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import configure_logging
from agent.safe_text import clean_line, clean_text
from agent.server import ServerSettings, ServerThread
from agent.server.transcriber import Span, TranscribedSegment
from tests.plugins.archive import DIALOGUE, REPO
from tests.plugins.server import DEMO_EMAIL, DEMO_PASSWORD, RunningServer, create_appointment, login
from tests.plugins.visit import AgentHome

TITLE = "\x1b]0;you have been pwned\x07"
CLEAR = "\x1b[2J\x1b[H"
BIDI = "\u202e"
HOSTILE = f"hello {TITLE}{CLEAR}doctor {BIDI}gnp.exe\u202c \x9b31mred\x9b0m \x1b]52;c;ZXZpbA==\x1b\\end"
FORBIDDEN = [b"\x1b", b"\x07", "\x9b".encode(), BIDI.encode(), "\u202c".encode(), b"pwned", b"52;c"]


@pytest.mark.parametrize(
    ("raw", "line", "text"),
    [
        (TITLE + "visible", "visible", "visible"),
        (CLEAR + "after", "after", "after"),
        ("a\u202eb\u2066c\u2069d\u200fe", "abcde", "abcde"),
        ("c1 \x9b2Jcsi \x9d0;t\x9cosc \x85nel", "c1 csi osc  nel", "c1 csi osc nel"),
        ("keep\nlines\tand\r\ntabs\r", "keep lines and tabs ", "keep\nlines\tand\ntabs"),
        ("bell\x07 nul\x00 del\x7f bs\x08", "bell nul del bs", "bell nul del bs"),
        ("lone escape at the end \x1b", "lone escape at the end ", "lone escape at the end "),
        ("unterminated \x1b]0;rest", "unterminated 0;rest", "unterminated 0;rest"),
        ("dcs \x1bPq#0;2;0;0;0\x1b\\done", "dcs done", "dcs done"),
        ("charset \x1b(B reset \x1bc ok", "charset  reset  ok", "charset  reset  ok"),
        ("Zürich café ½ 日本 \u00a0", "Zürich café ½ 日本 \u00a0", "Zürich café ½ 日本 \u00a0"),
    ],
)
def test_escape_sequences_and_controls_are_removed(raw: str, line: str, text: str) -> None:
    assert clean_line(raw) == line
    assert clean_text(raw) == text


def test_log_records_are_one_clean_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        root.handlers.clear()
        configure_logging(1)
        logging.getLogger("agent.stream.connection").warning("speech server warning (code %s)", "x\n" + HOSTILE)
    finally:
        root.handlers[:], root.level = saved
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "speech server warning (code x hello doctor gnp.exe red end)" in err
    assert not any(bad.decode("utf-8", "replace") in err for bad in FORBIDDEN)


class HostileTranscriber:
    """A compromised or buggy server's transcript: escape sequences and a bidi override in words and speaker."""

    def transcribe(self, span: Span) -> list[TranscribedSegment]:
        return [TranscribedSegment(f"SPEAKER_0{CLEAR}", span.start, span.end, HOSTILE)]


@pytest.fixture
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("hostile")
    with ServerThread(ServerSettings(data_dir=str(data), test_hooks=True), transcriber=HostileTranscriber()) as thread:
        thread.server.add_user(DEMO_EMAIL, DEMO_PASSWORD)
        assert thread.urls is not None
        yield RunningServer(thread, thread.urls, data)


@pytest.mark.parametrize("mode", ["resume", "basic"])
def test_a_hostile_transcript_never_reaches_the_terminal(hostile_server: RunningServer, tmp_path: Path,
                                                         mode: str) -> None:  # fmt: skip
    hostile_server.knobs.force_basic = mode == "basic"
    home = AgentHome(tmp_path / "agent", api_url=hostile_server.api_url, speech_url=hostile_server.speech_url,
                     email=DEMO_EMAIL, password=DEMO_PASSWORD)  # fmt: skip
    appointment = create_appointment(hostile_server.api_url, *login(hostile_server.api_url, DEMO_EMAIL, DEMO_PASSWORD))
    argv = home.argv("run", "--appointment", appointment, "--source", f"file:{DIALOGUE}", "--pace", "fast",
                     "--duration", "12")  # fmt: skip
    argv.insert(3, "-v")  # INFO logs too: whatever the agent logs of the server's words must be clean as well
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, env=home.env())
    assert done.returncode == 0, done.stderr
    out = done.stdout.encode()
    lines = [line for line in done.stdout.splitlines() if "hello" in line]
    assert lines, done.stdout  # the transcript did arrive and was printed ...
    assert all(line.endswith(": hello doctor gnp.exe red end") for line in lines), lines
    assert all(line.startswith("[SPEAKER_0") for line in lines), lines
    for bad in FORBIDDEN:  # ... without a byte of the sequences
        assert bad not in out, bad
        assert bad not in done.stderr.encode(), bad


def test_the_error_line_is_clean(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever an error message quotes, the one line on stderr carries no control characters."""
    from agent import cli
    from agent.errors import ApiError

    def fail(args: object) -> int:
        raise ApiError(f"login: not authorised (HTTP 401): {HOSTILE}\nsecond line")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda full=(): parser)
    parser.set_defaults(func=fail)
    assert cli.main([]) == 69
    err = capsys.readouterr().err
    assert err == ("medisync-agent: error: login: not authorised (HTTP 401): hello doctor gnp.exe red end second "
                   "line\n")


def test_medisearch_articles_are_printed_clean() -> None:
    from agent.api.medisearch_models import Article
    from agent.commands.ask import format_article

    article = Article(title=HOSTILE, url=f"https://example.org/{CLEAR}x", journal=TITLE + "J", year=2020)
    text = format_article(1, article)
    assert text == "[1] hello doctor gnp.exe red end (J, 2020)\n    https://example.org/x"
