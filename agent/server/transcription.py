"""Transcription off the event loop: one worker thread with a bounded backlog, and in-order delivery of results.

A recogniser takes about a tenth of real time on two cores (much more on a Pi or under emulation), so it never runs
on the server's event loop: acks (every 250 ms), ``closed`` and the REST API must keep flowing while it works.

- :class:`TranscriptionWorker` owns the transcriber, chosen and loaded in its thread at start. ``submit(span)``
  returns a future. The placeholder answers at once, without the thread. When ``max_backlog`` spans are already
  waiting, a new span gets the placeholder's honest time-span text instead of waiting (logged as a WARNING).
- :class:`TranscriptPipe` delivers the results of one stream in the order its spans were submitted, as each becomes
  ready, without ever making the caller wait for a pending one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Generic, TypeVar

from agent import SAMPLE_RATE
from agent.server.recognizer import TranscriberChoice, describe, select_transcriber
from agent.server.transcriber import PlaceholderTranscriber, Span, TranscribedSegment, Transcriber

log = logging.getLogger(__name__)

Result = asyncio.Future[list[TranscribedSegment]]
C = TypeVar("C")
MAX_BACKLOG = 64
"""Spans waiting for the recogniser before new ones get the placeholder (at most 15 s each: about 30 MB)."""


class TranscriptionWorker:
    def __init__(self, choice: TranscriberChoice, *, transcriber: Transcriber | None = None,
                 model_dir: Path | None = None, max_backlog: int = MAX_BACKLOG) -> None:  # fmt: skip
        self.choice = choice
        self.transcriber: Transcriber = transcriber or PlaceholderTranscriber()
        self._given = transcriber is not None
        self._model_dir = model_dir
        self.max_backlog = max_backlog
        self.backlog = 0
        """Spans submitted to the thread and not yet transcribed."""
        self.overflowed = 0
        """Spans that got the placeholder because the backlog was full."""
        self._fallback = PlaceholderTranscriber()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def name(self) -> str:
        """What transcribes: ``placeholder`` or the recogniser's description."""
        return "placeholder" if isinstance(self.transcriber, PlaceholderTranscriber) else describe(self.transcriber)

    async def start(self) -> None:
        """Choose and load the transcriber in the worker thread (raises ``RecogniserUnavailable`` for ``whisper``)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transcriber")
        if not self._given:
            loop = asyncio.get_running_loop()
            self.transcriber = await loop.run_in_executor(self._executor, select_transcriber, self.choice,
                                                          self._model_dir)  # fmt: skip

    def stop(self) -> None:
        """Drop what waits; a span being transcribed finishes in its thread (a second or two at most)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, span: Span) -> Result:
        loop = asyncio.get_running_loop()
        if self._executor is None or isinstance(self.transcriber, PlaceholderTranscriber):
            return self._at_once(loop, self.transcriber, span)
        if self.backlog >= self.max_backlog:
            self.overflowed += 1
            log.warning("transcription backlog full (%d spans): %.1f s of speech gets a time span, not words",
                        self.backlog, (span.end - span.start) / SAMPLE_RATE)  # fmt: skip
            return self._at_once(loop, self._fallback, span)
        self.backlog += 1
        future = loop.run_in_executor(self._executor, self._transcribe, span)
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Result) -> None:
        self.backlog -= 1

    @staticmethod
    def _at_once(loop: asyncio.AbstractEventLoop, transcriber: Transcriber, span: Span) -> Result:
        future: Result = loop.create_future()
        future.set_result(transcriber.transcribe(span))
        return future

    def _transcribe(self, span: Span) -> list[TranscribedSegment]:
        """In the worker thread. A recogniser failure costs that span its words, never the stream."""
        try:
            return self.transcriber.transcribe(span)
        except Exception:
            log.exception("the recogniser failed on a span; it gets a time span instead of words")
            return self._fallback.transcribe(span)


class TranscriptPipe(Generic[C]):
    """Results of one stream, delivered in submission order through ``deliver`` as soon as each is ready.

    Each result travels with a context of the caller's (``C``: e.g. the chunk it answers) given back to ``deliver``.
    """

    def __init__(self, deliver: Callable[[list[TranscribedSegment], C], Awaitable[None]]) -> None:
        self._deliver = deliver
        self._waiting: deque[tuple[Result, C]] = deque()
        self._lock = asyncio.Lock()
        self._pump: asyncio.Task[None] | None = None

    async def push(self, results: list[tuple[Result, C]]) -> None:
        """Queue ``results``; deliver those already done (in order) before returning, never wait for the rest."""
        self._waiting.extend(results)
        await self._deliver_done()
        if self._waiting and (self._pump is None or self._pump.done()):
            self._pump = asyncio.create_task(self._run_pump(), name="transcript-pipe")

    async def settled(self) -> None:
        """Wait until every result pushed so far has been delivered."""
        while self._pump is not None and not self._pump.done():
            await asyncio.shield(self._pump)

    def cancel(self) -> None:
        if self._pump is not None:
            self._pump.cancel()

    async def _deliver_done(self) -> None:
        async with self._lock:  # one deliverer at a time keeps the order
            while self._waiting and self._waiting[0][0].done():
                future, context = self._waiting.popleft()
                if future.cancelled():
                    continue
                try:
                    await self._deliver(future.result(), context)
                except Exception:  # one transcript lost, not the ones after it
                    log.exception("a transcript could not be delivered")

    async def _run_pump(self) -> None:
        while self._waiting:
            await asyncio.wait([self._waiting[0][0]])
            await self._deliver_done()
