"""One benchmark agent: a real visit (source -> DSP -> VAD -> archive -> speech socket) in its own process.

Run by the harness as ``python -m benchmarks.agent_proc CONFIG.json RESULT.json``. It logs in to the local server,
creates a patient and an appointment, then runs :class:`agent.visit.Visit` exactly as ``medisync-agent run`` does
(without the upload's network part: the CPU of reading what it would send -- a sealed archive decrypted and hashed
-- is measured after the visit) and writes its figures as JSON. With ``archive.encrypt`` (the default) the agent
makes a device key of its own first.

CPU is the kernel's account of this whole process (every thread): ``getrusage(RUSAGE_SELF)`` at the start and end of
the visit, so interpreter start-up and the login are excluded. RSS is sampled from ``/proc/self/statm``.

Opt-in probe (``trace``): :func:`agent.stream.wire.encode_audio` is wrapped so that the moment each resume-mode
message is encoded -- immediately before ``ws.send`` writes it -- is recorded with its seq and timeline range, and
:func:`agent.stream.wire.decode` so acks and ``ready`` are timestamped. Frame capture times come from the visit's
``on_output`` hook. The wrappers only append tuples to lists; everything else is computed after the visit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from agent.api.medisync import MediSyncClient
from agent.api.models import NewAppointment, NewPatient
from agent.api.secret import Credentials, Secret
from agent.archive.keys import init_keys
from agent.archive.upload_queue import UploadQueue
from agent.audio.pipeline import PipelineOutput
from agent.audio.sources import open_source
from agent.audio.vad import SegmentFrame
from agent.settings import AgentSettings, ApiSettings, ArchiveSettings, AudioSettings, StreamSettings, UploadSettings
from agent.stream import wire
from agent.visit import Visit


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    api_url: str
    speech_url: str
    email: str
    password: str
    work_dir: str
    source: str
    pace: str = "realtime"
    duration_s: float | None = None
    block_frames: int | None = None
    """Block length of file/synth sources in source-rate frames (None: 20 ms)."""
    stream: dict[str, Any] = msgspec.field(default_factory=dict)
    """StreamSettings overrides."""
    audio: dict[str, Any] = msgspec.field(default_factory=dict)
    """AudioSettings overrides (besides source and pace)."""
    archive: dict[str, Any] = msgspec.field(default_factory=dict)
    """ArchiveSettings overrides (besides the directory)."""
    trace: bool = False
    rss_interval_s: float = 0.0
    """Seconds between RSS samples (0: only start and end)."""
    end_timeout_s: float = 60.0
    wait_go: bool = False
    """After the login, wait for a line on stdin before starting the visit (to start a fleet at once)."""


class Probe:
    def __init__(self, trace: bool) -> None:
        self.trace = trace
        self.frames: list[tuple[int, int, float]] = []
        """(start, samples, capture_time) of every frame the pipeline produced."""
        self.sends: list[tuple[float, int, int, int]] = []
        """(monotonic, seq, start, samples) of every audio message encoded for the wire."""
        self.acks: list[tuple[float, int]] = []
        self.readies: list[tuple[float, int]] = []
        self.lookback: list[tuple[int, int]] = []
        """(start, samples) of frames the voice gate passed only in a later block than their own (its pre-roll
        and onset look back): late by design, not by the audio path."""
        self.last_output = 0.0

    def install(self) -> None:
        encode_audio, decode = wire.encode_audio, wire.decode

        def traced_encode(seq: int, start: int, pcm: bytes) -> bytes:
            self.sends.append((time.monotonic(), seq, start, len(pcm) // 2))
            return encode_audio(seq, start, pcm)

        def traced_decode(text: str | bytes) -> Any:
            msg = decode(text)
            if isinstance(msg, wire.Ack):
                self.acks.append((time.monotonic(), msg.seq))
            elif isinstance(msg, wire.Ready):
                self.readies.append((time.monotonic(), msg.next_seq))
            return msg

        wire.encode_audio = traced_encode  # type: ignore[assignment]
        wire.decode = traced_decode  # type: ignore[assignment]

    def on_output(self, out: PipelineOutput) -> None:
        self.last_output = time.monotonic()
        if self.trace:
            self.frames.extend((f.start, f.samples, f.capture_time) for f in out.frames)
            first = out.frames[0].start if out.frames else None
            self.lookback.extend((e.frame.start, e.frame.samples) for e in out.events
                                 if isinstance(e, SegmentFrame) and (first is None or e.frame.start < first))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def sample_rss(interval: float, into: list[tuple[float, int]]) -> None:
    while True:
        await asyncio.sleep(interval)
        into.append((time.monotonic(), rss_bytes()))


def settings_for(cfg: AgentConfig) -> AgentSettings:
    work = Path(cfg.work_dir)
    keys = {"key_file": str(work / "keys" / "archive.key"), "recipient_file": str(work / "keys" / "archive.recipient")}
    return AgentSettings(
        audio=msgspec.convert({**cfg.audio, "source": cfg.source, "pace": cfg.pace}, AudioSettings),
        api=ApiSettings(api_url=cfg.api_url, speech_url=cfg.speech_url, email=cfg.email),
        archive=msgspec.convert({**keys, **cfg.archive, "directory": str(work / "archive")}, ArchiveSettings),
        upload=UploadSettings(queue_dir=str(work / "queue")),
        stream=msgspec.convert({"end_timeout_s": cfg.end_timeout_s, **cfg.stream}, StreamSettings),
    )


def upload_read_cpu_s(queue: UploadQueue) -> float:
    """CPU of reading what the upload sends (a sealed archive decrypted, every byte hashed), without the network."""
    [item] = queue.items()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    digest = hashlib.sha256()
    with queue.audio_of(item).open() as body:
        while block := body.read(256 * 1024):
            digest.update(block)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    assert item.sha256 == digest.hexdigest()
    return ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime


async def run(cfg: AgentConfig) -> dict[str, Any]:
    settings = settings_for(cfg)
    keys = None
    if settings.archive.encrypt:  # a device key of this agent's own, made before anything is measured
        keys = init_keys(settings.archive)[0]
    probe = Probe(cfg.trace)
    async with MediSyncClient(settings.api, Credentials(cfg.email, Secret(cfg.password))) as client:
        await client.login()
        patient = await client.add_patient(NewPatient(firstName="Bench", lastName="Agent", dateOfBirth="1970-01-01"))
        appointment = await client.add_appointment(
            NewAppointment(name="Benchmark visit", date="2026-01-01", time="09:00", patient_id=patient.id)
        )
        session = client.http.session
        assert session is not None
        token = session.token.reveal()

        async def token_provider(force_login: bool) -> str:
            return (await client.login()).token.reveal() if force_login else token

        if cfg.trace:
            probe.install()
        source = open_source(settings.audio.source, settings.audio, block_frames=cfg.block_frames)
        queue = UploadQueue(settings.upload, keys=keys)
        visit = Visit(settings, appointment_id=appointment.id, source=source, queue=queue,
                      token=token_provider, on_output=probe.on_output, duration_s=cfg.duration_s)  # fmt: skip
        rss: list[tuple[float, int]] = [(time.monotonic(), rss_bytes())]
        sampler = asyncio.create_task(sample_rss(cfg.rss_interval_s, rss)) if cfg.rss_interval_s > 0 else None
        if cfg.wait_go:
            print(json.dumps({"event": "ready"}), flush=True)
            await asyncio.to_thread(sys.stdin.readline)
        ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        print(json.dumps({"event": "started", "t": t0}), flush=True)
        summary = await visit.run()
        t1, ru1 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
        if sampler is not None:
            sampler.cancel()
        rss.append((t1, rss_bytes()))
    figures = summary.figures  # the snapshot `status`, the metrics and the visit summary read (agent.figures)
    stats = figures.stream
    return {
        "t0": t0,
        "t1": t1,
        "wall_s": t1 - t0,
        "cpu_s": ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime,
        "voluntary_switches": ru1.ru_nvcsw - ru0.ru_nvcsw,
        "involuntary_switches": ru1.ru_nivcsw - ru0.ru_nivcsw,
        "audio_s": summary.seconds_captured,
        "gated_s": summary.seconds_gated,
        "audio_done_s": probe.last_output - t0 if probe.last_output else None,
        "confirmed": summary.stream_confirmed,
        "mode": stats.mode if stats else None,
        "sent_messages": stats.sent_messages if stats else 0,
        "reconnects": stats.reconnects if stats else 0,
        "gap_samples": stats.gap_samples if stats else 0,
        "lost_samples": figures.lost_samples,
        "rss": rss,
        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "frames": probe.frames,
        "sends": probe.sends,
        "acks": probe.acks,
        "readies": probe.readies,
        "lookback": probe.lookback,
        "sealed": keys is not None,
        "upload_read_cpu_s": upload_read_cpu_s(queue),
    }


def main(argv: list[str]) -> int:
    cfg = msgspec.json.decode(Path(argv[0]).read_bytes(), type=AgentConfig)
    result = asyncio.run(run(cfg))
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
