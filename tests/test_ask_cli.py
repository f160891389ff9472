"""``medisync-agent ask`` against the local MediSearch endpoint over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.server.app import ServerThread
from tests.plugins.api_client import SEARCH_KEY


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "medisearch.key"
    path.write_text(SEARCH_KEY + "\n")
    os.chmod(path, 0o600)
    return path


def ask(server: ServerThread, key_file: Path, *args: str) -> list[str]:
    assert server.urls is not None
    return ["ask", *args, "--api-key-file", str(key_file), "--url", server.urls.search_url]


def test_ask_streams_answer_then_articles_then_followups(
    api_server: ServerThread, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(ask(api_server, key_file, "Is cancer transmissible?", "--followups", "2"))
    out = capsys.readouterr().out
    assert code == 0
    answer, _, rest = out.partition("\nArticles:\n")
    articles, _, followups = rest.partition("\nFollow-up questions:\n")
    assert "[1]" in answer and "no language model" in answer
    assert answer.count("Summary of the bundled sources") == 1  # each progressive part printed once
    numbers = [int(line[1 : line.index("]")]) for line in articles.splitlines() if line.startswith("[")]
    assert numbers and numbers == sorted(numbers) and numbers[0] == 1
    assert len([line for line in followups.splitlines() if line.startswith("  - ")]) == 2


def test_ask_with_filters(api_server: ServerThread, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(ask(api_server, key_file, "Is cancer transmissible?", "--source", "scientificArticles",
                    "--article-type", "reviews", "--year-start", "2000", "--year-end", "2030", "--pro"))
    assert code == 0
    assert "Articles:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--year-start", "2023", "--year-end", "2020"], "after year end"),
        (["--followups", "-1"], "follow-up count"),
    ],
)
def test_ask_bad_input_one_line(
    api_server: ServerThread, key_file: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code = main(ask(api_server, key_file, "Is cancer transmissible?", *args))
    err = capsys.readouterr().err
    assert code == 65
    assert err.count("\n") == 1 and message in err and err.startswith("medisync-agent: error: ")


def test_ask_error_event_one_line_nonzero(
    api_server: ServerThread, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(ask(api_server, key_file, "Zebra quantum origami?"))
    err = capsys.readouterr().err
    assert code == 69
    assert err.count("\n") == 1 and "error_not_enough_articles" in err


def test_ask_refuses_readable_key_file(
    api_server: ServerThread, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.chmod(key_file, 0o644)
    assert main(ask(api_server, key_file, "Is cancer transmissible?")) == 78
    err = capsys.readouterr().err
    assert "group or others" in err and SEARCH_KEY not in err


def test_ask_process_wrong_key_exits_with_one_line(api_server: ServerThread, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not-the-key")
    os.chmod(bad, 0o600)
    assert api_server.urls is not None
    result = subprocess.run(
        [sys.executable, "-m", "agent", "ask", "Is cancer transmissible?", "--api-key-file", str(bad),
         "--url", api_server.urls.search_url],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 69
    assert result.stderr.strip().count("\n") == 0 and "HTTP 403" in result.stderr
    assert "Traceback" not in result.stderr and "not-the-key" not in result.stderr
