"""``medisync-agent uploads``: listing, progress display, exit codes (the upload path itself: test_upload_server)."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import pytest

from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadQueue
from agent.cli import main
from agent.commands.uploads import ProgressView, format_rows
from agent.settings import UploadSettings
from tests.test_upload_queue import T0, Clock, make_wav


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config file pointing the queue into tmp_path and the API at a closed local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[upload]\nqueue_dir = "{tmp_path / "queue"}"\n[archive]\ndirectory = "{tmp_path / "archive"}"\n'
        f'[api]\napi_url = "http://127.0.0.1:{closed_port}/api"\n'
    )
    monkeypatch.setenv("MEDISYNC_AGENT_CONFIG", str(path))
    monkeypatch.setenv("MEDISYNC_EMAIL", "doc@example.org")
    monkeypatch.setenv("MEDISYNC_PASSWORD", "not used")
    return path


def test_list_empty_and_filled(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["uploads", "list"]) == 0
    assert "is empty" in capsys.readouterr().out
    wav = make_wav(tmp_path / "v.wav", 0.5)
    assert main(["uploads", "add", "apt-7", str(wav)]) == 0
    assert main(["uploads", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].split()[1:6] == ["pending", "apt-7", "0.0", "MB", "0"]


def test_retry_unreachable_exits_tempfail_and_keeps_item(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["uploads", "add", "apt-7", str(make_wav(tmp_path / "v.wav", 0.2))]) == 0
    tried_at = time.time()
    assert main(["uploads", "retry"]) == 75
    assert "1 failed (will retry)" in capsys.readouterr().out
    queue = UploadQueue(UploadSettings(queue_dir=str(tmp_path / "queue")))
    [item] = queue.items()
    assert (item.state, item.attempts, item.last_error) == (ItemState.PENDING, 1, "MediSync unreachable")
    # Scheduled after a full-jitter delay of 0..backoff_first_s (5 s), which a slow machine (arm64 emulation) can
    # outlast before the next command: push the schedule out of reach so "not due" does not depend on that draw.
    assert tried_at <= item.next_attempt_at <= time.time() + UploadSettings().backoff_first_s
    # Half the backoff cap: further ahead than any delay the policy sets would read as a clock set back (due now).
    item.next_attempt_at = time.time() + UploadSettings().backoff_cap_s / 2
    queue.save(item)
    assert main(["uploads", "retry"]) == 75  # not due yet: nothing tried, still waiting
    assert (
        "0 failed (will retry), 0 blocked (no subscription), 0 dead-lettered; 1 still waiting"
        in capsys.readouterr().out
    )
    assert main(["uploads", "retry", "--now"]) == 75
    assert UploadQueue(UploadSettings(queue_dir=str(tmp_path / "queue"))).items()[0].attempts == 2


def test_add_missing_file_is_one_line_error(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["uploads", "add", "apt-7", str(tmp_path / "nope.wav")]) == 65
    err = capsys.readouterr().err
    assert err.startswith("medisync-agent: error:") and err.count("\n") == 1


def test_help_and_bare_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["uploads", "retry", "--help"])
    assert exit_info.value.code == 0
    assert "--now" in capsys.readouterr().out
    assert main(["uploads"]) == 2


def test_rows_show_state_times_and_reasons(tmp_path: Path) -> None:
    queue = UploadQueue(UploadSettings(queue_dir=str(tmp_path / "q")), clock=Clock())
    item = queue.enqueue("apt-1", make_wav(tmp_path / "a.wav", 0.1))
    item.next_attempt_at = T0 + 60
    dead = queue.dead_letter(queue.enqueue("apt-2", make_wav(tmp_path / "b.wav", 0.1)), "appointment gone")
    header, pending_row, dead_row = format_rows([item, dead], T0)
    assert "LAST ERROR" in header
    assert " pending " in pending_row and "now" not in pending_row
    assert dead_row.endswith("appointment gone") and " dead " in dead_row


def test_progress_bar_on_a_terminal_lines_otherwise(tmp_path: Path) -> None:
    queue = UploadQueue(UploadSettings(queue_dir=str(tmp_path / "q")), clock=Clock())
    item = queue.enqueue("apt-1", make_wav(tmp_path / "a.wav", 0.1))
    tty = io.StringIO()
    progress = ProgressView(tty, tty=True).for_item(item)
    for sent in range(0, 1_000_001, 250_000):
        progress(sent, 1_000_000)
    assert tty.getvalue().count("\r") == 5 and tty.getvalue().endswith("100% 1.0 MB / 1.0 MB\n")
    lines = io.StringIO()
    progress = ProgressView(lines, tty=False).for_item(item)
    for sent in range(0, 1_000_001, 10_000):
        progress(sent, 1_000_000)
    text = lines.getvalue().splitlines()
    assert len(text) == 11 and text[-1] == f"{item.item_id[:8]}: 100% of 1.0 MB sent"
