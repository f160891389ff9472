"""Range rules for settings (types are checked by msgspec; these say which values of the type make sense).

Each rule knows how to describe what it allows, so error messages and ``config example`` say the same thing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

UNIX_SOCKET_PATH_MAX = 107
"""sockaddr_un.sun_path holds 108 bytes including the terminating NUL."""


@dataclass(frozen=True)
class Rule:
    accepts: Callable[[Any], bool]
    allowed: str
    """What the rule allows, phrased for a person: ``a number greater than 0``."""


def positive(upper: float | None = None, unit: str = "") -> Rule:
    suffix = f" {unit}" if unit else ""
    if upper is None:
        return Rule(lambda v: math.isfinite(v) and v > 0, f"a number greater than 0{suffix}")
    return Rule(lambda v: math.isfinite(v) and 0 < v <= upper, f"greater than 0 and at most {upper:g}{suffix}")


def between(lower: float, upper: float, unit: str = "") -> Rule:
    suffix = f" {unit}" if unit else ""
    return Rule(lambda v: math.isfinite(v) and lower <= v <= upper, f"{lower:g} to {upper:g}{suffix}")


def non_empty(what: str) -> Rule:
    return Rule(lambda v: bool(v.strip()), what)


def url(schemes: tuple[str, ...]) -> Rule:
    pattern = re.compile(r"^(" + "|".join(schemes) + r")://[^\s/]+(/\S*)?$")
    return Rule(lambda v: bool(pattern.match(v)), "a URL starting with " + " or ".join(f"{s}://" for s in schemes))


CREDENTIAL_FREE_KEYS = ("api.api_url", "api.speech_url", "daemon.metrics_address")
"""Addresses that must not carry a user name or password (``https://user:password@host``): configuration files,
``config show``, logs and the process list would all show it. The password has its own private file."""

_SCHEME_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s@]*@")
_BARE_USERINFO = re.compile(r"^[^/?#\s@]*@")


def has_userinfo(address: str) -> bool:
    """True when ``address`` names a user (``scheme://user[:password]@host...`` or ``user[:password]@host:port``)."""
    text = address.strip()
    if "://" in text:
        return _SCHEME_USERINFO.match(text) is not None
    return _BARE_USERINFO.match(text) is not None


def mask_userinfo(text: str) -> str:
    """``text`` with the user information of every ``scheme://...@`` in it replaced by ``***``."""
    return _SCHEME_USERINFO.sub(lambda m: m["scheme"] + "***@", text)


def _source_ok(value: str) -> bool:
    if value == "mic":
        return True
    kind, sep, rest = value.partition(":")
    return bool(sep) and kind in ("mic", "file", "synth") and bool(rest.strip())


def split_host_port(address: str, *, allow_any_port: bool = False) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` -> (host, port); None when malformed or the port is not 1..65535.

    ``allow_any_port`` also accepts port 0 (the OS picks a free port; for tests).
    """
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", address)
    if match is None:
        return None
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    return (host, port) if (0 if allow_any_port else 1) <= port <= 65535 else None


RULES: Mapping[str, Rule] = {
    "audio.source": Rule(_source_ok, "mic, mic:<device name part>, file:<path.wav> or synth:<recipe>"),
    "audio.handoff_seconds": positive(60, "seconds"),
    "vad.onset_ms": between(0, 1000, "ms"),
    "vad.preroll_ms": between(0, 5000, "ms"),
    "vad.hangover_ms": between(0, 10000, "ms"),
    "archive.directory": non_empty("a folder path"),
    "archive.header_interval_s": positive(3600, "seconds"),
    "archive.fsync_interval_s": positive(3600, "seconds"),
    "api.api_url": url(("https", "http")),
    "api.speech_url": url(("wss", "ws")),
    "api.timeout_s": positive(600, "seconds"),
    "api.confirm_timeout_s": positive(600, "seconds"),
    "stream.ring_seconds": positive(86400, "seconds"),
    "stream.ring_bytes": between(65536, 4 * 1024**3, "bytes"),
    "stream.message_ms": between(20, 1000, "ms"),
    "stream.replay_message_ms": between(20, 1000, "ms"),
    "stream.replay_speed": positive(100),
    "stream.basic_max_chunk_s": positive(300, "seconds"),
    "stream.basic_chunk_timeout_s": positive(3600, "seconds"),
    "stream.ack_timeout_s": positive(600, "seconds"),
    "stream.ping_interval_s": positive(600, "seconds"),
    "stream.ping_timeout_s": positive(600, "seconds"),
    "stream.session_init_timeout_s": positive(600, "seconds"),
    "stream.end_timeout_s": positive(3600, "seconds"),
    "stream.drain_max_s": positive(86400, "seconds"),
    "stream.backoff_first_s": positive(3600, "seconds"),
    "stream.backoff_cap_s": positive(86400, "seconds"),
    "stream.link_probe_s": between(0, 3600, "seconds"),
    "stream.connect_timeout_s": positive(600, "seconds"),
    "upload.queue_dir": non_empty("a folder path"),
    "upload.retention_hours": between(0, 24 * 365, "hours"),
    "upload.backoff_first_s": positive(86400, "seconds"),
    "upload.backoff_cap_s": positive(7 * 86400, "seconds"),
    "upload.max_bytes": between(1024 * 1024, 500 * 1024 * 1024, "bytes"),
    "daemon.control_socket": Rule(
        lambda v: 0 < len(v.encode()) <= UNIX_SOCKET_PATH_MAX, f"a path of 1 to {UNIX_SOCKET_PATH_MAX} bytes"
    ),
    "daemon.metrics_address": Rule(
        lambda v: v == "" or split_host_port(v) is not None, 'empty (off) or host:port, e.g. "127.0.0.1:9510"'
    ),
    "daemon.stop_timeout_s": positive(600, "seconds"),
    "daemon.device_retry_cap_s": positive(3600, "seconds"),
    "mic.silence_dbfs": between(-120, 0, "dBFS"),
    "mic.hysteresis_db": between(0, 60, "dB"),
    "mic.clip_dbfs": between(-20, 0, "dBFS"),
    "mic.clip_share": Rule(lambda v: math.isfinite(v) and 0 < v <= 1, "greater than 0 and at most 1"),
    "mic.window_s": positive(60, "seconds"),
    "mic.raise_s": between(0, 600, "seconds"),
    "mic.clear_s": between(0, 600, "seconds"),
    "mic.no_data_s": positive(600, "seconds"),
    "mic.no_speech_s": positive(86400, "seconds"),
    "device.state_hook": Rule(
        lambda v: all(part.strip() for part in v[:1]),
        'empty (no hook) or a command as a list, e.g. ["/usr/local/bin/led-hook", "--pin", "17"]',
    ),
    "device.state_hook_timeout_s": positive(600, "seconds"),
}

_ORDERED_PAIRS = (
    ("stream.backoff_first_s", "stream.backoff_cap_s"),
    ("upload.backoff_first_s", "upload.backoff_cap_s"),
)


def check_cross_field(values: Mapping[str, Any]) -> tuple[str, str] | None:
    """(key, problem) for the first violated relation between settings, or None."""
    for lower, upper in _ORDERED_PAIRS:
        if values[lower] > values[upper]:
            return lower, f"must not exceed {upper} = {values[upper]:g}"
    return None
