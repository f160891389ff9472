"""``medisync-agent run``: one visit in the foreground, with the live transcript on the terminal.

Until Ctrl-C / SIGTERM or ``--duration``: capture, archive and stream; then finish the WAV and queue it, wait for
the speech server to confirm the live stream (as long as its backlog needs at ``stream.replay_speed``, at most
``stream.drain_max_s``, with a line every few seconds; a second Ctrl-C stops waiting) and upload the WAV at once
with a progress bar. If the upload cannot finish now it stays queued (exit 75) and the daemon or
``medisync-agent uploads retry`` delivers it later. If part of the visit could not be archived (disk full, I/O
error: capture and the live stream went on, the part on disk was queued at once) the summary names the missing
stretch and the exit code is 73, even though the visit otherwise completed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from agent.account import prepare_visit, token_provider
from agent.api.medisync import MediSyncClient
from agent.api.secret import load_credentials
from agent.archive.keys import load_archive_keys
from agent.archive.recovery import recover
from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadQueue
from agent.archive.upload_runner import drain
from agent.audio.mic_monitor import MicHealth, tick_while
from agent.audio.pipeline import PipelineOutput
from agent.audio.sources import open_source
from agent.audit_log import AuditLog, confirm_uploads, queue_listener
from agent.commands._args import duration_seconds
from agent.commands.uploads import EX_TEMPFAIL, ProgressView, report_recovery
from agent.config import add_config_arguments, load_from_args
from agent.consent import Consent, decide, parse_consent, record_declined
from agent.errors import EX_CANTCREAT, InputError
from agent.figures import VisitSummary
from agent.pause_key import pause_key as pause_key_view
from agent.settings import AgentSettings
from agent.terminal import TranscriptPrinter, format_summary
from agent.visit import Visit, refuse_second_recording


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="record one visit: live transcript, archive, upload",
        description=(
            "Record one visit: capture the source, show MediSync's live transcript, archive the whole visit as a "
            "WAV file and upload it when the visit ends (Ctrl-C or --duration). Audio is never lost: if MediSync "
            "cannot be reached the recording stays queued for upload. A full disk does not end the visit: capture "
            "and the live stream go on, the part already on disk is queued at once, the archive resumes when space "
            "returns, and the summary names the stretch missing from the recording. Exit codes: 0 recorded and "
            "uploaded; 73 part of the visit is missing from the recording (disk full, I/O error), the rest was "
            "recorded and queued; 75 recorded, upload still pending (retried later); 77 visit.require_consent is "
            "on and --consent gave no answer (nothing recorded); 65 bad input, e.g. an unknown --consent value. "
            "The p key (or a line with p on standard input) pauses the visit for privacy and resumes it: silence in "
            "the recording, nothing sent, the pause in the audit trail (medisync-agent audit)."
        ),
    )
    add_config_arguments(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--appointment", metavar="ID", help="MediSync appointment id the recording belongs to")
    which.add_argument("--new-appointment-for", metavar="PATIENT_ID",
                       help="create a new appointment for this patient id and record it")  # fmt: skip
    parser.add_argument("--source", help="mic, mic:<name>, file:<path.wav> or synth:<recipe> (default: config)")
    parser.add_argument("--pace", choices=["realtime", "fast"], help="file/synth sources: pacing (default realtime)")
    parser.add_argument("--duration", metavar="S",
                        help="stop after S seconds of audio (a finite number, at least one 20 ms frame)")  # fmt: skip
    parser.add_argument("--api-url", help="MediSync REST base URL, e.g. https://app.medisync.me/api")
    parser.add_argument("--speech-url", help="speech socket base URL, e.g. wss://speech.medisync.me")
    parser.add_argument("--archive-dir", help="folder for the visit WAV files")
    parser.add_argument("--queue-dir", help="folder of the upload queue")
    parser.add_argument("--no-stream", action="store_true", help="record and upload without a live transcript")
    parser.add_argument("--consent", metavar="ANSWER",
                        help="the patient's answer: given, declined (nothing is recorded, only the audit line) or "
                             "not-asked; required by visit.require_consent")  # fmt: skip
    parser.set_defaults(func=cmd_run)


def _flags(args: argparse.Namespace) -> dict[str, object]:
    pairs = {
        "audio.source": args.source,
        "audio.pace": args.pace,
        "api.api_url": args.api_url,
        "api.speech_url": args.speech_url,
        "archive.directory": args.archive_dir,
        "upload.queue_dir": args.queue_dir,
        "stream.enabled": False if args.no_stream else None,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def cmd_run(args: argparse.Namespace) -> int:
    for flag, value in (("--appointment", args.appointment), ("--new-appointment-for", args.new_appointment_for)):
        if value is not None and not value.strip():
            raise InputError(f"{flag} needs a MediSync id, not an empty string")
    settings = load_from_args(args, _flags(args)).settings
    consent = decide(parse_consent(args.consent), required=settings.visit.require_consent)
    if consent == "declined":
        visit_id = record_declined(AuditLog.for_settings(settings), args.appointment)
        print(f"consent declined: nothing recorded (audit trail: visit {visit_id})", file=sys.stderr)
        return 0
    duration_s = duration_seconds(args.duration, frame_ms=settings.audio.frame_ms)
    credentials = load_credentials(settings.api)
    load_archive_keys(settings.archive, identity=True)  # a missing or wrong device key: exit 78 before anything

    async def main() -> int:
        async with MediSyncClient(settings.api, credentials, max_upload_bytes=settings.upload.max_bytes) as client:
            access = await prepare_visit(client, args.appointment, patient_id=args.new_appointment_for)
            refuse_second_recording(UploadQueue(settings.upload), access.appointment_id)
            print(f"recording appointment {access.appointment_id}; Ctrl-C ends the visit", file=sys.stderr)
            summary, state = await record_and_upload(
                settings, client, access.appointment_id, stream=access.stream_allowed,
                duration_s=duration_s, out=sys.stdout, err=sys.stderr, consent=consent, pause_key=True,
            )  # fmt: skip
            print(format_summary(summary, state), file=sys.stderr)
            if summary.archive_missing:  # the visit completed, but its recording lacks a stretch
                return EX_CANTCREAT
            return 0 if state is ItemState.DONE else EX_TEMPFAIL

    return asyncio.run(main())


async def record_and_upload(
    settings: AgentSettings,
    client: MediSyncClient,
    appointment_id: str,
    *,
    stream: bool,
    duration_s: float | None,
    out: TextIO,
    err: TextIO,
    on_output: Callable[[PipelineOutput], None] | None = None,
    on_visit: Callable[[Visit], None] | None = None,
    consent: Consent = "not-asked",
    pause_key: bool = False,
) -> tuple[VisitSummary, ItemState]:
    """Run one visit (stopping on SIGINT/SIGTERM), then upload its recording once; returns the item's state."""
    queue = UploadQueue(settings.upload, keys=load_archive_keys(settings.archive, identity=True))
    audit = AuditLog.for_settings(settings)
    queue.on_event = queue_listener(audit)
    report_recovery(await asyncio.to_thread(recover, Path(settings.archive.directory), queue), err)
    await asyncio.to_thread(confirm_uploads, audit, queue.items())
    refuse_second_recording(queue, appointment_id)
    source = open_source(settings.audio.source, settings.audio)
    health = MicHealth(settings.mic) if _is_microphone(settings.audio.source) else None
    made: list[Visit] = []
    feed = on_output if health is None else _feeding(health, on_output, lambda: bool(made) and made[0].paused)
    visit = Visit(settings, appointment_id=appointment_id, source=source, queue=queue,
                  token=token_provider(client) if stream else None, on_transcript=TranscriptPrinter(out),
                  on_output=feed, duration_s=duration_s, on_stream_progress=_drain_progress(err),
                  consent=consent, audit=audit)  # fmt: skip
    made.append(visit)
    if on_visit is not None:
        on_visit(visit)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, visit.interrupt)
    ticker, raised, stop_listening = None, set[str](), None
    if health is not None:  # a deaf microphone is logged (WARNING) as soon as it is noticed
        health.watch_speech(True)
        stop_listening = health.add_listener(lambda change: raised.add(change.problem) if change.raised else None)
        ticker = asyncio.create_task(tick_while(health, lambda: visit.recording), name="mic-health")
    try:
        with pause_key_view(visit, err) if pause_key else contextlib.nullcontext():
            summary = await visit.run()
    finally:
        if ticker is not None and health is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            health.watch_speech(False)
        if stop_listening is not None:
            stop_listening()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if health is not None:  # the detector's own problem names, as the daemon's status and metrics show them
        summary = dataclasses.replace(summary, mic_problems=tuple(sorted(raised)))
    view = ProgressView(err)
    await drain(queue, client, progress_for=view.for_item)
    final = queue.find(appointment_id)
    return summary, final.state if final is not None else summary.upload.state


def _is_microphone(spec: str) -> bool:
    """Only microphones are watched for going deaf: file and synthetic sources cannot (and the bundled
    dialogue's pauses are digital silence)."""
    return spec == "mic" or spec.startswith(("mic:", "mic@"))


def _feeding(health: MicHealth, on_output: Callable[[PipelineOutput], None] | None,
             paused: Callable[[], bool]) -> Callable[[PipelineOutput], None]:  # fmt: skip
    """The microphone detector hears the visit's output, except while it is paused (silence there on purpose)."""
    was_paused = False

    def feed(out: PipelineOutput) -> None:
        nonlocal was_paused
        if paused() != was_paused:
            was_paused = not was_paused
            health.watch_speech(not was_paused)
        if not was_paused:
            health.feed_output(out)
        if on_output is not None:
            on_output(out)

    return feed


def _drain_progress(err: TextIO) -> Callable[[float], None]:
    """After the visit: one line every few seconds while the speech server confirms the live stream's backlog."""

    def show(left_s: float) -> None:
        print(f"live stream: {left_s:.1f} s of audio still to be confirmed by the speech server", file=err)

    return show
