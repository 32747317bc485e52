"""The server's side of the generation engine (qaforge/generation.py): requests queue
for one worker thread, which runs them in a continuously growing and shrinking batch.

Each request carries the model that built its prompt (system prompt, passages, token
ids). A batch admits only requests of its own model; after an alias move, requests
for the new version wait until the old version's batch is done, and a request built
by the old version is still answered by it, so an answer never mixes versions.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from qaforge.generation import Batch, Completion, Job, Sampling, Weights

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request(Job):
    """A job whose results go back to the event loop of the request that made it."""

    loop: asyncio.AbstractEventLoop = field(kw_only=True)
    future: asyncio.Future[Completion] | None = None
    chunks: asyncio.Queue[str | Completion | BaseException] | None = None  # streaming: pieces, then the Completion

    def deliver(self, item: str | Completion | BaseException) -> None:
        if self.chunks is not None:
            self.loop.call_soon_threadsafe(self.chunks.put_nowait, item)
        elif self.future is not None:
            self.loop.call_soon_threadsafe(_settle, self.future, item)


def _settle(future: asyncio.Future[Completion], item: Any) -> None:
    if future.done():  # the client went away
        return
    if isinstance(item, BaseException):
        future.set_exception(item)
    else:
        future.set_result(item)


class Engine:
    def __init__(
        self,
        window_seconds: float,
        max_batch_size: int,
        on_batch: Callable[[int], None] = lambda size: None,
        on_cancel: Callable[[], None] = lambda: None,
    ) -> None:
        self.window = window_seconds
        self.max_batch_size = max_batch_size
        self.on_batch = on_batch
        self.on_cancel = on_cancel
        self._jobs: queue.Queue[_Request | None] = queue.Queue()
        self._held: deque[_Request] = deque()  # jobs of another model than the running batch's
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="qaforge-generate", daemon=True)
        self._thread.start()

    async def complete(self, model: Weights, prompt_ids: list[int], sampling: Sampling) -> Completion:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Completion] = loop.create_future()
        job = _Request(model, prompt_ids, sampling, loop=loop, future=future)
        self._jobs.put(job)
        try:
            return await future
        except asyncio.CancelledError:  # the client left: stop generating for nobody
            job.cancelled.set()
            raise

    async def stream(self, model: Weights, prompt_ids: list[int], sampling: Sampling
                     ) -> AsyncGenerator[str | Completion]:
        """Text pieces as they are generated, then the Completion."""
        chunks: asyncio.Queue[str | Completion | BaseException] = asyncio.Queue()
        job = _Request(model, prompt_ids, sampling, streaming=True, loop=asyncio.get_running_loop(), chunks=chunks)
        self._jobs.put(job)
        try:
            while True:
                item = await chunks.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Completion):
                    return
        finally:  # also when the client disconnects: stop generating for nobody
            job.cancelled.set()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=60)

    # The worker thread.

    def _take(self, block: bool, timeout: float | None = None) -> _Request | None:
        """The next waiting job, or None (none came, or closing)."""
        if self._closing:
            return None
        try:
            job = self._jobs.get(block=block, timeout=timeout)
        except queue.Empty:
            return None
        if job is None:
            self._closing = True
        return job

    def _admit(self, batch: Batch | None) -> list[_Request]:
        """Jobs to start now, all of one model: when idle, the first to come (held ones
        first) and those that follow within the batching window; when busy, whatever
        of the batch's model is waiting, up to the batch size. Jobs of another model
        are held until the batch is done."""
        room = self.max_batch_size - (batch.size if batch else 0)
        jobs: list[_Request] = []

        def offer(job: _Request) -> None:
            owner = batch.model if batch is not None else jobs[0].model if jobs else job.model
            if job.model is owner and (batch is None or batch.accepts(job)):
                jobs.append(job)
            else:
                self._held.append(job)

        held, self._held = self._held, deque()
        while held and len(jobs) < room:
            offer(held.popleft())
        self._held.extend(held)
        if batch is None and not jobs:
            first = self._take(block=True)
            if first is None:
                return []
            offer(first)
        if batch is None and jobs:
            deadline = jobs[0].queued + self.window
            while len(jobs) < room and (job := self._take(True, max(0.0, deadline - time.monotonic()))):
                offer(job)
        while len(jobs) < room and (job := self._take(block=False)):
            offer(job)
        live = []
        for job in jobs:
            if job.cancelled.is_set():  # its client left while it waited
                self.on_cancel()
            else:
                live.append(job)
        return live

    def _run(self) -> None:
        batch: Batch | None = None
        while True:
            jobs = self._admit(batch)
            if batch is None and not jobs:
                if self._closing and not self._held:
                    return
                continue
            if jobs:
                try:
                    joined = Batch.prefill(jobs[0].model, jobs)
                except Exception as exc:
                    log.exception("prefill failed for %d requests", len(jobs))
                    for job in jobs:
                        job.deliver(exc)
                    joined = None
                if joined is not None:
                    if batch is None:
                        batch = joined
                    else:
                        batch.extend(joined)
            if batch is None:
                continue
            try:
                batch.advance(self.on_cancel, self.on_batch)
            except Exception as exc:
                log.exception("generation failed for a batch of %d", len(batch.rows))
                batch.fail(exc)
            if not batch.rows:
                batch = None
