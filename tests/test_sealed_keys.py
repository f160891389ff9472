"""The device key and the per-visit key: where the key comes from, what a wrong one does, and that deleting a
recording destroys it. Also the nonce rule of the sealed writer: no (counter, flag) pair ever seals two plaintexts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.archive import age
from agent.archive.keys import load_archive_keys, load_identity
from agent.archive.sealed import PlainDigest, SealedAppender, open_plain, plain_digest
from agent.archive.sealed_writer import SealedArchiveWriter
from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadQueue
from agent.audio.types import Frame
from agent.errors import WrongKeyError
from agent.settings import ArchiveSettings, UploadSettings
from tests.plugins.archive import REPO, agent_command
from tests.plugins.keys import TEST_IDENTITY, TEST_KEY, TEST_KEYS, TEST_RECIPIENT, TEST_RECIPIENT_FILE, age_decrypt


def sealed_recording(path: Path, seconds: float = 3.0) -> bytes:
    pcm = os.urandom(round(seconds * 16000) * 2)
    writer = SealedArchiveWriter.create(path, ArchiveSettings(), recipient=TEST_RECIPIENT)
    for start in range(0, len(pcm), 640):
        writer.write_frame(Frame(start // 2, pcm[start : start + 640], 0.0))
    writer.finish()
    return pcm


def test_the_key_file_must_be_private_and_match_the_recipient(tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    shutil.copy(TEST_KEY, loose)
    loose.chmod(0o644)
    with pytest.raises(WrongKeyError, match="accessible by group or others"):
        load_archive_keys(ArchiveSettings(key_file=str(loose), recipient_file=str(TEST_RECIPIENT_FILE)), identity=True)
    other = tmp_path / "other.key"
    other.write_text(age.Identity.generate().secret_text() + "\n")
    other.chmod(0o600)
    with pytest.raises(WrongKeyError, match="does not match"):
        load_archive_keys(ArchiveSettings(key_file=str(other), recipient_file=str(TEST_RECIPIENT_FILE)), identity=True)
    keys = load_archive_keys(ArchiveSettings(key_file=str(TEST_KEY), recipient_file=str(TEST_RECIPIENT_FILE)),
                             identity=True)  # fmt: skip
    assert keys is not None and keys.recipient == TEST_RECIPIENT and keys.identity is not None
    assert "AGE-SECRET-KEY" not in repr(keys) + str(keys)
    assert load_archive_keys(ArchiveSettings(encrypt=False), identity=True) is None  # off only when asked


def test_the_systemd_credential_is_read_from_the_credentials_folder(tmp_path: Path) -> None:
    folder = tmp_path / "creds"
    folder.mkdir()
    shutil.copy(TEST_KEY, folder / "archive-key")
    (folder / "archive-key").chmod(0o600)
    settings = ArchiveSettings(key_file="", key_credential=str(tmp_path / "absent.cred"))
    assert load_identity(settings, {"CREDENTIALS_DIRECTORY": str(folder)}).recipient == TEST_RECIPIENT
    with pytest.raises(WrongKeyError, match="no device key"):
        load_identity(settings, {})


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("systemd-creds") is None, reason="needs root and systemd-creds")
def test_keys_init_seals_the_key_with_systemd_creds_and_root_commands_open_it(tmp_path: Path) -> None:
    cred, recipient = tmp_path / "archive-key.cred", tmp_path / "archive.recipient"
    env = {**os.environ, "MEDISYNC_AGENT_ARCHIVE_KEY_FILE": "", "MEDISYNC_AGENT_ARCHIVE_KEY_CREDENTIAL": str(cred),
           "MEDISYNC_AGENT_ARCHIVE_RECIPIENT_FILE": str(recipient)}  # fmt: skip
    env.pop("CREDENTIALS_DIRECTORY", None)
    made = subprocess.run(agent_command("keys", "init"), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert b"AGE-SECRET-KEY" not in cred.read_bytes() and cred.stat().st_mode & 0o777 == 0o600
    out = tmp_path / "r.wav"
    recorded = subprocess.run(agent_command("record", "--source", "synth:16000x1:tone=440/1", "--pace", "fast",
                                            "--out", str(out)), cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    assert recorded.returncode == 0, recorded.stderr
    exported = subprocess.run(agent_command("export", str(out), "--out", str(tmp_path / "plain.wav")), cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert exported.returncode == 0, exported.stderr  # opened with `systemd-creds decrypt`, the key never on disk
    assert (tmp_path / "plain.wav").read_bytes()[:4] == b"RIFF"


def test_purge_overwrites_the_key_header_before_deleting(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    wav = archive / "visit.wav"
    sealed_recording(wav)
    witness = tmp_path / "witness"  # a hard link sees the blocks the purge leaves behind
    os.link(wav, witness)
    assert age_decrypt(witness).returncode == 0
    clock = [1000.0]
    queue = UploadQueue(UploadSettings(queue_dir=str(tmp_path / "q"), retention_hours=1.0), clock=lambda: clock[0],
                        keys=TEST_KEYS)  # fmt: skip
    item = queue.enqueue("appt-1", wav)
    item.state, item.uploaded_at = ItemState.DONE, clock[0]
    queue.save(item)
    clock[0] += 3601
    assert queue.purge_expired() == 1
    assert not wav.exists()
    broken = age_decrypt(witness)
    assert broken.returncode != 0 and b"header" in broken.stderr.lower()  # the visit's file key is gone


def test_each_recording_has_its_own_file_key(tmp_path: Path) -> None:
    sealed_recording(tmp_path / "a.wav", 0.5)
    sealed_recording(tmp_path / "b.wav", 0.5)
    headers = [age.parse_header((tmp_path / n).read_bytes()[:4096]) for n in ("a.wav", "b.wav")]
    assert headers[0].stanzas != headers[1].stanzas and headers[0].mac != headers[1].mac


def test_no_counter_and_flag_ever_seals_two_plaintexts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finishing on a whole chunk, a failed write retried, finishing in place: every (counter, last) pair the
    writer seals under carries one plaintext only."""
    sealed: dict[tuple[int, bool], bytes] = {}
    original = age.Payload.seal

    def recording_seal(self: age.Payload, index: int, plaintext: bytes, *, last: bool) -> bytes:
        assert sealed.setdefault((index, last), bytes(plaintext)) == bytes(plaintext), f"nonce {index}/{last} reused"
        return original(self, index, plaintext, last=last)

    monkeypatch.setattr(age.Payload, "seal", recording_seal)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    appender = SealedAppender(fd, TEST_RECIPIENT)
    appender.begin()
    appender.append(os.urandom(age.CHUNK * 2))  # two whole chunks, nothing in the tail
    appender.finish()  # the last whole chunk is sealed again as the final one
    os.close(fd)
    assert (1, False) in sealed and (1, True) in sealed and sealed[(1, False)] == sealed[(1, True)]
    digest = plain_digest(tmp_path / "f", TEST_IDENTITY)
    assert isinstance(digest, PlainDigest) and digest.size == 2 * age.CHUNK
    with open_plain(tmp_path / "f", TEST_IDENTITY) as reader:
        assert len(reader.read()) == 2 * age.CHUNK


def test_config_show_and_check_say_whether_recordings_are_sealed() -> None:
    def show(*extra: str) -> str:
        done = subprocess.run(agent_command("config", "show", *extra), cwd=REPO, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert f"# recordings at rest: on (age, sealed to {TEST_RECIPIENT})" in show().splitlines()
    off = "# recordings at rest: off (archive.encrypt = false): recordings are plaintext WAV on disk"
    assert off in show("--set", "archive.encrypt=false").splitlines()
    missing = show("--set", "archive.recipient_file=/nonexistent/archive.recipient")
    assert "# recordings at rest: on, but no device key: recipient file /nonexistent/archive.recipient does not exist" \
        in missing


def test_check_reports_the_archive_key() -> None:
    from agent.commands.check import check_archive_key
    from agent.settings import AgentSettings

    good = check_archive_key(AgentSettings(archive=ArchiveSettings(key_file=str(TEST_KEY),
                                                                   recipient_file=str(TEST_RECIPIENT_FILE))))
    assert good.label == "PASS"
    assert good.detail == f"recordings sealed (age) to {TEST_RECIPIENT}; the device key opens them"
    off = check_archive_key(AgentSettings(archive=ArchiveSettings(encrypt=False)))
    assert off.label == "WARN"
    bad = check_archive_key(AgentSettings(archive=ArchiveSettings(key_file="", key_credential="/nonexistent",
                                                                  recipient_file=str(TEST_RECIPIENT_FILE))))
    assert bad.label == "FAIL" and "no device key" in bad.detail


def test_record_repairs_a_sealed_leftover_when_the_key_is_here_and_leaves_it_otherwise(tmp_path: Path) -> None:
    pcm = os.urandom(3 * 32000)
    writer = SealedArchiveWriter.create(tmp_path / "crashed.wav", ArchiveSettings(), recipient=TEST_RECIPIENT)
    for start in range(0, len(pcm), 640):
        writer.write_frame(Frame(start // 2, pcm[start : start + 640], 0.0))
    os.close(writer._fd)  # type: ignore[arg-type]  # the process "dies": no finish
    partial = tmp_path / "crashed.wav.partial"
    args = ("record", "--source", "synth:16000x1:tone=440/1", "--pace", "fast", "--out", str(tmp_path / "next.wav"))
    no_key = {**os.environ, "MEDISYNC_AGENT_ARCHIVE_KEY_FILE": "", "MEDISYNC_AGENT_ARCHIVE_KEY_CREDENTIAL": "/none"}
    left = subprocess.run(agent_command(*args), cwd=REPO, env=no_key, capture_output=True, text=True, timeout=120)
    assert left.returncode == 0 and partial.exists()  # recording needs only the recipient; the leftover waits
    assert "needs the device key" in left.stderr
    (tmp_path / "next.wav").unlink()
    done = subprocess.run(agent_command(*args), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not partial.exists() and "repaired interrupted recording" in done.stdout
    with open_plain(tmp_path / "crashed.wav", TEST_IDENTITY) as reader:
        kept = reader.read()[44:]
    assert kept == pcm[: len(kept)] and len(kept) >= len(pcm) - 65536  # every whole chunk kept
