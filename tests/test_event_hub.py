"""The event stream over a real Unix socket (agent.event_hub + agent.control_socket), in-process: followers get
every change in order, a follower that never reads is dropped without ever holding up the publisher, the daemon's
stop reaches every follower, and the follower limit answers with an error line."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.control import MAX_LINE_BYTES, Follow, Response, encode_request, failure, parse_request
from agent.control_socket import Streamer, serve_connection
from agent.event_hub import EventHub
from agent.events import Facts
from tests.plugins.daemon import short_tmp_dir

STEP_DEADLINE_S = 20.0


class Counter:
    """Facts whose upload queue length the test sets: every new value is a visible change."""

    def __init__(self) -> None:
        self.n = 0

    def facts(self) -> Facts:
        return Facts(upload_queue=self.n)


async def start(hub: EventHub, path: Path) -> asyncio.Server:
    async def answer(line: bytes) -> Response | Streamer:
        if isinstance(parse_request(line), Follow):
            return hub.follow
        return failure("only follow here")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, answer)

    return await asyncio.start_unix_server(serve, path=str(path), limit=MAX_LINE_BYTES)


async def follower(path: Path, into: list[dict[str, object]]) -> asyncio.StreamWriter:
    """A reading follower: appends every line it receives to ``into`` (in a task) until the stream ends."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(encode_request(Follow()))

    async def read() -> None:
        while line := await reader.readline():
            into.append(json.loads(line))

    asyncio.get_running_loop().create_task(read())
    return writer


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP_DEADLINE_S
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def run(scenario: Callable[[Path], Awaitable[None]]) -> None:
    asyncio.run(scenario(short_tmp_dir() / "c.sock"))


def test_followers_get_every_change_and_one_that_never_reads_is_dropped() -> None:
    async def scenario(path: Path) -> None:
        counter = Counter()
        hub = EventHub(counter.facts, lambda: 1_800_000_000.0)
        server = await start(hub, path)
        got: list[list[dict[str, object]]] = [[], [], []]
        writers = [await follower(path, lines) for lines in got]  # kept: a collected writer closes its connection
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(str(path))
        stuck.sendall(encode_request(Follow()))  # ... and never reads
        await until(lambda: hub.followers == 4, f"four followers ({hub.followers})")
        published = 1
        while hub.dropped == 0:
            assert published < 100_000, "the follower that never reads was never dropped"
            for _ in range(32):  # at most half a follower's queue between looks
                counter.n += 1
                hub.refresh()  # synchronous: publishing cannot wait for anyone
                published += 1
            await until(lambda n=published: all(len(lines) == n for lines in got), f"{published} events")
        assert hub.followers == 3
        for lines in got:
            assert [e["seq"] for e in lines] == list(range(1, published + 1))  # nothing lost, nothing twice
            assert lines[0]["state"] == "idle" and lines[-1]["reason"] == f"{published - 1} visit(s) to upload"
        stuck.setblocking(False)
        received = await receive_until_closed(stuck)
        seqs = [json.loads(line)["seq"] for line in received.splitlines() if line.endswith(b"}")]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < published  # a prefix, then cut off
        print(f"dropped the stuck follower after {published} events; it had taken {len(seqs)}")
        server.close()
        del writers

    run(scenario)


async def receive_until_closed(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while True:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), STEP_DEADLINE_S)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def test_stop_reaches_every_follower_and_the_limit_is_an_error_line() -> None:
    async def scenario(path: Path) -> None:
        counter = Counter()
        hub = EventHub(counter.facts, lambda: 1_800_000_000.0, max_followers=2)
        server = await start(hub, path)
        got: list[list[dict[str, object]]] = [[], [], []]
        writers = [await follower(path, lines) for lines in got]
        await until(lambda: sum(map(len, got)) == 3, "three first lines")
        refused = [lines for lines in got if lines[0].get("ok") is False]
        assert len(refused) == 1 and refused[0] == [{"ok": False, "error": "too many followers (at most 2)"}]
        counter.n = 1
        hub.refresh()
        await hub.close(5.0)
        await until(lambda: all(len(lines) == 3 for lines in got if lines not in refused), "the last lines")
        for lines in got:
            if lines not in refused:
                assert [e.get("state") for e in lines[:2]] == ["idle", "uploading"]
                assert lines[2] == {"ok": False, "error": "the daemon is stopping"}
        server.close()
        del writers

    run(scenario)


def test_a_follower_that_hangs_up_is_forgotten() -> None:
    async def scenario(path: Path) -> None:
        counter = Counter()
        hub = EventHub(counter.facts, lambda: 1_800_000_000.0)
        server = await start(hub, path)
        lines: list[dict[str, object]] = []
        writer = await follower(path, lines)
        await until(lambda: hub.followers == 1 and len(lines) == 1, "the follower")
        writer.close()
        await until(lambda: hub.followers == 0, "the follower to be forgotten")
        server.close()

    run(scenario)
