"""The daemon's control socket on disk and on the wire: binding it safely, and serving one client connection.

Binding never deletes what it did not make: a regular file, folder, symbolic link or anything else that is not a
socket at ``daemon.control_socket`` is a configuration error (exit 78, one line, nothing touched). Only a socket
that nobody answers on (left by a daemon that died) is replaced; one that answers belongs to a running daemon.

Permissions, the one documented exception to "every path private": the socket is 0660 and a folder created for
it 0750, because the clinician's button (``medisync-agent visit start``) runs as a member of the service's group.
Who may talk is decided by these permissions, not by the protocol (:mod:`agent.control`).

A client connection gets one answer per request line, and an error answer, never silence or a dropped daemon, for
anything malformed: bytes that are not UTF-8, not JSON, nested too deeply, a line over
:data:`~agent.control.MAX_LINE_BYTES` (the connection is then closed: the rest of that line cannot be framed), or
a last line without its newline before the client's end of file.

An answer may also be a :data:`Streamer` (the ``follow`` request): the connection is then handed to it and carries
its lines until it returns; anything the client sends after that request ends the stream (it is not read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.archive.storage import make_dirs
from agent.control import MAX_LINE_BYTES, Response, encode_response, failure
from agent.errors import ConfigError, ControlError

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
SOCKET_DIR_MODE = 0o750
LISTEN_BACKLOG = 8


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    return "a device or other special file"


def _clear_stale(path: Path) -> None:
    """Remove a socket nobody answers on; refuse anything else that is in the way (nothing deleted)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"daemon.control_socket {path} is {_kind(info.st_mode)}, not a socket: refusing to replace "
                          "it (nothing was deleted); remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # left by a daemon that died
    else:
        raise ControlError(f"another medisync-agent daemon is already listening on {path}")
    finally:
        probe.close()


def bind_control_socket(path: Path) -> socket.socket:
    """A listening, non-blocking Unix socket at ``path``, mode 0660; parents created 0750 if missing."""
    try:
        make_dirs(path.parent, SOCKET_DIR_MODE)  # 0750 exactly, whatever the umask
    except OSError as exc:
        raise ControlError(f"cannot create the folder of the control socket {path}: {exc.strerror or exc}") from None
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)  # the socket is never reachable with wider permissions than 0660
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot create the control socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, SOCKET_MODE)
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


Streamer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""Serves the rest of a connection by itself (the event stream)."""
Answer = Callable[[bytes], Awaitable[Response | Streamer]]


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: Answer) -> None:
    """Answer each request line of one client with ``answer(line)`` until it hangs up; malformed input gets an
    error answer (see the module docstring). The reader's limit must be :data:`MAX_LINE_BYTES`."""
    try:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    writer.write(encode_response(failure("incomplete request: the line has no newline at its end")))
                    await writer.drain()
                break
            except asyncio.LimitOverrunError:
                writer.write(encode_response(failure(f"request longer than {MAX_LINE_BYTES} bytes")))
                await writer.drain()
                break
            answered = await answer(line)
            if not isinstance(answered, Response):
                await answered(reader, writer)
                break
            writer.write(encode_response(answered))
            await writer.drain()
    except ConnectionError:
        log.info("control client went away")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
