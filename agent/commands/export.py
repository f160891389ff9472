"""``medisync-agent export``: decrypt one sealed recording into the plaintext file IT asked for."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from agent.archive.age import Identity
from agent.archive.keys import load_identity
from agent.archive.sealed import READ_BLOCK, is_sealed, open_plain
from agent.archive.storage import describe_os_error, write_all
from agent.config import add_config_arguments, load_from_args
from agent.errors import AgentError, ArchiveError, InputError

log = logging.getLogger("agent.export")

DESCRIPTION = """\
Decrypt a sealed recording (a visit archive, its MP3, an operator's copy, a dead letter) with the device key and
write its plaintext to OUT: the exact WAV (or MP3) the upload sends, mode 0600. OUT must not exist; it is the only
plaintext file written. A damaged recording stops the export at the first damaged chunk and OUT is removed: run
'medisync-agent repair FILE' first to keep its intact part. Every export is logged (file name and size only).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("export", help="decrypt a sealed recording into a plaintext file",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, metavar="FILE", help="the sealed recording")
    parser.add_argument("--out", type=Path, required=True, metavar="PLAIN.wav", help="the plaintext file to create")
    add_config_arguments(parser)
    parser.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    settings = load_from_args(args).settings
    source: Path = args.file
    if not source.is_file():
        raise InputError(f"{source}: no such recording")
    identity = load_identity(settings.archive) if is_sealed(source) else None  # a missing key: exit 78
    size = export(source, args.out, identity)
    log.warning("export: %s decrypted (%d bytes of plaintext written)", source.name, size)
    print(f"exported {source.name} ({size} bytes) to {args.out}")
    return 0


def export(source: Path, out: Path, identity: Identity | None) -> int:
    """Write the plaintext of ``source`` to the new file ``out`` (0600); returns its size. Nothing is left at
    ``out`` if it fails."""
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise InputError(f"{out} exists: choose another name (export never overwrites)") from None
    except OSError as exc:
        raise ArchiveError(f"cannot create {out}: {describe_os_error(exc)}") from exc
    size = 0
    try:
        os.fchmod(fd, 0o600)  # plaintext patient audio: private whatever the umask
        with open_plain(source, identity) as reader:
            while block := reader.read(READ_BLOCK):
                write_all(fd, block)
                size += len(block)
        os.fsync(fd)
    except (AgentError, OSError) as exc:
        os.close(fd)
        out.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ArchiveError(f"cannot export {source.name}: {describe_os_error(exc)}") from exc
        raise
    os.close(fd)
    return size
