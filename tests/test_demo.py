"""``medisync-agent demo`` as a user runs it: the real process, default settings (the dialogue in real time).

The demo measures "lost" and "duplicated" itself by comparing what its in-process server stored with what the
voice gate passed; this test reads its printed summary and checks the archive it kept with an independent reader.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.commands.demo_words import REPEATED_ROW, WER_ROW
from tests.plugins.archive import REPO, soxi_samples
from tests.plugins.keys import uploaded_bytes
from tests.plugins.visit import wav_samples

ROW = re.compile(r"^  (\S.*?)\s{2,}(\S.*)$")


def summary_rows(text: str) -> dict[str, str]:
    tail = text.split("\nvisit summary\n", 1)[1]
    return {m.group(1): m.group(2) for line in tail.splitlines() if (m := ROW.match(line))}


@pytest.mark.slow
def test_demo_in_real_time_shows_zero_lost_and_a_replayed_reconnect(tmp_path: Path, dialogue_pcm: bytes) -> None:
    done = subprocess.run([sys.executable, "-m", "agent", "demo", "--keep", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=240)  # fmt: skip

    assert done.returncode == 0, done.stderr
    rows = summary_rows(done.stderr)
    assert rows["lost samples"] == "0"
    assert rows["duplicated samples"] == "0"
    assert rows["mismatched samples"] == "0"
    stored, gated = (int(n) for n in rows["server-stored vs gated samples"].split(" / "))
    assert stored == gated > 0
    assert int(rows["reconnects"]) >= 1  # the demo's cut happened and the stream came back
    assert rows["messages resent after reconnects"].isdigit()  # the row is there; 0 is right: the cut lost nothing
    # The outage after the cut left audio waiting in the ring: it was replayed, paced, after the reconnect.
    assert int(rows["messages replayed after an outage"]) >= 1
    sent, acked = (int(n) for n in rows["messages sent / acknowledged"].split(" / "))
    assert sent == acked
    assert rows["live stream"] == "resume, done" and rows["stream confirmed by server"] == "yes"
    assert rows["uploaded file byte-identical"] == "yes"
    assert rows["upload"] == "uploaded and confirmed"
    assert float(rows["seconds captured"]) == pytest.approx(len(dialogue_pcm) / 2 / 16000, abs=0.05)
    assert "demo: OK" in done.stderr
    transcript = [
        line for line in done.stdout.splitlines() if re.match(r"^\[SPEAKER_\d+ \| [\d.]+ --> [\d.]+\]: ", line)
    ]
    assert len(transcript) >= 5
    # Real words from the [server] extra's recogniser (tests/setup.sh installs it), scored against the script.
    assert rows["server's transcriber"].startswith("whisper tiny.en")
    assert "lungs" in done.stdout and "[speech " not in done.stdout
    wer = re.fullmatch(r"(\d+\.\d) % \((\d+) errors in 104 words; within the 20 % target\)", rows[WER_ROW])
    assert wer and float(wer[1]) <= 20.0, rows[WER_ROW]
    assert rows[REPEATED_ROW] == "0"  # the outage's replay was not transcribed twice
    live, kept = (int(n) for n in rows["transcript lines sent live / kept"].split(" / "))
    assert kept >= 5 and len(transcript) <= live <= kept  # the last span may finish after the stream closed
    late = [line for line in done.stdout.splitlines() if line.startswith("after the stream closed: [SPEAKER_0 |")]
    assert len(transcript) + len(late) >= kept  # every kept line is on screen, live or after the stream closed
    [wav] = (tmp_path / "archive").glob("visit-*.wav")
    plain = tmp_path / "plain.wav"
    plain.write_bytes(uploaded_bytes(wav, tmp_path / "keys" / "archive.key"))  # sealed with the demo's own key
    assert wav_samples(plain) == dialogue_pcm  # the kept archive is the whole dialogue through the pipeline
    assert soxi_samples(plain) == len(dialogue_pcm) // 2
    assert rows["recording"] == wav.name


def test_demo_help_explains_it() -> None:
    done = subprocess.run([sys.executable, "-m", "agent", "demo", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0
    assert "local MediSync server" in done.stdout and "--pace" in done.stdout
