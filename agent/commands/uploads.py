"""``medisync-agent uploads``: look at and work the visit upload queue by hand.

    medisync-agent uploads list                  every queued visit (state, appointment, size, attempts, next try,
                                                 error), recordings needing an appointment, quarantined files
    medisync-agent uploads retry [--now]         upload due items (all pending and blocked ones with --now)
    medisync-agent uploads add APPT FILE         queue a copy of a WAV, MP3 or M4A file for an appointment
    medisync-agent uploads assign FILE APPT      queue a recording that needs an appointment (see list)
    medisync-agent uploads purge                 delete local audio of confirmed uploads whose retention has expired

Every action first recovers what a crash or power cut left (agent.archive.recovery). The daemon uploads on its own;
a retry here takes the queue's lock, so the two never upload the same item at once. No action moves or deletes a
file the agent did not create.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import TextIO

from agent.archive import intake
from agent.archive.keys import load_archive_keys
from agent.archive.recovery import Orphan, Recovery, recover
from agent.archive.storage import Quarantined
from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadItem, UploadQueue
from agent.archive.upload_runner import DrainReport, Progress, Uploader, drain
from agent.audit_log import AuditLog, confirm_uploads, queue_listener
from agent.config import add_config_arguments, load_from_args
from agent.safe_text import clean_line, clean_text
from agent.settings import AgentSettings

EX_TEMPFAIL = 75
"""Exit code when uploads remain to be done (sysexits EX_TEMPFAIL: try again later)."""

UploaderFactory = Callable[[AgentSettings], contextlib.AbstractAsyncContextManager[Uploader]]


@contextlib.asynccontextmanager
async def medisync_uploader(settings: AgentSettings) -> AsyncIterator[Uploader]:
    """The real MediSync client with the configured login (password from file, systemd credential or env)."""
    from agent.api.medisync import MediSyncClient  # imported here: `uploads list` must work without network deps
    from agent.api.secret import load_credentials

    async with MediSyncClient(
        settings.api, load_credentials(settings.api), max_upload_bytes=settings.upload.max_bytes
    ) as client:
        yield client


uploader_factory: UploaderFactory = medisync_uploader
"""How ``retry`` gets its uploader; the daemon and tests may wire another."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "uploads",
        help="list and retry queued visit uploads",
        description="Look at and work the queue of visit recordings waiting to be uploaded to MediSync.",
        epilog="Nothing here deletes audio that MediSync has not confirmed, nor any file the agent did not create; "
               "dead letters stay in <queue_dir>/dead, unreadable files in the quarantine folders.",
    )  # fmt: skip
    actions = parser.add_subparsers(dest="uploads_action", metavar="ACTION")
    show = actions.add_parser(
        "list",
        help="show queued, blocked, done and dead-lettered uploads",
        description="Show every item of the upload queue, oldest first; then recordings that need an appointment "
                    "(with the command that assigns one) and files quarantined because they could not be read.",
    )  # fmt: skip
    show.set_defaults(func=cmd_list)
    retry = actions.add_parser(
        "retry",
        help="upload the items that are due now",
        description="Upload due items now, showing progress; exit 75 while items remain pending or blocked.",
    )
    retry.add_argument(
        "--now", action="store_true", help="try every pending and blocked item now, ignoring backoff and blocked timers"
    )
    retry.set_defaults(func=cmd_retry)
    add = actions.add_parser(
        "add",
        help="queue a copy of a recording for upload",
        description="Queue a recording for an appointment: a regular WAV, MP3 or M4A file (judged by its content) "
                    "within the upload limit. The agent uploads a private copy; your file is never moved or deleted. "
                    "Bad input is refused with one line and exit code 65.",
    )  # fmt: skip
    add.add_argument("appointment_id", help="MediSync appointment id")
    add.add_argument("wav", type=Path, metavar="FILE", help="the recording (WAV, MP3 or M4A)")
    add.set_defaults(func=cmd_add)
    assign = actions.add_parser(
        "assign",
        help="queue a recording that needs an appointment",
        description="Queue a recording that 'uploads list' shows as needing an appointment (audio a power cut "
                    "left without its visit record) for an appointment; it then uploads like any other.",
    )  # fmt: skip
    assign.add_argument("file", type=Path, help="the recording, as 'uploads list' names it")
    assign.add_argument("appointment_id", help="MediSync appointment id")
    assign.set_defaults(func=cmd_assign)
    purge = actions.add_parser(
        "purge",
        help="delete audio of confirmed uploads past their retention",
        description="Delete local audio of uploads MediSync confirmed, once retention expired.",
    )
    purge.set_defaults(func=cmd_purge)
    for sub in (show, retry, add, assign, purge):
        add_config_arguments(sub)

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


QueueAndRecovery = tuple[AgentSettings, UploadQueue, Recovery]


def open_queue(args: argparse.Namespace, settings: AgentSettings | None = None) -> QueueAndRecovery:
    """Settings, the queue, and what recovering the storage found (done first by every action)."""
    settings = load_from_args(args).settings if settings is None else settings
    queue = UploadQueue(settings.upload, keys=load_archive_keys(settings.archive, identity=True))
    audit = AuditLog.for_settings(settings)
    queue.on_event = queue_listener(audit)  # upload confirmed, deleted: audited
    recovery = recover(Path(settings.archive.directory), queue)
    confirm_uploads(audit, queue.items())
    return settings, queue, recovery


def report_recovery(recovery: Recovery, err: TextIO) -> None:
    """What the start recovered or found, one line each, for commands that do not list it in full."""
    for item in recovery.queued:
        print(f"queued an interrupted earlier visit for upload ({item.item_id[:8]})", file=err)
    for name in recovery.discarded:
        print(f"removed {name}: a recording without any audio", file=err)
    for problem in recovery.problems:
        print(f"could not recover now: {problem}", file=err)
    if recovery.orphans:
        print(f"{len(recovery.orphans)} recording(s) need an appointment: see 'medisync-agent uploads list'", file=err)
    if recovery.quarantined:
        print(f"{len(recovery.quarantined)} unreadable file(s) quarantined: see 'medisync-agent uploads list'",
              file=err)  # fmt: skip


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def format_rows(items: list[UploadItem], now: float) -> list[str]:
    header = f"{'ITEM':8}  {'STATE':7}  {'APPOINTMENT':24}  {'SIZE':>9}  {'TRIES':>5}  {'NEXT / DONE':19}  LAST ERROR"
    rows = [header]
    for item in items:
        if item.state is ItemState.DONE:
            when = _when(item.uploaded_at)
        elif item.state is ItemState.DEAD:
            when = "-"
        else:
            when = "now" if item.next_attempt_at <= now else _when(item.next_attempt_at)
        error = item.dead_reason if item.state is ItemState.DEAD else item.last_error
        rows.append(
            f"{item.item_id[:8]:8}  {item.state.value:7}  {item.appointment_id[:24]:24}  {_mb(item.size):>9}  "
            f"{item.attempts:>5}  {when:19}  {clean_line(error or '-')}"
        )
    return rows


def format_orphans(orphans: list[Orphan]) -> list[str]:
    rows = ["NEEDS AN APPOINTMENT (audio without a visit record; queue it with the command shown):"]
    for orphan in orphans:
        length = "-" if orphan.seconds is None else f"{orphan.seconds:.1f} s"
        rows.append(f"  {orphan.path.name}  {_mb(orphan.size)}  {length}")
        rows.append(f"    medisync-agent uploads assign {orphan.path} APPOINTMENT")
    return rows


def format_quarantine(files: list[Quarantined]) -> list[str]:
    rows = ["QUARANTINED (could not be read; kept for a person, never uploaded or deleted by the agent):"]
    rows += [f"  {q.path}  {q.reason}" for q in files]
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    _, queue, recovery = open_queue(args)
    for line in recovery.problems:
        print(f"could not recover now: {line}", file=sys.stderr)
    items = queue.items() + queue.dead_items()
    sections = []
    if items:
        sections.append("\n".join(format_rows(items, time.time())))
    if recovery.orphans:
        sections.append("\n".join(format_orphans(recovery.orphans)))
    if recovery.quarantined:
        sections.append("\n".join(format_quarantine(recovery.quarantined)))
    print(clean_text("\n\n".join(sections)) if sections else f"upload queue {queue.directory} is empty")
    return 0


class ProgressView:
    """Upload progress on stderr: a redrawn bar on a terminal, a line every 10 % otherwise (logs, journal)."""

    def __init__(self, out: TextIO, *, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self._label = ""
        self._last_decile = -1

    def for_item(self, item: UploadItem) -> Progress:
        self._label, self._last_decile = item.item_id[:8], -1
        return self.update

    def update(self, sent: int, total: int) -> None:
        fraction = sent / total if total > 0 else 1.0
        if self.tty:
            filled = int(fraction * 30)
            bar = "#" * filled + "." * (30 - filled)
            self.out.write(f"\r{self._label} [{bar}] {fraction:4.0%} {_mb(sent)} / {_mb(total)}")
            if sent >= total:
                self.out.write("\n")
            self.out.flush()
            return
        decile = int(fraction * 10)
        if decile > self._last_decile:
            self._last_decile = decile
            print(f"{self._label}: {fraction:.0%} of {_mb(total)} sent", file=self.out, flush=True)


def summarize(report: DrainReport) -> str:
    if report.busy:
        return "another process (the daemon?) is uploading right now; nothing tried"
    parts = [
        f"{len(report.uploaded)} uploaded",
        f"{len(report.failed)} failed (will retry)",
        f"{len(report.blocked)} blocked (no subscription)",
        f"{len(report.dead)} dead-lettered",
    ]
    text = ", ".join(parts)
    if report.stopped_early:
        text += "; stopped early: MediSync refused or is unreachable, the rest waits"
    return text


async def retry_queue(
    queue: UploadQueue, settings: AgentSettings, *, force: bool, factory: UploaderFactory, out: TextIO
) -> DrainReport:
    view = ProgressView(out)
    async with factory(settings) as uploader:
        return await drain(queue, uploader, force=force, progress_for=view.for_item)


def cmd_retry(args: argparse.Namespace) -> int:
    settings, queue, recovery = open_queue(args)
    report_recovery(recovery, sys.stderr)
    report = asyncio.run(retry_queue(queue, settings, force=args.now, factory=uploader_factory, out=sys.stderr))
    waiting = [i for i in queue.items() if i.state in (ItemState.PENDING, ItemState.BLOCKED)]
    print(summarize(report) + (f"; {len(waiting)} still waiting" if waiting else ""))
    return EX_TEMPFAIL if report.busy or waiting else 0


def cmd_add(args: argparse.Namespace) -> int:
    settings = load_from_args(args).settings
    appointment_id = intake.valid_appointment_id(args.appointment_id)  # bad input: one line, nothing touched
    with intake.operator_file(args.wav, settings.upload.max_bytes) as source:
        _, queue, recovery = open_queue(args, settings)
        report_recovery(recovery, sys.stderr)
        item = intake.add_copy(queue, Path(settings.archive.directory), appointment_id, source)
    print(f"queued a copy of {args.wav} as item {item.item_id[:8]} ({item.state.value}, {_mb(item.size)}); "
          "the file itself is left as it is")  # fmt: skip
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    settings = load_from_args(args).settings
    intake.valid_appointment_id(args.appointment_id)
    _, queue, recovery = open_queue(args, settings)
    report_recovery(recovery, sys.stderr)
    item = intake.assign(queue, Path(settings.archive.directory), args.file, args.appointment_id)
    print(f"queued {Path(item.audio_path).name} as item {item.item_id[:8]} for appointment {item.appointment_id}; "
          "the daemon uploads it (or run: medisync-agent uploads retry)")  # fmt: skip
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    _, queue, recovery = open_queue(args)
    report_recovery(recovery, sys.stderr)
    print(f"{queue.purge_expired()} expired recording(s) deleted")
    return 0
