"""Bad input around the event stream and the state hook: one case per test, the exact line a person sees and the
exit code (69 no daemon, 78 bad configuration), and the follow request on the wire."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.control import Follow, ProtocolViolation, parse_request
from tests.test_config_cli import assert_config_error, clean_env, run_cli, write


def test_follow_request_parses_and_takes_no_fields() -> None:
    assert parse_request(b'{"cmd": "follow"}\n') == Follow()
    with pytest.raises(ProtocolViolation, match="bad request"):
        parse_request(b'{"cmd": "follow", "since": 3}\n')


def test_follow_without_a_daemon_names_the_socket(tmp_path: Path) -> None:
    sock = tmp_path / "nope.sock"
    done = run_cli("status", "--follow", "--socket", str(sock))
    assert done.returncode == 69 and done.stdout == ""
    assert done.stderr == f"medisync-agent: error: the daemon is not running (no control socket at {sock})\n"


def test_hook_with_an_empty_program_is_refused(tmp_path: Path) -> None:
    config = write(tmp_path, '[device]\nstate_hook = ["", "--pin", "17"]\n')
    assert_config_error(
        run_cli("config", "check", "--config", str(config)),
        f'{config}:2: device.state_hook = ["","--pin","17"]: not valid (allowed: empty (no hook) or a command as a '
        'list, e.g. ["/usr/local/bin/led-hook", "--pin", "17"])',
    )


def test_hook_as_a_string_is_refused(tmp_path: Path) -> None:
    config = write(tmp_path, '[device]\nstate_hook = "/usr/local/bin/led-hook --pin 17"\n')
    assert_config_error(
        run_cli("config", "check", "--config", str(config)),
        f"{config}:2: device.state_hook = '/usr/local/bin/led-hook --pin 17': wrong type (allowed: a list of strings, "
        'e.g. ["/usr/local/bin/hook", "--flag"] (in the environment or --set: as JSON))',
    )


def test_hook_timeout_out_of_range(tmp_path: Path) -> None:
    config = write(tmp_path, "[device]\nstate_hook_timeout_s = 0\n")
    assert_config_error(
        run_cli("config", "check", "--config", str(config)),
        f"{config}:2: device.state_hook_timeout_s = 0.0: out of range "
        "(allowed: greater than 0 and at most 600 seconds)",
    )


def test_hook_from_the_environment_is_json(tmp_path: Path) -> None:
    argv = ["/usr/local/bin/led-hook", "--pin", "17"]
    env = clean_env(MEDISYNC_AGENT_DEVICE_STATE_HOOK=json.dumps(argv))
    done = run_cli("config", "show", "--config", str(write(tmp_path, "")), env=env)
    assert done.returncode == 0, done.stderr
    assert f"state_hook = {json.dumps(argv)}  # environment variable MEDISYNC_AGENT_DEVICE_STATE_HOOK" in done.stdout
