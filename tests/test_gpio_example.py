"""The Raspberry Pi LED-and-button example (systemd/examples/gpio_led_button.py) on gpiozero's mock pins.

Events are driven in through a real Unix control socket served by a scripted test daemon (it records every
request), then through the real daemon: the LED pin's states are asserted for each pattern, and mock button presses
must send the right control requests (a held press stops a real visit)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from gpiozero import LED, Button, Device
from gpiozero.pins.mock import MockFactory, MockPin

from agent.control import GetStatus, StartVisit
from tests.plugins.daemon import DaemonProcess, poll, short_tmp_dir
from tests.plugins.server import RunningServer
from tests.test_daemon_events import recorded
from tests.test_systemd_unit import tool

EXAMPLE = Path(__file__).resolve().parent.parent / "systemd" / "examples" / "gpio_led_button.py"
LED_PIN, BUTTON_PIN = 17, 27


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpio_led_button", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ScriptedDaemon:
    """A control socket that streams the events the test pushes and answers every other request with ok."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.requests: list[dict[str, Any]] = []
        self.followers: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            request = json.loads(conn.makefile("rb").readline())
            if request == {"cmd": "follow"}:
                self.followers.append(conn)
                continue
            self.requests.append(request)
            conn.sendall(b'{"ok": true}\n')
            conn.close()

    def push(self, state: str, warnings: tuple[str, ...] = ()) -> None:
        line = json.dumps({"seq": 1, "time": "2026-11-26T23:40:00.000Z", "state": state, "reason": "",
                           "warnings": list(warnings), "session_id": ""}).encode() + b"\n"  # fmt: skip
        for conn in self.followers:
            conn.sendall(line)

    def stop(self) -> None:
        for conn in self.followers:
            conn.sendall(b'{"ok": false, "error": "the daemon is stopping"}\n')
            conn.close()
        self.server.close()


@pytest.fixture
def mock_pins() -> Iterator[MockFactory]:
    factory = MockFactory()
    previous, Device.pin_factory = Device.pin_factory, factory
    yield factory
    factory.reset()
    Device.pin_factory = previous


def start_panel(example: ModuleType, path: Path) -> tuple[Any, threading.Event, threading.Thread]:
    panel = example.Panel(example.ControlSocket(str(path)), LED(LED_PIN), Button(BUTTON_PIN, hold_time=0.3))
    stop = threading.Event()
    thread = threading.Thread(target=panel.run, args=(stop,), daemon=True)
    thread.start()
    return panel, stop, thread


def steady(pin: MockPin, value: bool) -> Callable[[], bool]:
    return lambda: pin.state == value


def blinking(pin: MockPin) -> bool:
    """True once the pin changed state at least four times since its states were cleared."""
    states = [s.state for s in pin.states]
    return sum(a != b for a, b in itertools.pairwise(states)) >= 4


def shows(panel: Any, pin: MockPin, pattern: str) -> None:
    poll(lambda: panel.pattern == pattern, f"the {pattern} pattern")
    if pattern in ("blink", "fast"):
        pin.clear_states()
        poll(lambda: blinking(pin), f"the LED to {pattern}")
    else:
        poll(steady(pin, pattern == "solid"), f"the LED {pattern}")


def press(pin: MockPin, hold: Callable[[], bool] | None = None) -> None:
    pin.drive_low()
    if hold is not None:
        poll(hold, "the button to count as held")
    pin.drive_high()


def test_led_patterns_and_button_requests_over_a_control_socket(mock_pins: MockFactory) -> None:
    example = load_example()
    daemon = ScriptedDaemon(short_tmp_dir() / "control.sock")
    panel, stop, thread = start_panel(example, daemon.path)
    led, button = mock_pins.pin(LED_PIN), mock_pins.pin(BUTTON_PIN)
    poll(lambda: len(daemon.followers) == 1, "the example to follow the event stream")

    daemon.push("idle")
    shows(panel, led, "off")
    press(button)  # idle: a press does nothing
    daemon.push("recording")
    shows(panel, led, "solid")
    press(button)
    poll(lambda: daemon.requests == [{"cmd": "visit_pause"}], "visit_pause on the control socket")
    daemon.push("paused")
    shows(panel, led, "blink")
    press(button)
    poll(lambda: daemon.requests[-1:] == [{"cmd": "visit_resume"}], "visit_resume")
    daemon.push("recording", ("mic_silent",))  # an audio warning: fast, whatever the state
    shows(panel, led, "fast")
    daemon.push("offline")
    shows(panel, led, "blink")
    press(button, hold=lambda: panel._held)
    poll(lambda: daemon.requests[-1:] == [{"cmd": "visit_stop"}], "visit_stop after a held press")
    daemon.push("uploading")
    shows(panel, led, "blink")
    daemon.push("error")
    shows(panel, led, "fast")
    daemon.push("idle")
    shows(panel, led, "off")
    assert daemon.requests == [{"cmd": "visit_pause"}, {"cmd": "visit_resume"}, {"cmd": "visit_stop"}]

    stop.set()
    daemon.stop()  # the daemon goes away: fast blink while the example waits to reconnect
    shows(panel, led, "fast")
    thread.join(20)
    assert not thread.is_alive()
    panel.led.close()
    panel.button.close()


@pytest.mark.slow
def test_led_follows_the_real_daemon_and_a_held_press_stops_the_visit(
    mock_pins: MockFactory, start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer
) -> None:
    example = load_example()
    daemon = start_daemon()
    daemon.wait_ready()
    panel, stop, thread = start_panel(example, daemon.control)
    led, button = mock_pins.pin(LED_PIN), mock_pins.pin(BUTTON_PIN)
    shows(panel, led, "off")

    assert daemon.ask(StartVisit(appointment_id=medisync_server.create_appointment())).ok
    shows(panel, led, "solid")
    recorded(daemon)
    press(button, hold=lambda: panel._held)
    poll(lambda: bool(panel.answers), "the daemon's answer to the held press")
    assert panel.answers[0]["ok"] and "visit ended" in panel.answers[0]["message"]
    poll(lambda: daemon.ask(GetStatus()).status.state == "idle", "the visit to end")  # type: ignore[union-attr]
    poll(lambda: panel.state == "idle", "the LED to see idle after the upload", deadline_s=60)
    shows(panel, led, "off")

    stop.set()
    rc, _ = daemon.terminate()
    assert rc == 0
    shows(panel, led, "fast")
    thread.join(20)
    assert not thread.is_alive()
    panel.led.close()
    panel.button.close()


def test_example_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = EXAMPLE.with_name("medisync-led.service")
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text())
    result = subprocess.run([tool("systemd-analyze"), "verify", "--man=no", str(copy)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and unit.name not in result.stderr, result.stderr
    exec_start = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
    assert exec_start.split()[1].endswith("/" + EXAMPLE.name)
    assert [a for a in exec_start.split() if a.startswith("--")] == ["--socket", "--led", "--button"]
