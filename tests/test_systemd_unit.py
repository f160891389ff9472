"""The systemd unit passes ``systemd-analyze verify`` and the hardening bound; the install scripts are sane."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "medisync-agent.service"
INSTALLED_BINARY = "/opt/medisync-agent/venv/bin/medisync-agent"
MAX_EXPOSURE = 1.5


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is needed for this test (apt-get install {'systemd' if 'systemd' in name else name})"
    return path


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def verify_copy(tmp_path: Path, edit: tuple[str, str] = ("", "")) -> tuple[int, str]:
    """``systemd-analyze verify`` on a copy whose ExecStart points at this checkout's binary (verify insists the
    binary exists); the copy differs from the unit in nothing else, apart from the optional ``edit``."""
    text = UNIT.read_text()
    assert text.count(INSTALLED_BINARY) == 1
    copy = tmp_path / "medisync-agent.service"
    text = text.replace(INSTALLED_BINARY, str(Path(sys.executable).parent / "medisync-agent"))
    copy.write_text(text.replace(*edit) if edit[0] else text)
    result = subprocess.run([tool("systemd-analyze"), "verify", str(copy)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for ignored (misspelt) settings, so warnings about our unit count as failures too.
    problems = "\n".join(line for line in result.stderr.splitlines() if "medisync-agent.service" in line)
    return result.returncode, problems


def test_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert verify_copy(tmp_path) == (0, "")


def test_verify_check_catches_a_broken_unit(tmp_path: Path) -> None:
    _, problems = verify_copy(tmp_path, ("Type=notify", "Type=notfy"))
    assert "Failed to parse service type" in problems


def test_security_exposure_is_within_bound() -> None:
    result = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for medisync-agent\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE


def test_unit_has_the_required_settings() -> None:
    d = directives(UNIT.read_text())
    required = {
        "Type": "notify",
        "WatchdogSec": "30s",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "78",
        "User": "medisync-agent",
        "SupplementaryGroups": "audio",
        "DevicePolicy": "closed",
        "DeviceAllow": "char-alsa rw",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "UMask": "0077",
        "LoadCredential": "password:/etc/medisync-agent/password",
        "LoadCredentialEncrypted": "archive-key:/etc/medisync-agent/archive-key.cred",
        "RuntimeDirectory": "medisync-agent",
        "StateDirectory": "medisync-agent",
        "ConfigurationDirectory": "medisync-agent",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "",
    }
    for key, value in required.items():
        assert d.get(key) == [value], key
    assert d["ExecStart"] == [f"{INSTALLED_BINARY} daemon --config /etc/medisync-agent/agent.toml"]
    # PrivateDevices would hide /dev/snd; MemoryDenyWriteExecute breaks sounddevice's cffi callback.
    assert "PrivateDevices" not in d
    assert "MemoryDenyWriteExecute" not in d


def test_scripts_are_shellcheck_clean() -> None:
    scripts = [ROOT / "systemd" / "install.sh", ROOT / "systemd" / "uninstall.sh"]
    result = subprocess.run([tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_scripts_explain_themselves() -> None:
    install = subprocess.run([str(ROOT / "systemd" / "install.sh"), "--help"], capture_output=True, text=True)
    assert install.returncode == 0
    assert "--password-stdin" in install.stdout
    uninstall = subprocess.run([str(ROOT / "systemd" / "uninstall.sh"), "--help"], capture_output=True, text=True)
    assert uninstall.returncode == 0
    assert "--purge" in uninstall.stdout and "upload queue" in uninstall.stdout
    bad = subprocess.run([str(ROOT / "systemd" / "uninstall.sh"), "--frobnicate"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown option: --frobnicate" in bad.stderr
