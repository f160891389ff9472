"""Addresses with a user name or password (``https://user:password@host``) are refused by configuration validation
for every address setting and every layer, with one line that does not repeat the password; ``config show`` never
prints user information, however a value got in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.commands.config import render_effective
from agent.config import LoadedConfig, load_config
from agent.config_rules import has_userinfo, mask_userinfo
from agent.settings import AgentSettings, ApiSettings, DaemonSettings

SECRET = "s3cret-Pa55"
BAD = {
    "api.api_url": f"https://doctor:{SECRET}@app.medisync.me/api",
    "api.speech_url": f"wss://doctor:{SECRET}@speech.medisync.me",
    "daemon.metrics_address": f"scraper:{SECRET}@127.0.0.1:9510",
}
REFUSAL = ("{key}: an address with a user name or password ('user:password@') is refused; write it without them "
           "(the password belongs in api.password_file or the systemd credential)")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEDISYNC") and k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})})  # fmt: skip


def assert_refused(result: subprocess.CompletedProcess[str], where: str, key: str) -> None:
    assert result.returncode == 78, result
    assert result.stderr == f"medisync-agent: error: {where}: {REFUSAL.format(key=key)}\n"
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize("key", sorted(BAD))
def test_refused_from_the_file_the_environment_and_flags(tmp_path: Path, key: str) -> None:
    section, name = key.split(".")
    config = tmp_path / "agent.toml"
    config.write_text(f'[{section}]\n{name} = "{BAD[key]}"\n')
    assert_refused(cli("config", "check", "--config", str(config)), f"{config}:2", key)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    variable = f"MEDISYNC_AGENT_{section.upper()}_{name.upper()}"
    assert_refused(cli("config", "show", "--config", str(empty), env={variable: BAD[key]}),
                   f"environment variable {variable}", key)  # fmt: skip
    assert_refused(cli("config", "show", "--config", str(empty), "--set", f"{key}={BAD[key]}"), f"--set {key}", key)


def test_run_and_daemon_refuse_before_doing_anything(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    done = cli("run", "--config", str(empty), "--appointment", "a1", "--api-url", BAD["api.api_url"])
    assert_refused(done, "--set api.api_url", "api.api_url")
    done = cli("daemon", "--config", str(empty), env={"MEDISYNC_AGENT_API_SPEECH_URL": BAD["api.speech_url"]})
    assert_refused(done, "environment variable MEDISYNC_AGENT_API_SPEECH_URL", "api.speech_url")


def test_user_only_and_at_signs_elsewhere() -> None:
    assert has_userinfo("https://user@host/api") and has_userinfo("https://:pw@host") and has_userinfo("u@h:1")
    assert not has_userinfo("https://host/api/people/@me") and not has_userinfo("https://host:8443/a?b=c@d")
    assert not has_userinfo("127.0.0.1:9510") and not has_userinfo("[::1]:9510")
    assert mask_userinfo(f"see https://u:{SECRET}@h/x and wss://v@w") == "see https://***@h/x and wss://***@w"
    assert load_config(os.devnull, environ={}, flags={"api.api_url": "https://host/api/@me"}).settings.api.api_url \
        == "https://host/api/@me"


def test_show_never_prints_user_information_even_if_it_got_in() -> None:
    settings = AgentSettings(api=ApiSettings(api_url=BAD["api.api_url"], speech_url=BAD["api.speech_url"],
                                             email="doctor@clinic.example"),
                             daemon=DaemonSettings(metrics_address=BAD["daemon.metrics_address"]))  # fmt: skip
    loaded = LoadedConfig(settings=settings, origins=load_config(os.devnull, environ={}).origins, path=None)
    shown = render_effective(loaded, {})
    assert SECRET not in shown and "doctor:" not in shown
    assert 'api_url = "https://***@app.medisync.me/api"' in shown
    assert 'metrics_address = "***@127.0.0.1:9510"' in shown
    assert 'email = "doctor@clinic.example"' in shown  # an e-mail address is not an address with a password


def test_ask_refuses_a_medisearch_url_with_user_information() -> None:
    url = f"https://key:{SECRET}@api.medisearch.example/sse/medichat"
    env = {"MEDISEARCH_API_KEY": "k"}
    for args, where, extra in ((["--url", url], "--url", {}), ([], "environment variable MEDISEARCH_URL",
                                                                {"MEDISEARCH_URL": url})):  # fmt: skip
        done = cli("ask", "what is a fever?", *args, env={**env, **extra})
        assert done.returncode == 78
        assert done.stderr == (f"medisync-agent: error: {where}: an address with a user name or password "
                               "('user:password@') is refused; write it without them (the API key has its own file "
                               "or variable)\n")
