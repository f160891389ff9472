"""Micro-benchmark of the speech socket adapter: event-loop CPU per message, loopback to the local server.

    python benchmarks/ws_cpu.py [SECONDS] [BLOCK_MS]           # this checkout's agent
    PYTHONPATH=/work/main python benchmarks/ws_cpu.py 30 100   # another checkout's agent, same venv

The server runs as its own process (``benchmarks.env.server_process``), so only the client is measured. A
:class:`~agent.stream.SpeechStream` in this process is fed one block of gated speech (20 ms frames) every BLOCK_MS
on its own event loop, as the recorder feeds it; after a 3 s warm-up the loop thread's CPU (``thread_time``) and
its voluntary context switches (wake-ups) are read over SECONDS. Printed: CPU microseconds per message, the
loop thread's CPU-s per audio-hour (user and system from kernel ticks), wake-ups per second, messages, acks
and the agent module measured.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import agent
from agent.api.medisync import MediSyncClient
from agent.api.models import NewAppointment, NewPatient
from agent.api.secret import Credentials, Secret
from agent.audio.types import Frame
from agent.audio.vad import SegmentFrame, SegmentStart
from agent.settings import ApiSettings, StreamSettings
from agent.stream import SpeechStream
from benchmarks.env import CLK_TCK, EMAIL, PASSWORD, ServerProc, server_process

FRAME = 320


def _switches() -> int:
    with open("/proc/thread-self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))


def _user_system_s() -> tuple[float, float]:
    """The calling thread's user and system CPU seconds (kernel ticks)."""
    with open("/proc/thread-self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


async def _login(srv: ServerProc) -> tuple[str, str]:
    api = ApiSettings(api_url=srv.api_url, speech_url=srv.speech_url, email=EMAIL)
    async with MediSyncClient(api, Credentials(EMAIL, Secret(PASSWORD))) as client:
        token = (await client.login()).token.reveal()
        patient = await client.add_patient(NewPatient(firstName="Bench", lastName="Socket", dateOfBirth="1970-01-01"))
        appointment = await client.add_appointment(
            NewAppointment(name="Benchmark visit", date="2026-01-01", time="09:00", patient_id=patient.id)
        )
        return token, appointment.id


async def _run(srv: ServerProc, seconds: float, block_ms: int) -> None:
    token, appointment = await _login(srv)

    async def tokens(force: bool) -> str:
        return token

    stream = SpeechStream(StreamSettings(message_ms=block_ms), speech_url=srv.speech_url, appointment_id=appointment,
                          token=tokens)  # fmt: skip
    await stream.start()
    pcm = (np.random.default_rng(1).standard_normal(FRAME) * 6000).astype("<i2").tobytes()
    per_block = block_ms * 16 // FRAME
    loop = asyncio.get_running_loop()
    t = 0
    stream.feed([SegmentStart(0)])
    warm_end, end = loop.time() + 3.0, loop.time() + 3.0 + seconds
    marks: list[tuple[float, int, int, int, tuple[float, float]]] = []
    next_at = loop.time()
    while loop.time() < end:
        if not marks and loop.time() >= warm_end:
            s = stream.stats
            marks.append((time.thread_time(), _switches(), s.sent_messages, s.acked_messages, _user_system_s()))
        events = []
        for _ in range(per_block):
            events.append(SegmentFrame(Frame(t, pcm)))
            t += FRAME
        stream.feed(events)
        next_at += block_ms / 1000
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    s = stream.stats
    cpu, sw, sent, acked = time.thread_time(), _switches(), s.sent_messages, s.acked_messages
    user, system = _user_system_s()
    c0, w0, s0, a0, (u0, y0) = marks[0]
    await stream.close()
    messages = max(1, sent - s0)
    print(f"agent={Path(agent.__file__).parent.parent} block_ms={block_ms} seconds={seconds:g} messages={messages} "
          f"acked={acked - a0} cpu_us_per_message={(cpu - c0) / messages * 1e6:.0f} "
          f"loop_cpu_s_per_hour={(cpu - c0) / seconds * 3600:.1f} (user {(user - u0) / seconds * 3600:.1f}, system "
          f"{(system - y0) / seconds * 3600:.1f}) wakeups_per_s={(sw - w0) / seconds:.1f}")


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    block_ms = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    with tempfile.TemporaryDirectory() as tmp, server_process(Path(tmp)) as srv:
        asyncio.run(_run(srv, seconds, block_ms))


if __name__ == "__main__":
    main()
