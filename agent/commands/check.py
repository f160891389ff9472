"""``medisync-agent check``: for the person installing the device — is everything in place?

Lists the input devices, records a few seconds from the configured source with a live level meter and voice
share, logs in to MediSync, checks the subscription, opens the speech socket and reports the mode the server
speaks (``resume`` or ``basic``). Prints a pass/warn/fail table; exits 1 if anything failed. MediSync's answers
are diagnosed, never fatal: each one that is wrong becomes a FAIL or WARN row with its reason.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TextIO

from agent.api.medisync import MediSyncClient
from agent.api.secret import load_credentials
from agent.archive.keys import load_archive_keys
from agent.audio.handoff import read_blocks
from agent.audio.mic import list_input_devices, parse_mic_spec
from agent.audio.mic_health import CLIPPING, NO_DATA, SILENT, MicHealthDetector
from agent.audio.pipeline import AudioPipeline
from agent.audio.sources import open_source
from agent.audio.types import Source
from agent.audio.vad import SegmentFrame
from agent.commands._args import duration_seconds
from agent.config import add_config_arguments, load_from_args
from agent.device_watch import block_power, level_dbfs
from agent.errors import AgentError, AuthError, ConfigError, NotInstalledError, ResponseError, SubscriptionError
from agent.safe_text import clean_line
from agent.settings import AgentSettings
from agent.stream import wire
from agent.stream.actions import Ended
from agent.stream.connection import dial, transcribe_url

METER_WIDTH = 30
"""Characters of the level bar; it spans -60 to 0 dBFS."""


@dataclass(frozen=True, slots=True)
class CheckRow:
    name: str
    ok: bool
    detail: str
    warn: bool = False
    """Works, but not as it should (shown WARN; does not fail the check)."""

    @property
    def label(self) -> str:
        return "FAIL" if not self.ok else "WARN" if self.warn else "PASS"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="installer check: microphone, login, subscription, speech socket",
        description=(
            "Check an installation: list input devices, record a few seconds from the configured source "
            "(live level meter and voice share), log in to MediSync, check the subscription and open the speech "
            "socket (reporting whether the server speaks the resume or the basic protocol). Prints a pass/fail "
            "table and exits 1 if anything failed."
        ),
    )
    add_config_arguments(parser)
    parser.add_argument("--seconds", default="3", metavar="S", help="seconds to record (default 3)")
    parser.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    settings = load_from_args(args).settings
    seconds = duration_seconds(args.seconds, flag="--seconds", frame_ms=settings.audio.frame_ms)
    assert seconds is not None
    rows = [check_devices(settings), check_audio(settings, seconds, sys.stderr), check_archive_key(settings)]
    rows += asyncio.run(check_account(settings))
    print(format_table(rows))
    return 0 if all(row.ok for row in rows) else 1


def check_archive_key(settings: AgentSettings) -> CheckRow:
    """Recordings are sealed to a key this device can open (recipient and private key readable, matching)."""
    if not settings.archive.encrypt:
        return CheckRow("archive key", True, "recordings are NOT sealed at rest (archive.encrypt = false)", warn=True)
    try:
        keys = load_archive_keys(settings.archive, identity=True)
    except (ConfigError, NotInstalledError) as exc:
        return CheckRow("archive key", False, str(exc))
    assert keys is not None
    return CheckRow("archive key", True, f"recordings sealed (age) to {keys.recipient}; the device key opens them")


def format_table(rows: list[CheckRow]) -> str:
    width = max(len(row.name) for row in rows)
    lines = [f"{row.label}  {row.name:<{width}}  {clean_line(row.detail)}" for row in rows]  # details quote servers
    failed = sum(not row.ok for row in rows)
    warned = sum(row.ok and row.warn for row in rows)
    lines.append(f"{failed} check(s) failed" if failed else
                 f"all checks passed, {warned} with a warning" if warned else "all checks passed")  # fmt: skip
    return "\n".join(lines)


def _is_mic(spec: str) -> bool:
    return spec == "mic" or spec.startswith(("mic:", "mic@"))


def check_devices(settings: AgentSettings) -> CheckRow:
    spec = settings.audio.source
    if not _is_mic(spec):
        return CheckRow("input devices", True, f"source is {spec.split(':', 1)[0]}, not a microphone")
    try:
        devices = list_input_devices()
        wanted = parse_mic_spec(spec).name
    except AgentError as exc:
        return CheckRow("input devices", False, str(exc))
    names = [d.name for d in devices]
    if not names:
        return CheckRow("input devices", False, "no input devices found (is a microphone connected?)")
    if wanted is not None and not any(wanted.casefold() in n.casefold() for n in names):
        return CheckRow("input devices", False, f"none matches {wanted!r}; found: {', '.join(names)}")
    return CheckRow("input devices", True, ", ".join(names))


def check_audio(settings: AgentSettings, seconds: float, meter: TextIO) -> CheckRow:
    """Record ``seconds`` from the configured source, drawing a level meter on ``meter``."""
    try:
        source = open_source(settings.audio.source, settings.audio)
        with source:
            timer = threading.Timer(seconds + 3.0, source.stop)  # a source that delivers nothing must not hang us
            timer.start()
            try:
                return _record(source, settings, seconds, meter)
            finally:
                timer.cancel()
    except AgentError as exc:
        return CheckRow("audio", False, str(exc))


def _record(src: Source, settings: AgentSettings, seconds: float, meter: TextIO) -> CheckRow:
    pipeline = AudioPipeline(src.sample_rate, settings.audio, settings.vad)
    health = MicHealthDetector(settings.mic, time.monotonic())  # the daemon's detector, over this short listen
    wanted = round(seconds * src.sample_rate)
    got = gated = frames = 0
    power_sum = 0.0
    drawn = -1
    for block in read_blocks(src.handoff):  # a diagnostic: read on this thread, not through a recorder
        got += len(block.samples)
        power_sum += block_power(block.samples) * len(block.samples)
        health.block(block.samples, block.capture_time, block.capture_time + len(block.samples) / src.sample_rate)
        out = pipeline.process(block)
        frames += sum(f.samples for f in out.frames)
        gated += sum(e.frame.samples for e in out.events if isinstance(e, SegmentFrame))
        if (tenth := got * 10 // src.sample_rate) != drawn:  # redraw ten times a second
            drawn = tenth
            _draw(meter, level_dbfs(block_power(block.samples)), gated / frames if frames else 0.0,
                  got / src.sample_rate)  # fmt: skip
        if got >= wanted:
            break
    meter.write("\n")
    health.tick(time.monotonic())
    level = level_dbfs(power_sum / got) if got else None
    share = gated / frames if frames else 0.0
    recorded = got / src.sample_rate
    detail = f"{recorded:.1f} s from {src.description}, level {_db(level)}, voice {share:.0%}"
    if got < wanted * 0.5:
        return CheckRow("audio", False, f"only {recorded:.1f} of {seconds:.1f} s arrived ({src.description})")
    if level is None or level < -90.0:
        return CheckRow("audio", False, f"only digital silence from {src.description}: muted or disconnected?")
    return _health_row(health.problems, detail, settings)


def _health_row(problems: frozenset[str], detail: str, settings: AgentSettings) -> CheckRow:
    """The detector's verdict: a microphone that delivers nothing fails; too low a level or clipping warns."""
    if NO_DATA in problems:
        return CheckRow("audio", False, f"{detail}; then the device stopped delivering audio")
    advice = []
    if SILENT in problems:
        advice.append(f"level too low for speech (below {settings.mic.silence_dbfs:g} dBFS): speak during the "
                      "check, raise the microphone gain or check the device")
    if CLIPPING in problems:
        advice.append("the signal clips: lower the microphone gain")
    if advice:
        return CheckRow("audio", True, f"{detail}; " + "; ".join(advice), warn=True)
    return CheckRow("audio", True, detail)


def _db(value: float | None) -> str:
    return "silence" if value is None else f"{value:.1f} dBFS"


def _draw(meter: TextIO, level: float | None, share: float, at_s: float) -> None:
    filled = 0 if level is None else max(0, min(METER_WIDTH, round((level + 60.0) / 60.0 * METER_WIDTH)))
    bar = "#" * filled + "." * (METER_WIDTH - filled)
    meter.write(f"\r{at_s:4.1f} s  [{bar}] {_db(level):>12}  voice {share:4.0%}")
    meter.flush()


async def check_account(settings: AgentSettings) -> list[CheckRow]:
    try:
        credentials = load_credentials(settings.api)
    except AgentError as exc:
        return [CheckRow("login", False, str(exc))]
    async with MediSyncClient(settings.api, credentials) as client:
        try:
            session = await client.login()
        except AuthError:
            return [CheckRow("login", False, f"MediSync refused the login for {settings.api.email or 'the account'}: "
                                             "wrong e-mail or password")]  # fmt: skip
        except AgentError as exc:
            return [CheckRow("login", False, f"{exc}; visits are still recorded and uploaded later")]
        rows = [CheckRow("login", True, f"logged in at {client.http.base_url}")]
        rows.append(await _subscription(client))
        rows.append(await _speech_socket(settings, session.token.reveal()))
    return rows


async def _subscription(client: MediSyncClient) -> CheckRow:
    try:
        subscription = await client.subscription()
    except SubscriptionError:
        return CheckRow("subscription", False, "no active subscription: visits are recorded but not transcribed")
    except ResponseError as exc:  # the agent copes (records, tries the stream); the installer should still know
        return CheckRow("subscription", True, f"answer not understood ({exc}); visits are recorded, the live "
                                              "transcript is tried", warn=True)  # fmt: skip
    except AgentError as exc:
        return CheckRow("subscription", False, f"{exc}; visits are still recorded")
    if subscription.active is False:
        return CheckRow("subscription", False, "subscription inactive: visits are recorded but not transcribed")
    return CheckRow("subscription", True, f"active{f' ({subscription.plan})' if subscription.plan else ''}")


async def _speech_socket(settings: AgentSettings, token: str) -> CheckRow:
    url = transcribe_url(settings.api.speech_url, "installer-check", str(uuid.uuid4()))
    started = time.monotonic()
    dialled = await dial(url, token, settings.stream)
    if isinstance(dialled, Ended):
        return CheckRow("speech socket", False, f"{settings.api.speech_url}: {dialled.reason}")
    mode = "resume" if dialled.subprotocol == wire.RESUME_SUBPROTOCOL else "basic"
    await dialled.close()
    ms = (time.monotonic() - started) * 1000
    return CheckRow("speech socket", True, f"connected in {ms:.0f} ms; server speaks the {mode} protocol")

