"""PulseAudio for the microphone tests: a real server with a null sink whose monitor PortAudio can capture.

PortAudio on Debian talks to ALSA; the ALSA ``pulse`` plugin (Debian package libasound2-plugins) exposes the
PulseAudio server as the ALSA/PortAudio devices ``pulse`` and ``default``. The fixture makes the null sink's
monitor the server's default source, so ``mic:pulse`` captures whatever is played into the sink.

Fixtures:
- ``pulse_server`` (session): a running server (started with ``pulseaudio -D --exit-idle-time=-1`` if
  ``pactl info`` gets no answer). It is left running afterwards: parallel pytest sessions on one machine share
  the per-user server, and stopping it would break the others' captures mid-test.
- ``null_sink`` (function, factory): ``null_sink(rate, channels)`` loads a null sink, makes its monitor the
  default source and returns a :class:`NullSink`; modules are unloaded and defaults restored at teardown.
- every test marked ``pulse`` holds :func:`server_lock` for its whole run (set-up and teardown included): the
  tests share one server and its default source, so two of them side by side capture each other's audio. The lock
  does what xdist's ``--dist loadgroup`` was meant to (tests/conftest.py marks them ``xdist_group("pulse")``), and
  does not depend on it: with pytest 9.2 and pytest-xdist 3.8 that grouping is silently lost (xdist sets
  ``item._nodeid``, which pytest 9.2 no longer reads), and microphone tests ran side by side on different workers.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

DEADLINE_S = 10.0


def server_lock_path() -> str:
    """One lock per PulseAudio server: the per-user server lives in ``XDG_RUNTIME_DIR``. The folder is made if it
    is missing (PulseAudio makes it too, but only when the first test starts the server: a test that asks for the
    lock before that found no folder)."""
    folder = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return os.path.join(folder, f"medisync-tests-pulse-{os.getuid()}.lock")


@pytest.fixture(autouse=True)
def server_lock(request: pytest.FixtureRequest) -> Iterator[None]:
    """Microphone tests (marked ``pulse``) one at a time per PulseAudio server, across xdist workers and sessions."""
    if request.node.get_closest_marker("pulse") is None:
        yield
        return
    with open(server_lock_path(), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, after the test's teardown
        yield


def pactl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pactl", *args], capture_output=True, text=True, check=check, timeout=DEADLINE_S)


def _answers() -> bool:
    return pactl("info", check=False).returncode == 0


def _poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")


def _server_info(key: str) -> str:
    for line in pactl("info").stdout.splitlines():
        if line.startswith(f"{key}:"):
            return line.split(":", 1)[1].strip()
    return ""


@dataclass(frozen=True)
class NullSink:
    sink: str
    """Sink name to play into (``paplay --device=<sink>``)."""
    monitor: str
    """PulseAudio source name of the sink's monitor (also made the default source)."""
    rate: int
    channels: int
    mic_device: str = "pulse"
    """PortAudio device name that captures the default PulseAudio source (the ALSA pulse plugin)."""

    def play(self, wav_path: str) -> subprocess.Popen[bytes]:
        """Start ``paplay`` of ``wav_path`` into this sink (the caller waits for it)."""
        return subprocess.Popen(["paplay", f"--device={self.sink}", wav_path])


@pytest.fixture(scope="session")
def pulse_server() -> Iterator[None]:
    for tool in ("pulseaudio", "pactl", "paplay"):
        if shutil.which(tool) is None:
            raise AssertionError(f"{tool} missing: run tests/setup.sh (installs pulseaudio, pulseaudio-utils)")
    if not _answers():
        # As root pulseaudio warns ("not intended to be run as root") but runs fine as a per-user daemon.
        # A second session starting one at the same moment fails to get the lock; then the poll finds the other.
        subprocess.run(["pulseaudio", "-D", "--exit-idle-time=-1"], check=False, capture_output=True,
                       timeout=DEADLINE_S)
        _poll(_answers, "pulseaudio to answer pactl info")
    yield


@pytest.fixture
def null_sink(pulse_server: None) -> Iterator[Callable[[int, int], NullSink]]:
    modules: list[str] = []
    old_source = _server_info("Default Source")
    old_sink = _server_info("Default Sink")

    def make(rate: int, channels: int) -> NullSink:
        name = f"msync_test_{len(modules)}_{rate}x{channels}"
        module = pactl(
            "load-module", "module-null-sink", f"sink_name={name}", f"rate={rate}", f"channels={channels}",
            f"sink_properties=device.description={name}",
        ).stdout.strip()
        modules.append(module)
        monitor = f"{name}.monitor"
        _poll(lambda: monitor in pactl("list", "short", "sources").stdout, f"source {monitor}")
        pactl("set-default-source", monitor)
        return NullSink(sink=name, monitor=monitor, rate=rate, channels=channels)

    yield make
    for module in reversed(modules):
        pactl("unload-module", module, check=False)
    for kind, old in (("source", old_source), ("sink", old_sink)):
        if old and old in pactl("list", "short", f"{kind}s").stdout:
            pactl(f"set-default-{kind}", old, check=False)
