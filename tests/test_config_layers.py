"""Layering (defaults < file < environment < flags), typed conversion and locating keys, in-process."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent import config
from agent.config import add_config_arguments, find_line, load_config, load_from_args, parse_set_option
from agent.errors import ConfigError
from agent.settings import AgentSettings


def test_absent_default_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    loaded = load_config(environ={})
    assert loaded.settings == AgentSettings()
    assert loaded.path is None
    assert {o.kind for o in loaded.origins.values()} == {"default"}


def test_default_file_is_read_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = tmp_path / "agent.toml"
    default.write_text("[vad]\naggressiveness = 3\n")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", default)
    loaded = load_config(environ={})
    assert loaded.settings.vad.aggressiveness == 3
    assert loaded.path == default


def test_config_path_from_environment_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(environ={"MEDISYNC_AGENT_CONFIG": str(tmp_path / "absent.toml")})


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[stream]\nring_seconds = 30\nmessage_ms = 40\nreplay_speed = 2\n[audio]\nsource = "mic:USB"\n')
    environ = {
        "MEDISYNC_AGENT_STREAM_MESSAGE_MS": "60",
        "MEDISYNC_AGENT_STREAM_REPLAY_SPEED": "3.5",
        "MEDISYNC_AGENT_STREAM_ENABLED": "false",
        "MEDISYNC_AGENT_AUDIO_FRAME_MS": "30",
        "UNRELATED": "x",
    }
    loaded = load_config(path, environ=environ, flags={"stream.replay_speed": 8.0, "api.email": "a@b.example"})
    s = loaded.settings
    assert (s.stream.ring_seconds, s.stream.message_ms, s.stream.replay_speed) == (30.0, 60, 8.0)
    assert s.stream.enabled is False
    assert s.audio.frame_ms == 30 and s.audio.source == "mic:USB"
    assert s.api.email == "a@b.example"
    assert loaded.origins["stream.ring_seconds"].where == f"{path}:2"
    assert loaded.origins["stream.message_ms"].kind == "env"
    assert loaded.origins["stream.replay_speed"].kind == "flag"
    assert loaded.origins["vad.onset_ms"].kind == "default"


@pytest.mark.parametrize(("text", "value"), [("true", True), ("False", False), ("1", True), ("0", False)])
def test_env_booleans(text: str, value: bool, tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    loaded = load_config(empty, environ={"MEDISYNC_AGENT_STREAM_ENABLED": text})
    assert loaded.settings.stream.enabled is value


def test_env_string_keeps_text(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    loaded = load_config(empty, environ={"MEDISYNC_AGENT_ARCHIVE_DIRECTORY": "/data/42"})
    assert loaded.settings.archive.directory == "/data/42"


def test_unknown_env_variable_is_rejected_with_suggestion(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"did you mean 'MEDISYNC_AGENT_STREAM_RING_SECONDS'"):
        load_config(empty, environ={"MEDISYNC_AGENT_STREAM_RING_SECOND": "3"})


def test_later_layer_fixes_nothing_in_a_bad_file(tmp_path: Path) -> None:
    # A wrong type in the file is an error even when the environment overrides the key: the file is wrong.
    path = tmp_path / "agent.toml"
    path.write_text('[stream]\nmessage_ms = "fast"\n')
    with pytest.raises(ConfigError, match=rf"^{path}:2: stream.message_ms"):
        load_config(path, environ={"MEDISYNC_AGENT_STREAM_MESSAGE_MS": "60"})


def test_range_checked_after_layering(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[stream]\nmessage_ms = 5\n")
    assert load_config(path, environ={}, flags={"stream.message_ms": 40}).settings.stream.message_ms == 40


def test_parse_set_option() -> None:
    assert parse_set_option("stream.enabled=false") == ("stream.enabled", "false")
    assert parse_set_option("audio.source=file:/a=b.wav") == ("audio.source", "file:/a=b.wav")
    with pytest.raises(ConfigError, match=r"expected SECTION\.KEY=VALUE"):
        parse_set_option("stream.enabled")


def test_cli_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[vad]\nonset_ms = 80\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--config", str(path), "--set", "vad.onset_ms=100", "--set", "vad.aggressiveness=1"])
    monkeypatch.delenv("MEDISYNC_AGENT_VAD_ONSET_MS", raising=False)
    loaded = load_from_args(args, flags={"vad.aggressiveness": 3})
    assert loaded.settings.vad.onset_ms == 100
    assert loaded.settings.vad.aggressiveness == 3


SAMPLE = """\
# a comment mentioning ring_seconds = 1
top.key = 1
[audio]
source = "mic"   # ring_seconds
  [stream]
  enabled = true
  'ring_seconds' = 5
[upload]
ring_seconds = 1
[stream.extra]
x = 1
"""


@pytest.mark.parametrize(
    ("section", "key", "line"),
    [
        ("stream", "ring_seconds", 7),
        ("stream", "enabled", 6),
        ("audio", "source", 4),
        ("upload", "ring_seconds", 9),
        ("stream", None, 5),
        ("top", "key", 2),
        ("stream", "extra", 10),
        ("vad", "onset_ms", None),
    ],
)
def test_find_line(section: str, key: str | None, line: int | None) -> None:
    assert find_line(SAMPLE, section, key) == line
