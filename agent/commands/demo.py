"""``medisync-agent demo``: the whole product in under a minute, with nothing to set up.

Starts the local MediSync server in-process, creates a demo user, patient and appointment, streams the bundled
doctor/patient dialogue paced in real time with the live transcript on screen, has the server cut the connection
once mid-visit so the replay shows, ends the visit, uploads the WAV with a progress bar, and prints a summary in
which "lost" and "duplicated" are measured by comparing what the server stored with what the voice gate passed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from agent.account import prepare_visit
from agent.api.medisync import MediSyncClient
from agent.api.models import NewAppointment, NewPatient
from agent.api.secret import Credentials, Secret
from agent.archive.keys import init_keys
from agent.archive.storage import ensure_private_dir
from agent.archive.upload_policy import ItemState
from agent.audio.pipeline import PipelineOutput
from agent.audio.vad import SegmentFrame
from agent.audit import StreamAudit, audit_stream
from agent.commands._extras import require_server
from agent.commands.demo_words import transcript_check
from agent.commands.run import record_and_upload
from agent.settings import AgentSettings, ApiSettings, ArchiveSettings, AudioSettings, UploadSettings
from agent.terminal import format_summary

DIALOGUE = Path(__file__).resolve().parent.parent / "data" / "dialogue.wav"
DEMO_EMAIL = "demo.doctor@example.org"
DEMO_PASSWORD = "demo-password-not-secret"
CUT_AFTER_MESSAGES = {"realtime": 120, "fast": 15}
"""The server drops the first connection after this many binary messages: about a third into the visit."""
OUTAGE_S = 4.0
"""After the cut the server refuses connections this long, as flaky Wi-Fi would: the audio captured meanwhile
waits in the ring and is replayed (paced) when the agent gets back in."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a complete visit against a local MediSync server (no setup needed)",
        description=(
            "Run a whole visit against a local MediSync server started in-process: the bundled doctor/patient "
            "dialogue is streamed in real time with a live transcript, the connection is cut once to show the "
            "replay, and the recording is uploaded. The summary scores the server's transcript against the "
            "dialogue's script (word error rate). Exits 0 only if the server holds every gated sample exactly "
            "once, no utterance was transcribed twice and the upload is confirmed."
        ),
    )
    parser.add_argument("--pace", choices=["realtime", "fast"], default="realtime",
                        help="play the dialogue in real time (default) or as fast as possible")  # fmt: skip
    parser.add_argument("--keep", metavar="DIR", help="keep the demo's server data, archive and queue in DIR")
    parser.add_argument("--no-cut", action="store_true", help="do not cut the connection mid-visit")
    parser.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    require_server("demo")
    if args.keep:
        root = ensure_private_dir(Path(args.keep))  # it will hold a recording and the server's secret
        return asyncio.run(run_demo(root, pace=args.pace, cut=not args.no_cut))
    with tempfile.TemporaryDirectory(prefix="medisync-demo-") as tmp:
        return asyncio.run(run_demo(Path(tmp), pace=args.pace, cut=not args.no_cut))


def demo_settings(root: Path, api_url: str, speech_url: str, pace: str) -> AgentSettings:
    return AgentSettings(
        audio=AudioSettings(source=f"file:{DIALOGUE}", pace="fast" if pace == "fast" else "realtime"),
        api=ApiSettings(api_url=api_url, speech_url=speech_url, email=DEMO_EMAIL),
        archive=ArchiveSettings(directory=str(root / "archive"), key_file=str(root / "keys" / "archive.key"),
                                recipient_file=str(root / "keys" / "archive.recipient")),
        upload=UploadSettings(queue_dir=str(root / "queue")),
    )


async def run_demo(root: Path, *, pace: str, cut: bool) -> int:
    from agent.server import ServerSettings, ServerThread  # the [server] extra: imported only to run the demo

    err = sys.stderr
    server = ServerThread(ServerSettings(data_dir=str(root / "server")))
    urls = server.start()
    try:
        server.server.add_user(DEMO_EMAIL, DEMO_PASSWORD)
        print(f"local MediSync server: {urls.api_url} and {urls.speech_url}", file=err)
        settings = demo_settings(root, urls.api_url, urls.speech_url, pace)
        await asyncio.to_thread(_ensure_device_key, settings.archive)
        credentials = Credentials(DEMO_EMAIL, Secret(DEMO_PASSWORD))
        async with MediSyncClient(settings.api, credentials) as client:
            appointment_id = await _demo_appointment(client)
            if cut:
                server.server.knobs.drop_after(CUT_AFTER_MESSAGES[pace], connections=1, outage_s=OUTAGE_S)
            gated: list[tuple[int, bytes]] = []
            print("streaming the bundled dialogue; live transcript:", file=err)
            summary, state = await record_and_upload(
                settings, client, appointment_id, stream=True, duration_s=None, out=sys.stdout, err=err,
                on_output=lambda out: _collect_gated(out, gated),
            )  # fmt: skip
            held = await client.recording_digest(appointment_id)
        audit = audit_stream(gated, server.server.session_audio(summary.session_id).runs)
        identical = held.sha256 == summary.upload.sha256
        words = await transcript_check(server, summary.session_id, appointment_id)
        for line in words.late_lines:
            print(line, flush=True)
        print("\nvisit summary", file=err)
        print(format_summary(summary, state, {**_audit_rows(audit, identical), **words.rows}), file=err)
        ok = audit.exact and state is ItemState.DONE and identical and words.repeated == 0
        print("demo: OK" if ok else "demo: FAILED (see the summary above)", file=err)
        return 0 if ok else 1
    finally:
        server.stop()


def _ensure_device_key(archive: ArchiveSettings) -> None:
    """The demo's own device key (kept with --keep): its recordings are sealed as on a device."""
    if not Path(archive.key_file).exists():
        init_keys(archive)


async def _demo_appointment(client: MediSyncClient) -> str:
    await client.login()
    patient = await client.add_patient(NewPatient(firstName="Demo", lastName="Patient", dateOfBirth="1970-01-01"))
    appointment = await client.add_appointment(
        NewAppointment(name="Demo visit", date="2026-01-01", time="09:00", patient_id=patient.id)
    )
    access = await prepare_visit(client, appointment.id)
    return access.appointment_id


def _collect_gated(out: PipelineOutput, gated: list[tuple[int, bytes]]) -> None:
    gated.extend((e.frame.start, e.frame.pcm) for e in out.events if isinstance(e, SegmentFrame))


def _audit_rows(audit: StreamAudit, identical: bool) -> dict[str, str]:
    return {
        "server-stored vs gated samples": f"{audit.stored_samples} / {audit.expected_samples}",
        "lost samples": str(audit.lost),
        "duplicated samples": str(audit.duplicated),
        "mismatched samples": str(audit.mismatched + audit.unexpected),
        "uploaded file byte-identical": "yes" if identical else "NO",
    }
