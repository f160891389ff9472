"""The real ``medisync-agent config`` CLI as a subprocess: every configuration error is exit 78 and one exact line."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.config import field_types

CLI = str(Path(sys.executable).parent / "medisync-agent")
HINT = "`medisync-agent config example` lists every key"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDISYNC") and k != "CREDENTIALS_DIRECTORY"}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env=env if env is not None else clean_env(), timeout=60
    )


def assert_config_error(result: subprocess.CompletedProcess[str], line: str) -> None:
    assert result.returncode == 78, result
    assert result.stderr == f"medisync-agent: error: {line}\n"
    assert "Traceback" not in result.stderr


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[stream]\nring_seconds = 30\nmessage_ms = \n")
    assert_config_error(run_cli("config", "show", "--config", str(path)), f"{path}:3: not valid TOML: Invalid value")


def test_deeply_nested_value_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "[audio]\nsource = " + "[" * 5000 + "]" * 5000 + "\n")
    result = run_cli("config", "show", "--config", str(path))
    assert_config_error(result, f"{path}: not valid TOML: values nested too deeply")


def test_unknown_key_names_line_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, '# clinic room 3\n[audio]\nsource = "mic"\n\n[stream]\nenabled = true\nring_second = 30\n')
    result = run_cli("config", "show", "--config", str(path))
    assert_config_error(result, f"{path}:7: unknown key 'stream.ring_second' (did you mean 'ring_seconds'? {HINT})")


def test_unknown_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[audio]\nframe_ms = 20\n[streaming]\nenabled = true\n")
    result = run_cli("config", "show", "--config", str(path))
    assert_config_error(result, f"{path}:3: unknown key 'streaming' (did you mean 'stream'? {HINT})")


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, '[stream]\nenabled = "yes"\n')
    result = run_cli("config", "show", "--config", str(path))
    assert_config_error(result, f"{path}:2: stream.enabled = 'yes': wrong type (allowed: true or false)")


def test_float_for_integer_is_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "[vad]\nonset_ms = 60.5\n")
    result = run_cli("config", "show", "--config", str(path))
    assert_config_error(result, f"{path}:2: vad.onset_ms = 60.5: wrong type (allowed: an integer)")


def test_choice_not_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "[audio]\nframe_ms = 25\n")
    result = run_cli("config", "show", "--config", str(path))
    assert_config_error(result, f"{path}:2: audio.frame_ms = 25: not a valid choice (allowed: one of 10, 20, 30)")


@pytest.mark.parametrize(
    ("toml", "line"),
    [
        (
            "[stream]\nreplay_speed = 0\n",
            "2: stream.replay_speed = 0.0: out of range (allowed: greater than 0 and at most 100)",
        ),
        ("[stream]\n\nmessage_ms = 5\n", "3: stream.message_ms = 5: out of range (allowed: 20 to 1000 ms)"),
        (
            "stream.ring_seconds = -1\n",
            "1: stream.ring_seconds = -1.0: out of range (allowed: greater than 0 and at most 86400 seconds)",
        ),
        (
            '[daemon]\nmetrics_address = "127.0.0.1:99999"\n',
            "2: daemon.metrics_address = '127.0.0.1:99999': not valid "
            '(allowed: empty (off) or host:port, e.g. "127.0.0.1:9510")',
        ),
        (
            '[api]\nspeech_url = "https://speech.medisync.me"\n',
            "2: api.speech_url = 'https://speech.medisync.me': not valid (allowed: a URL starting with wss:// or ws://)",
        ),
        ("[stream]\nreplay_speed = nan\n", "2: stream.replay_speed = nan: not a number (allowed: a number)"),
        (
            "[stream]\nlink_probe_s = -2\n",
            "2: stream.link_probe_s = -2.0: out of range (allowed: 0 to 3600 seconds)",
        ),
        (
            "[stream]\nbackoff_first_s = 60.0\n",
            "2: stream.backoff_first_s = 60.0: must not exceed stream.backoff_cap_s = 30",
        ),
    ],
)
def test_out_of_range_values(tmp_path: Path, toml: str, line: str) -> None:
    path = write(tmp_path, toml)
    assert_config_error(run_cli("config", "show", "--config", str(path)), f"{path}:{line}")


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert_config_error(run_cli("config", "show", "--config", str(missing)), f"{missing}: configuration file not found")


def test_env_error_names_the_variable(tmp_path: Path) -> None:
    env = clean_env(MEDISYNC_AGENT_STREAM_MESSAGE_MS="fast")
    result = run_cli("config", "show", "--config", str(write(tmp_path, "")), env=env)
    line = (
        "environment variable MEDISYNC_AGENT_STREAM_MESSAGE_MS: stream.message_ms = 'fast': "
        "wrong type (allowed: an integer)"
    )
    assert_config_error(result, line)


def test_set_flag_error_names_the_flag(tmp_path: Path) -> None:
    result = run_cli("config", "show", "--config", str(write(tmp_path, "")), "--set", "vad.aggressiveness=7")
    line = "--set vad.aggressiveness: vad.aggressiveness = '7': not a valid choice (allowed: one of 0, 1, 2, 3)"
    assert_config_error(result, line)


def test_show_reports_layers_and_origins(tmp_path: Path) -> None:
    path = write(tmp_path, "[stream]\nring_seconds = 30\nmessage_ms = 40\n[vad]\nonset_ms = 80\n")
    env = clean_env(MEDISYNC_AGENT_STREAM_MESSAGE_MS="60", MEDISYNC_AGENT_VAD_ONSET_MS="100")
    result = run_cli("config", "show", "--config", str(path), "--set", "vad.onset_ms=120", env=env)
    assert result.returncode == 0, result.stderr
    shown = tomllib.loads(result.stdout)
    assert shown["stream"]["ring_seconds"] == 30.0
    assert shown["stream"]["message_ms"] == 60
    assert shown["vad"]["onset_ms"] == 120
    assert shown["vad"]["hangover_ms"] == 600
    lines = result.stdout.splitlines()
    assert f"ring_seconds = 30.0  # {path}:2" in lines
    assert "message_ms = 60  # environment variable MEDISYNC_AGENT_STREAM_MESSAGE_MS" in lines
    assert "onset_ms = 120  # --set vad.onset_ms" in lines
    assert "hangover_ms = 600  # default" in lines


def test_example_is_a_valid_config_with_every_key(tmp_path: Path) -> None:
    result = run_cli("config", "example")
    assert result.returncode == 0
    assert '#email = ""' in result.stdout.splitlines()  # systemd/install.sh --email rewrites this line
    commented = write(tmp_path, result.stdout, "example.toml")
    assert run_cli("config", "show", "--config", str(commented)).returncode == 0
    # Uncommenting every key must load too, and give exactly the defaults.
    active = "\n".join(
        line[1:] if line.startswith("#") and " = " in line and not line.startswith("# ") else line
        for line in result.stdout.splitlines()
    )
    path = write(tmp_path, active, "active.toml")
    shown = run_cli("config", "show", "--config", str(path))
    assert shown.returncode == 0, shown.stderr
    defaults = run_cli("config", "show", "--config", str(commented))
    assert tomllib.loads(shown.stdout) == tomllib.loads(defaults.stdout)
    from_file = [line for line in shown.stdout.splitlines() if f"  # {path}:" in line]
    assert len(from_file) == sum(len(keys) for keys in field_types().values())


def test_world_readable_password_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("hunter2-very-secret\n")
    secret.chmod(0o644)
    path = write(tmp_path, f'[api]\nemail = "room3@clinic.example"\npassword_file = "{secret}"\n')
    result = run_cli("config", "check", "--config", str(path))
    assert_config_error(
        result, f"password file {secret} is accessible by group or others (mode 0644); run: chmod 600 {secret}"
    )
    assert "hunter2" not in result.stdout + result.stderr


def test_missing_systemd_credential_is_refused(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    path = write(tmp_path, '[api]\nemail = "room3@clinic.example"\n')
    result = run_cli("config", "check", "--config", str(path), env=clean_env(CREDENTIALS_DIRECTORY=str(credentials)))
    assert_config_error(
        result,
        "no MediSync password configured (api.password_file, systemd credential 'password' or MEDISYNC_PASSWORD)",
    )


def test_password_env_under_agent_prefix_is_refused(tmp_path: Path) -> None:
    result = run_cli(
        "config", "show", "--config", str(write(tmp_path, "")), env=clean_env(MEDISYNC_AGENT_PASSWORD="hunter2")
    )
    assert result.returncode == 78
    assert "hunter2" not in result.stdout + result.stderr


def test_credential_is_used_and_never_printed(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "password").write_text("hunter2-very-secret\n")
    (credentials / "password").chmod(0o400)
    path = write(tmp_path, '[api]\nemail = "room3@clinic.example"\n')
    env = clean_env(CREDENTIALS_DIRECTORY=str(credentials))
    check = run_cli("config", "check", "--config", str(path), env=env)
    assert check.returncode == 0, check.stderr
    show = run_cli("config", "show", "--config", str(path), env=env)
    assert show.returncode == 0
    assert "# login: e-mail and password readable (password ***)" in show.stdout
    assert "hunter2" not in check.stdout + check.stderr + show.stdout + show.stderr
