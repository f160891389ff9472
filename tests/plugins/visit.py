"""Helpers for visit-level tests (owner: H-visit): the real ``medisync-agent`` CLI against the local server.

AgentHome(root, api_url=, speech_url=, email=, password=, settings=)   config file + 0600 password file
    .config / .archive / .queue_dir / .run(*args) / .popen(*args) / .wavs() / .partials() / .journals()
    .items() -> queue item dicts (state, appointment_id, ...)
ResponseCuttingProxy(upstream_port).start() (fixture ``response_cutting_proxy``): a real TCP proxy that, with
    ``armed = True``, forwards an upload request whole and aborts the client side (RST) as the answer comes back
    (the server stored the recording, the agent never heard so)
looped_dialogue(path, times)                    the bundled dialogue repeated ``times`` times as one WAV
sped_up_clock(speed) -> (clock, sleep)          pace a "realtime" source at ``speed`` x real time
stored_recording(server, appointment_id)        bytes the server holds; recording_files(server)
await wait_for(predicate, what)                 poll on the event loop with a deadline
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tests.plugins.archive import DIALOGUE, REPO
from tests.plugins.keys import TEST_KEY, TEST_RECIPIENT_FILE, plaintext
from tests.plugins.server import RunningServer

if TYPE_CHECKING:
    from agent.settings import AgentSettings
    from tests.plugins.proxy import TcpProxy

FAST_STREAM = {
    "backoff_first_s": 0.05, "backoff_cap_s": 0.3, "ack_timeout_s": 3.0, "ping_interval_s": 2.0,
    "ping_timeout_s": 2.0, "replay_speed": 40.0, "end_timeout_s": 30.0,
}  # fmt: skip
"""Stream settings for loopback tests: quick reconnects, replay well above 4x so fast visits finish quickly."""


def proxied_file_visit(server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy],
                       tmp_path: Path) -> tuple[AgentSettings, TcpProxy]:  # fmt: skip
    """Settings for an in-process visit of the bundled dialogue whose speech socket runs through a real TCP proxy
    (cut it to make outages), with FAST_STREAM, archive and queue under ``tmp_path``; and that proxy."""
    from agent.settings import (
        AgentSettings,
        ApiSettings,
        ArchiveSettings,
        AudioSettings,
        StreamSettings,
        UploadSettings,
    )

    target = urlsplit(server.speech_url)
    assert target.hostname is not None and target.port is not None
    proxy = tcp_proxy(target.hostname, target.port)
    settings = AgentSettings(
        audio=AudioSettings(source=f"file:{DIALOGUE}"),
        api=ApiSettings(api_url=server.api_url, speech_url=proxy.url(), email=server.email),
        archive=ArchiveSettings(directory=str(tmp_path / "archive")),
        stream=StreamSettings(**FAST_STREAM),  # type: ignore[arg-type]
        upload=UploadSettings(queue_dir=str(tmp_path / "queue")),
    )
    return settings, proxy


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


class AgentHome:
    """A folder with an agent configuration (TOML + 0600 password file), archive and queue, and CLI runners."""

    def __init__(self, root: Path, *, api_url: str, speech_url: str, email: str, password: str | None,
                 settings: dict[str, dict[str, object]] | None = None) -> None:  # fmt: skip
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.archive = root / "archive"
        self.queue_dir = root / "queue"
        self.password_file = root / "password"
        sections: dict[str, dict[str, object]] = {
            "api": {"api_url": api_url, "speech_url": speech_url, "email": email, "timeout_s": 20.0},
            "archive": {"directory": str(self.archive), "key_file": str(TEST_KEY),
                        "recipient_file": str(TEST_RECIPIENT_FILE)},
            "upload": {"queue_dir": str(self.queue_dir), "backoff_first_s": 0.2, "backoff_cap_s": 1.0},
            "stream": dict(FAST_STREAM),
        }
        if password is not None:
            self.password_file.write_text(password + "\n")
            self.password_file.chmod(0o600)
            sections["api"]["password_file"] = str(self.password_file)
        for section, values in (settings or {}).items():
            sections.setdefault(section, {}).update(values)
        self.config = root / "agent.toml"
        self.config.write_text("".join(
            f"[{section}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items()) + "\n"
            for section, values in sections.items()
        ))  # fmt: skip

    def argv(self, *args: str) -> list[str]:
        command, *rest = args
        sub = [command]
        if command == "uploads":  # the config options belong to the action's parser
            sub, rest = [command, rest[0]], rest[1:]
        return [sys.executable, "-m", "agent", *sub, "--config", str(self.config), *rest]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDISYNC_", "CREDENTIALS_DIRECTORY"))}
        env.update(extra or {})
        return env

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env=self.env(env))  # fmt: skip

    def popen(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(self.argv(*args), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=self.env())

    def wavs(self) -> list[Path]:
        return sorted(self.archive.glob("visit-*.wav")) if self.archive.exists() else []

    def partials(self) -> list[Path]:
        return sorted(self.archive.glob("*.partial")) if self.archive.exists() else []

    def journals(self) -> list[Path]:
        return sorted(self.archive.glob("*.visit.json")) if self.archive.exists() else []

    def items(self) -> list[dict[str, Any]]:
        if not self.queue_dir.exists():
            return []
        found = []
        for path in sorted(self.queue_dir.glob("*.json")):
            with contextlib.suppress(ValueError):  # a torn temp file; the queue ignores those too
                found.append(json.loads(path.read_text()))
        return found


def poll(condition: Callable[[], bool], what: str, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


async def wait_for(predicate: Callable[[], bool], what: str, deadline_s: float = 60.0) -> None:
    """:func:`poll` on the event loop (the visit runs meanwhile)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not predicate():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def stored_recording(server: RunningServer, appointment_id: str) -> bytes:
    rec = server.server.store.recording(appointment_id)
    assert rec is not None, "the server holds no recording for the appointment"
    return (server.server.store.recordings_dir / rec.file_name).read_bytes()


def recording_files(server: RunningServer) -> list[Path]:
    return [p for p in server.server.store.recordings_dir.iterdir() if p.is_file()]


def looped_dialogue(path: Path, times: int) -> Path:
    with wave.open(str(DIALOGUE), "rb") as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        for _ in range(times):
            out.writeframes(frames)
    return path


def sped_up_clock(speed: float) -> tuple[Callable[[], float], Callable[[float], None]]:
    """A clock running ``speed`` times faster than real time and the matching sleep."""
    origin = time.monotonic()
    return (lambda: origin + (time.monotonic() - origin) * speed), (lambda s: time.sleep(max(0.0, s) / speed))


def wav_samples(path: Path) -> bytes:
    """Samples of a 16 kHz mono s16 WAV (a sealed one decrypted by Debian's ``age`` first)."""
    with wave.open(io.BytesIO(plaintext(path)), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return w.readframes(w.getnframes())
