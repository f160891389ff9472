"""``capture_running(capture, timeout_s)``: a :class:`agent.device_watch.Capture` started on an event loop of its
own (a background thread), for tests whose own code is synchronous; stopped (and the loop ended) on exit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from agent.device_watch import Capture


@contextmanager
def capture_running(capture: Capture, timeout_s: float) -> Iterator[Capture]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="capture-loop", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(capture.start(timeout_s), loop).result(timeout_s + 30)
        try:
            yield capture
        finally:
            asyncio.run_coroutine_threadsafe(capture.stop(), loop).result(60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
