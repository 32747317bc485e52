"""Dynamic batching: requests wait up to a short window for others with the same
sampling settings, then one generate() call answers them all, on a worker thread so
the event loop stays free. Streaming and seeded requests run alone: a stream needs its
own streamer, and a seed only reproduces when nothing else shares the batch."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from qaforge.modeling import generate_answers
from qaforge.prompting import with_system_prompt
from serving.models import LoadedModel, ModelHolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def finish_reason(self, stopped: bool, completion_tokens: int) -> str:
        return "stop" if stopped or completion_tokens < self.max_new_tokens else "length"

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.temperature > 0:
            kwargs |= {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        if self.stop:
            kwargs["stop_strings"] = list(self.stop)
        return kwargs


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    version: str | None


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the first stop sequence (which OpenAI leaves out of the answer)."""
    cuts = [i for s in stop if (i := text.find(s)) >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


@dataclass
class _Job:
    messages: list[dict[str, str]]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future | None = None
    chunks: asyncio.Queue | None = None  # streaming: text pieces, then the Completion
    queued: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)  # the client left

    def batchable_with(self, other: _Job) -> bool:
        return self.chunks is None and other.chunks is None and self.sampling == other.sampling

    def deliver(self, item: Any) -> None:
        if self.chunks is not None:
            self.loop.call_soon_threadsafe(self.chunks.put_nowait, item)
        else:
            self.loop.call_soon_threadsafe(_settle, self.future, item)


class _Abandoned(StoppingCriteria):
    """Ends each row of a generate() call whose client has left (row i is jobs[i])."""

    def __init__(self, jobs: list[_Job]) -> None:
        self.events = [job.cancelled for job in jobs]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.tensor([event.is_set() for event in self.events], dtype=torch.bool, device=input_ids.device)


def _settle(future: asyncio.Future, item: Any) -> None:
    if future.done():  # the client went away
        return
    if isinstance(item, BaseException):
        future.set_exception(item)
    else:
        future.set_result(item)


class Batcher:
    def __init__(
        self,
        holder: ModelHolder,
        window_seconds: float,
        max_batch_size: int,
        on_batch: Callable[[int], None] = lambda size: None,
        on_cancel: Callable[[], None] = lambda: None,
    ) -> None:
        self.holder = holder
        self.window = window_seconds
        self.max_batch_size = max_batch_size
        self.on_batch = on_batch
        self.on_cancel = on_cancel
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._pending: deque[_Job] = deque()
        self._thread = threading.Thread(target=self._run, name="qaforge-generate", daemon=True)
        self._thread.start()

    async def complete(self, messages: list[dict[str, str]], sampling: Sampling) -> Completion:
        loop = asyncio.get_running_loop()
        job = _Job(messages, sampling, loop, future=loop.create_future())
        self._jobs.put(job)
        try:
            return await job.future
        except asyncio.CancelledError:  # the client left: stop generating for nobody
            job.cancelled.set()
            raise

    async def stream(self, messages: list[dict[str, str]], sampling: Sampling) -> AsyncIterator[str | Completion]:
        """Text pieces as they are generated, then the Completion."""
        job = _Job(messages, sampling, asyncio.get_running_loop(), chunks=asyncio.Queue())
        self._jobs.put(job)
        try:
            while True:
                item = await job.chunks.get()
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

    def _next_job(self, timeout: float | None) -> _Job | None:
        if self._pending:
            return self._pending.popleft()
        return self._jobs.get(timeout=timeout)

    def _next_batch(self) -> list[_Job] | None:
        first = self._next_job(None)
        if first is None:
            return None
        batch = [first]
        if first.chunks is not None or first.sampling.seed is not None:
            return batch
        # Compatible jobs already waiting join at once; then wait out the window.
        waiting, self._pending = self._pending, deque()
        for job in waiting:
            (batch if len(batch) < self.max_batch_size and job.batchable_with(first) else self._pending).append(job)
        deadline = first.queued + self.window
        while len(batch) < self.max_batch_size:
            try:
                job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:  # closing: finish this batch first
                self._jobs.put(None)
                break
            (batch if job.batchable_with(first) else self._pending).append(job)
        return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            for job in batch:  # clients that left while their job waited
                if job.cancelled.is_set():
                    self.on_cancel()
            if not (batch := [job for job in batch if not job.cancelled.is_set()]):
                continue
            model = self.holder.current  # one model for the whole batch, even if a swap happens now
            self.on_batch(len(batch))
            try:
                if batch[0].chunks is not None:
                    self._stream(model, batch[0])
                else:
                    for job, completion in zip(batch, self._generate(model, batch)):
                        if job.cancelled.is_set():
                            self.on_cancel()
                        else:
                            job.deliver(completion)
            except Exception as exc:
                log.exception("generation failed for a batch of %d", len(batch))
                for job in batch:
                    job.deliver(exc)

    @staticmethod
    def _conversations(model: LoadedModel, jobs: list[_Job]) -> list[list[dict[str, str]]]:
        return [with_system_prompt(j.messages, model.system_prompt) for j in jobs]

    def _generate(self, model: LoadedModel, jobs: list[_Job]) -> list[Completion]:
        sampling = jobs[0].sampling
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        generation = generate_answers(
            model.model,
            model.tokenizer,
            self._conversations(model, jobs),
            sampling.max_new_tokens,
            batch_size=len(jobs),
            stopping_criteria=StoppingCriteriaList([_Abandoned(jobs)]),
            **sampling.generate_kwargs(),
        )
        return [
            self._completion(model, sampling, text, prompt, completion)
            for text, prompt, completion in zip(
                generation.answers, generation.prompt_tokens, generation.completion_tokens
            )
        ]

    @staticmethod
    def _completion(model: LoadedModel, sampling: Sampling, text: str, prompt: int, completion: int) -> Completion:
        text, stopped = cut_at_stop(text, sampling.stop)
        return Completion(text, prompt, completion, sampling.finish_reason(stopped, completion), model.version)

    def _stream(self, model: LoadedModel, job: _Job) -> None:
        sampling = job.sampling
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["generation"] = generate_answers(
                    model.model, model.tokenizer, self._conversations(model, [job]), sampling.max_new_tokens,
                    batch_size=1, streamer=streamer, stopping_criteria=StoppingCriteriaList([_Abandoned([job])]),
                    **sampling.generate_kwargs(),
                )
            except Exception as exc:
                result["error"] = exc
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        # Hold back what could be the start of a stop sequence until it is decided.
        hold = max((len(s) for s in sampling.stop), default=1) - 1
        text, sent, stopped = "", 0, False
        for piece in streamer:
            if stopped:
                continue
            text += piece
            if sampling.stop:
                text, stopped = cut_at_stop(text, sampling.stop)
            ready = len(text) if stopped else max(sent, len(text) - hold)
            if ready > sent:
                job.deliver(text[sent:ready])
                sent = ready
        worker.join()
        if "error" in result:
            raise result["error"]
        if job.cancelled.is_set():
            self.on_cancel()
            return
        if len(text) > sent:
            job.deliver(text[sent:])
        prompt, completion = result["generation"].prompt_tokens[0], result["generation"].completion_tokens[0]
        job.deliver(
            Completion(text.strip(), prompt, completion, sampling.finish_reason(stopped, completion), model.version)
        )
