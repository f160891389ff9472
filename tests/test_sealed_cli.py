"""The sealed archive through the real commands: interop with Debian's ``age``, tampering, keys, export.

* Interop: what ``record`` seals, ``age -d -i KEY`` opens (same PCM); what ``age -r RECIPIENT`` seals, ``export``
  opens; ``keys init`` writes a key ``age-keygen -y`` reads.
* Tampering with a queued recording (flip a byte, cut a chunk, swap two chunks, truncate the header): the upload
  pass reports it in one line naming the file and the chunk, dead-letters it, the server holds nothing; ``repair``
  keeps the intact part (a cut or flipped chunk becomes silence, swapped chunks are put back); the dead-letter
  folder holds no plaintext audio.
* A missing or wrong key: exit 78 and one line for run, daemon, record, uploads, export.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.archive.age import SEALED_CHUNK, parse_header
from tests.plugins.archive import DIALOGUE, REPO, agent_command, wav_pcm
from tests.plugins.keys import TEST_KEY, TEST_RECIPIENT_FILE, age_decrypt, is_sealed_file, plaintext, uploaded_bytes
from tests.plugins.server import RunningServer
from tests.plugins.visit import AgentHome, recording_files, stored_recording
from tests.test_sealed_leak import leaks, snapshot, windows_of

UNREACHABLE_API = "http://127.0.0.1:9/api"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent_command(*args), cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})  # fmt: skip


def other_key(tmp_path: Path) -> Path:
    key = tmp_path / "other.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    key.chmod(0o600)
    return key


def record_sealed(out: Path, seconds: float = 5.0) -> None:
    done = run("record", "--source", f"file:{DIALOGUE}", "--pace", "fast", "--duration", str(seconds), "--out",
               str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr


# --- interop -----------------------------------------------------------------------------------------------------


def test_age_opens_what_record_seals(tmp_path: Path, dialogue_pcm: bytes) -> None:
    out = tmp_path / "visit.wav"
    record_sealed(out)
    assert is_sealed_file(out)
    opened = age_decrypt(out)  # Debian's age, with the key file age-keygen made
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout[44:] == dialogue_pcm[: 5 * 32000]
    assert opened.stdout[:4] == b"RIFF" and opened.stdout[36:40] == b"data"
    assert age_decrypt(out, other_key(tmp_path)).returncode != 0  # and it is sealed: another key cannot


def test_export_opens_what_age_seals_and_writes_the_exact_wav(tmp_path: Path, dialogue_pcm: bytes) -> None:
    plain = tmp_path / "plain.wav"
    record_sealed(tmp_path / "sealed.wav")
    plain.write_bytes(uploaded_bytes(tmp_path / "sealed.wav"))
    by_age = tmp_path / "by-age.wav"
    subprocess.run(["age", "-R", str(TEST_RECIPIENT_FILE), "-o", str(by_age), str(plain)], check=True)

    for sealed, out in ((by_age, tmp_path / "out1.wav"), (tmp_path / "sealed.wav", tmp_path / "out2.wav")):
        done = run("export", str(sealed), "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == plain.read_bytes()  # exact header: the WAV the upload sends
        assert out.stat().st_mode & 0o777 == 0o600
        assert f"export: {sealed.name} decrypted ({plain.stat().st_size} bytes" in done.stderr  # the log line
        assert str(out) not in done.stderr  # the log names the recording only, not where the plaintext went
    again = run("export", str(by_age), "--out", str(tmp_path / "out1.wav"))
    assert (again.returncode, again.stderr.strip()) == (
        65, f"medisync-agent: error: {tmp_path / 'out1.wav'} exists: choose another name (export never overwrites)")
    assert wav_pcm(tmp_path / "out1.wav") == dialogue_pcm[: 5 * 32000]


def test_keys_init_writes_an_age_key_and_show_prints_only_the_recipient(tmp_path: Path) -> None:
    key, recipient = tmp_path / "k" / "archive.key", tmp_path / "k" / "archive.recipient"
    made = run("keys", "init", "--key-file", str(key), "--recipient-file", str(recipient))
    assert made.returncode == 0, made.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    by_age = subprocess.run(["age-keygen", "-y", str(key)], capture_output=True, text=True, check=True).stdout
    env = {"MEDISYNC_AGENT_ARCHIVE_KEY_FILE": str(key), "MEDISYNC_AGENT_ARCHIVE_RECIPIENT_FILE": str(recipient)}
    shown = run("keys", "show", env=env)
    assert shown.returncode == 0 and shown.stdout == by_age == recipient.read_text()
    assert "AGE-SECRET-KEY" not in shown.stdout + shown.stderr
    again = run("keys", "init", "--key-file", str(key), "--recipient-file", str(recipient))
    assert again.returncode == 78 and "exists" in again.stderr and len(again.stderr.splitlines()) == 1


# --- tampering -----------------------------------------------------------------------------------------------


def flip(data: bytearray, start: int) -> None:
    data[start + 2 * SEALED_CHUNK + 1000] ^= 0x10


def cut(data: bytearray, start: int) -> None:
    del data[start + SEALED_CHUNK : start + 2 * SEALED_CHUNK]


def swap(data: bytearray, start: int) -> None:
    one, three = slice(start + SEALED_CHUNK, start + 2 * SEALED_CHUNK), slice(start + 3 * SEALED_CHUNK,
                                                                               start + 4 * SEALED_CHUNK)
    data[one], data[three] = data[three], data[one]


def truncate_header(data: bytearray, start: int) -> None:
    del data[60:]


TAMPER = {  # how, the chunk (1-based) the report names, the chunks (0-based) repair turns into silence
    "flip": (flip, "chunk 3 of", [2]),
    "cut": (cut, "chunk 2 of", [1]),
    "swap": (swap, "chunk 2 of", []),
    "truncate-header": (truncate_header, "the header is cut off", None),
}


@pytest.mark.slow
@pytest.mark.parametrize("how", list(TAMPER))
def test_tampered_recording_is_reported_never_uploaded_and_repair_keeps_the_intact_part(
    medisync_server: RunningServer, tmp_path: Path, dialogue_pcm: bytes, how: str
) -> None:
    home = AgentHome(tmp_path / "agent", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password=medisync_server.password)  # fmt: skip
    appointment = medisync_server.create_appointment()
    queued = home.run("run", "--appointment", appointment, "--source", f"file:{DIALOGUE}", "--pace", "fast",
                      "--duration", "10", "--no-stream", "--api-url", UNREACHABLE_API)  # fmt: skip
    assert queued.returncode == 75, queued.stderr  # recorded and queued; MediSync unreachable
    [wav] = home.wavs()
    data = bytearray(wav.read_bytes())
    tamper, report, silent = TAMPER[how]
    tamper(data, parse_header(bytes(data[:4096])).length + 16 if how != "truncate-header" else 0)
    wav.write_bytes(data)

    retried = home.run("uploads", "retry", "--now")

    assert retried.returncode == 0, retried.stderr  # nothing left to retry: dead-lettered for a person
    [line] = [x for x in retried.stderr.splitlines() if "not uploaded" in x]
    assert f"{wav.name}: {report}" in line, line
    assert medisync_server.server.store.recording(appointment) is None and recording_files(medisync_server) == []
    dead = sorted((home.queue_dir / "dead").glob("*.wav"))
    assert home.items() == [] and len(dead) == 1 and is_sealed_file(dead[0])
    assert "damaged, altered" in (home.queue_dir / "dead" / f"{dead[0].stem}.reason.txt").read_text()
    assert leaks(snapshot(home.root), windows_of(dialogue_pcm[: 10 * 32000])) == []

    repaired = home.run("repair", str(dead[0]))
    if silent is None:  # the file key was in the header: nothing can be recovered, and repair says so
        assert repaired.returncode == 73 and "the whole recording is unreadable" in repaired.stderr
        assert len(repaired.stderr.splitlines()) == 1
        return
    assert repaired.returncode == 0, repaired.stderr
    pcm = bytearray(b"\0" * 44 + dialogue_pcm[: 10 * 32000])
    for chunk in silent:
        pcm[chunk * 65536 : (chunk + 1) * 65536] = bytes(65536)
    assert plaintext(dead[0])[44:] == bytes(pcm[44:])  # every intact chunk at its place in the timeline
    if silent:
        assert f"chunk {silent[0] + 1} (about" in repaired.stdout and "silence in its place" in repaired.stdout
    else:
        assert "put back in order" in repaired.stdout


# --- keys missing or wrong ------------------------------------------------------------------------------------


def key_cases(tmp_path: Path) -> dict[str, dict[str, object]]:
    (tmp_path / "garbage.recipient").write_text("not a recipient\n")
    return {
        "missing": {"key_file": "", "recipient_file": str(tmp_path / "absent.recipient"),
                    "key_credential": str(tmp_path / "absent.cred")},
        "wrong": {"key_file": str(other_key(tmp_path)), "recipient_file": str(TEST_RECIPIENT_FILE)},
        "garbage": {"key_file": str(TEST_KEY), "recipient_file": str(tmp_path / "garbage.recipient")},
    }  # fmt: skip


@pytest.mark.parametrize("case", ["missing", "wrong", "garbage"])
def test_a_missing_or_wrong_key_is_one_line_and_exit_78_at_start(
    medisync_server: RunningServer, tmp_path: Path, case: str
) -> None:
    home = AgentHome(tmp_path / "agent", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password=medisync_server.password,
                     settings={"archive": key_cases(tmp_path)[case]})  # fmt: skip
    appointment = medisync_server.create_appointment()
    sealed = tmp_path / "sealed.wav"
    record_sealed(sealed, 1.0)  # with the session's key
    commands = {
        "run": ("run", "--appointment", appointment, "--source", "synth:16000x1:tone=440/1", "--pace", "fast"),
        "daemon": ("daemon",),
        "record": ("record", "--source", "synth:16000x1:tone=440/1", "--out", str(tmp_path / "r.wav")),
        "uploads": ("uploads", "list"),
        "export": ("export", str(sealed), "--out", str(tmp_path / "plain.wav")),
    }
    needs_no_check = {"wrong": "record", "garbage": "export"}  # record needs only the recipient, export the key
    for name, args in commands.items():
        if needs_no_check.get(case) == name:
            continue
        done = home.run(*args, env={"MEDISYNC_AGENT_DAEMON_CONTROL_SOCKET": str(tmp_path / "c.sock")})
        assert done.returncode == 78, f"{name}: {done.returncode} {done.stderr}"
        [line] = done.stderr.splitlines()
        assert line.startswith("medisync-agent: error: ") and "key" in line, f"{name}: {line}"
    assert not (tmp_path / "r.wav").exists() and not (tmp_path / "r.wav.partial").exists()
    assert not (tmp_path / "plain.wav").exists() and medisync_server.server.store.recording(appointment) is None
    assert home.wavs() == []  # never a silent fallback to a plaintext recording


# --- operator copies and orphans ------------------------------------------------------------------------------


@pytest.mark.slow
def test_operator_copy_is_sealed_and_an_orphan_is_assigned_and_both_upload_exactly(
    medisync_server: RunningServer, tmp_path: Path, dialogue_pcm: bytes
) -> None:
    home = AgentHome(tmp_path / "agent", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password=medisync_server.password)  # fmt: skip
    first, second = medisync_server.create_appointment(), medisync_server.create_appointment()
    mine = tmp_path / "mine.wav"
    done = run("record", "--source", f"file:{DIALOGUE}", "--pace", "fast", "--duration", "4", "--plaintext", "--out",
               str(mine))  # fmt: skip
    assert done.returncode == 0, done.stderr
    added = home.run("uploads", "add", first, str(mine))
    assert added.returncode == 0, added.stderr
    [copy] = home.archive.glob("added-*.wav")
    assert is_sealed_file(copy) and not is_sealed_file(mine)  # the operator's file untouched, the copy sealed
    home.archive.mkdir(exist_ok=True)
    orphan = home.archive / "visit-20260101T000000Z-0000abcd.wav"
    record_sealed(orphan, 3.0)  # sealed audio without a journal or a queue item: needs an appointment
    listed = home.run("uploads", "list")
    assert orphan.name in listed.stdout and "3.0 s" in listed.stdout, listed.stdout
    assigned = home.run("uploads", "assign", str(orphan), second)
    assert assigned.returncode == 0, assigned.stderr

    retried = home.run("uploads", "retry", "--now")

    assert retried.returncode == 0, retried.stderr
    assert stored_recording(medisync_server, first) == mine.read_bytes() == plaintext(copy)
    assert stored_recording(medisync_server, second) == uploaded_bytes(orphan)
    assert uploaded_bytes(orphan)[44:] == dialogue_pcm[: 3 * 32000]
    assert leaks(snapshot(home.root), windows_of(dialogue_pcm[: 4 * 32000])) == []


@pytest.mark.slow
def test_a_validly_sealed_but_different_recording_is_never_uploaded_as_the_visit(
    medisync_server: RunningServer, tmp_path: Path
) -> None:
    """Anyone with the public recipient can seal a file: a queued recording swapped for another one of the same
    length authenticates chunk by chunk, but its plaintext differs from the digest taken when the visit finished,
    so the upload withholds its closing boundary and the server stores nothing."""
    home = AgentHome(tmp_path / "agent", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password=medisync_server.password)  # fmt: skip
    appointment = medisync_server.create_appointment()
    queued = home.run("run", "--appointment", appointment, "--source", f"file:{DIALOGUE}", "--pace", "fast",
                      "--duration", "5", "--no-stream", "--api-url", UNREACHABLE_API)  # fmt: skip
    assert queued.returncode == 75, queued.stderr
    [wav] = home.wavs()
    impostor = tmp_path / "impostor.wav"
    done = run("record", "--source", "synth:16000x1:noise=7/5/-20", "--pace", "fast", "--duration", "5", "--out",
               str(impostor))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert impostor.stat().st_size == wav.stat().st_size and plaintext(impostor) != plaintext(wav)
    wav.write_bytes(impostor.read_bytes())

    retried = home.run("uploads", "retry", "--now")

    assert retried.returncode == 0, retried.stderr
    assert f"{wav.name}: its content differs from the digest taken when it was recorded" in retried.stderr
    assert medisync_server.server.store.recording(appointment) is None and recording_files(medisync_server) == []
    assert home.items() == [] and len(list((home.queue_dir / "dead").glob("*.wav"))) == 1
