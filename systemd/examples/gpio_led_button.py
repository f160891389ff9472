#!/usr/bin/env python3
"""One LED and one push button for the MediSync Edge Agent on a Raspberry Pi (gpiozero).

The LED follows the daemon's device state through its control socket (the same JSON lines that
``medisync-agent status --follow`` prints):

    off          idle
    solid        recording
    slow blink   paused, offline, uploading
    fast blink   error, any audio warning (e.g. ``mic_silent``: the microphone may be deaf), or no daemon

The button: a short press pauses a recording visit and resumes a paused one (``visit_pause`` / ``visit_resume``);
held for ``--hold-s`` seconds it stops the visit (``visit_stop``). Starting a visit needs an appointment id, so
that stays with ``medisync-agent visit start``.

Wiring (BCM numbers, changeable with --led/--button): LED with a 330 ohm resistor from GPIO17 to ground, push button
from GPIO27 to ground (the internal pull-up is used). Run it as a member of the service's group (the control socket
is 0660)::

    sudo apt install python3-gpiozero
    python3 gpio_led_button.py --socket /run/medisync-agent/control.sock

Needs only the standard library and gpiozero (not the agent's own packages); no patient data passes through it:
the event lines carry the state, warnings and a session id only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

from gpiozero import LED, Button

log = logging.getLogger("gpio_led_button")

BLINK_S = {"blink": (0.5, 0.5), "fast": (0.1, 0.1)}
"""Seconds on and off of each blinking pattern."""
RECONNECT_S = 3.0
"""Seconds between attempts to reach a daemon that is not there."""
REQUEST_TIMEOUT_S = 30.0
"""Seconds to wait for the daemon's answer to a button request."""


def pattern_for(event: dict[str, Any] | None) -> str:
    """``off``, ``solid``, ``blink`` or ``fast`` for a state event (None: no daemon)."""
    if event is None or event.get("state") == "error" or event.get("warnings"):
        return "fast"
    state = event.get("state")
    if state == "recording":
        return "solid"
    if state in ("paused", "offline", "uploading"):
        return "blink"
    return "off"


def press_request(state: str | None, held: bool) -> dict[str, str] | None:
    """The control request for a press in ``state``: None when the button does nothing there."""
    if state not in ("recording", "paused", "offline"):
        return None  # idle (no visit), uploading (visit over), error (see the log) or no daemon
    if held:
        return {"cmd": "visit_stop"}
    return {"cmd": "visit_resume"} if state == "paused" else {"cmd": "visit_pause"}


class ControlSocket:
    """The daemon's control socket: one request per connection, or the event stream."""

    def __init__(self, path: str) -> None:
        self.path = path

    def ask(self, request: dict[str, str]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(REQUEST_TIMEOUT_S)
            sock.connect(self.path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as stream:
                answer: dict[str, Any] = json.loads(stream.readline() or b"{}")
        return answer

    def follow(self) -> Iterator[dict[str, Any]]:
        """State events until the daemon ends the stream (its last line, an error answer, ends it too)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(self.path)
            sock.sendall(b'{"cmd": "follow"}\n')
            with sock.makefile("rb") as stream:
                for line in stream:
                    event: dict[str, Any] = json.loads(line)
                    if "ok" in event:  # {"ok": false, "error": "the daemon is stopping"}
                        log.warning("daemon: %s", event.get("error", "stream ended"))
                        return
                    yield event


class Panel:
    """The LED and the button, driven by state events."""

    def __init__(self, control: ControlSocket, led: LED, button: Button) -> None:
        self.control = control
        self.led = led
        self.button = button
        self.state: str | None = None
        self.pattern = ""
        self.answers: list[dict[str, Any]] = []
        self._held = False
        button.when_held = self._on_held
        button.when_released = self._on_released

    def show(self, event: dict[str, Any] | None) -> None:
        self.state = None if event is None else event.get("state")
        pattern = pattern_for(event)
        if pattern == self.pattern:
            return
        self.pattern = pattern
        if pattern == "solid":
            self.led.on()
        elif pattern == "off":
            self.led.off()
        else:
            on_s, off_s = BLINK_S[pattern]
            self.led.blink(on_time=on_s, off_time=off_s, background=True)

    def _on_held(self) -> None:
        self._held = True
        self._send(press_request(self.state, held=True))

    def _on_released(self) -> None:
        held, self._held = self._held, False
        if not held:
            self._send(press_request(self.state, held=False))

    def _send(self, request: dict[str, str] | None) -> None:
        if request is None:
            return
        try:
            answer = self.control.ask(request)
        except OSError as exc:
            answer = {"ok": False, "error": f"cannot reach the daemon: {exc.strerror or exc}"}
        self.answers.append(answer)
        if not answer.get("ok"):
            log.warning("%s refused: %s", request["cmd"], answer.get("error", "no answer"))

    def run(self, stop: threading.Event) -> None:
        """Follow the daemon until ``stop`` is set; reconnect when it goes away (fast blink meanwhile)."""
        while not stop.is_set():
            try:
                for event in self.control.follow():
                    self.show(event)
            except OSError as exc:
                log.info("no daemon at %s (%s)", self.control.path, exc.strerror or exc)
            self.show(None)
            stop.wait(RECONNECT_S)


def main() -> None:
    parser = argparse.ArgumentParser(description="LED and push button for the MediSync Edge Agent (gpiozero)")
    parser.add_argument("--socket", default="/run/medisync-agent/control.sock", help="the daemon's control socket")
    parser.add_argument("--led", type=int, default=17, help="GPIO (BCM) of the LED")
    parser.add_argument("--button", type=int, default=27, help="GPIO (BCM) of the push button (to ground)")
    parser.add_argument("--hold-s", type=float, default=2.0, help="seconds held that stop the visit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    panel = Panel(ControlSocket(args.socket), LED(args.led), Button(args.button, hold_time=args.hold_s))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends it; systemd's SIGTERM too (default handler)
        panel.run(threading.Event())


if __name__ == "__main__":
    main()
