"""Fixtures for the archive and ``record`` tests: run the real CLI, and the expected pipeline output in-process."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.recorder import Recorder
from agent.settings import AgentSettings, ArchiveSettings, AudioSettings
from tests.plugins.keys import is_sealed_file, plaintext

REPO = Path(__file__).resolve().parents[2]
DIALOGUE = REPO / "agent" / "data" / "dialogue.wav"
POLL_DEADLINE_S = 30.0


def agent_command(*args: str) -> list[str]:
    """argv running the real ``medisync-agent`` of this checkout."""
    return [sys.executable, "-m", "agent", *args]


def run_agent(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent_command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def wav_pcm(path: Path) -> bytes:
    """Samples of a 16 kHz mono s16 WAV as read by the stdlib ``wave`` module (an independent reader); a sealed
    archive is decrypted first by Debian's ``age`` (another independent implementation)."""
    with wave.open(io.BytesIO(plaintext(path)), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return w.readframes(w.getnframes())


def soxi_samples(path: Path) -> int:
    """Sample count according to sox (fails the test if sox does not accept the file). A sealed archive is
    decrypted by ``age`` and piped through ``sox`` (its WAV header is the streaming one, so the count comes from
    the audio sox reads, not from the header)."""
    if not is_sealed_file(path):
        out = subprocess.run(["soxi", "-s", str(path)], capture_output=True, text=True, check=True)
        return int(out.stdout)
    raw = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-"], input=plaintext(path), capture_output=True,
                         check=True).stdout  # fmt: skip
    return len(raw) // 2


def poll(condition: Callable[[], bool], what: str, deadline_s: float = POLL_DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def record_in_process(source: str, out: Path) -> bytes:
    """What ``record`` must archive for ``source``: the same pipeline, run here, fast, into ``out``."""
    from agent.audio.sources import open_source

    settings = AgentSettings(audio=AudioSettings(source=source, pace="fast"), archive=ArchiveSettings(encrypt=False))
    Recorder(open_source(source, settings.audio), out, settings).run()
    return wav_pcm(out)


@pytest.fixture(scope="session")
def dialogue_pcm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bundled dialogue through the pipeline: 16 kHz s16le, the expected content of any archive of it."""
    return record_in_process(f"file:{DIALOGUE}", tmp_path_factory.mktemp("expected") / "dialogue.wav")
