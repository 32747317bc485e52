"""Continuous batching: one worker thread runs the model one token at a time for every
request in flight. A request joins the running batch at the next step and leaves it
the moment it is done (end of answer, max_tokens, a stop sequence, or its client
left), so a long answer never holds up a short one, whoever asked for it.

Each row samples on its own (greedy, or temperature/top_p with its own seeded
generator) and checks its own stop sequences on its decoded text, so requests with
different settings share a batch, streaming or not.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from serving.models import LoadedModel, ModelHolder

log = logging.getLogger(__name__)

# Below this, sampling is greedy: dividing logits by a smaller temperature overflows.
GREEDY_BELOW = 1e-4


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def hold(self) -> int:
        """Characters at the end of the text that could still be the start of a stop sequence."""
        return max((len(s) for s in self.stop), default=1) - 1


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    version: str | None


def cut_at_stop(text: str, stop: tuple[str, ...], start: int = 0) -> tuple[str, bool]:
    """The text before the first stop sequence found at or after `start` (OpenAI
    leaves the stop sequence out of the answer)."""
    cuts = [i for s in stop if (i := text.find(s, start)) >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


@dataclass
class Job:
    prompt_ids: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future | None = None
    chunks: asyncio.Queue | None = None  # streaming: text pieces, then the Completion
    queued: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)  # the client left

    def deliver(self, item: Any) -> None:
        if self.chunks is not None:
            self.loop.call_soon_threadsafe(self.chunks.put_nowait, item)
        else:
            self.loop.call_soon_threadsafe(_settle, self.future, item)


def _settle(future: asyncio.Future, item: Any) -> None:
    if future.done():  # the client went away
        return
    if isinstance(item, BaseException):
        future.set_exception(item)
    else:
        future.set_result(item)


@dataclass
class _Row:
    job: Job
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters streamed so far
    finish: str | None = None

    @property
    def sampling(self) -> Sampling:
        return self.job.sampling


class _Batch:
    """The rows in flight with their key/value cache, padded on the left."""

    def __init__(self, model: LoadedModel, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        self.model, self.rows, self.cache, self.mask = model, rows, cache, mask
        self.eos = _eos_ids(model)

    def extend(self, other: _Batch) -> None:
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)])
            mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(other.mask, width, 1)])
        self.rows += other.rows

    def keep(self, indices: list[int]) -> None:
        """Drop the other rows, and the padding columns no remaining row needs."""
        self.rows = [self.rows[i] for i in indices]
        index = torch.tensor(indices, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask[index]
        first = int(self.mask.any(dim=0).int().argmax()) if self.rows else 0
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def mergeable(cache: DynamicCache) -> bool:
    """Rows can join a running batch only when every layer caches all positions (not
    a sliding window or a recurrent state); otherwise they wait until it is done."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class Engine:
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
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="qaforge-generate", daemon=True)
        self._thread.start()

    async def complete(self, prompt_ids: list[int], sampling: Sampling) -> Completion:
        loop = asyncio.get_running_loop()
        job = Job(prompt_ids, sampling, loop, future=loop.create_future())
        self._jobs.put(job)
        try:
            return await job.future
        except asyncio.CancelledError:  # the client left: stop generating for nobody
            job.cancelled.set()
            raise

    async def stream(self, prompt_ids: list[int], sampling: Sampling) -> AsyncIterator[str | Completion]:
        """Text pieces as they are generated, then the Completion."""
        job = Job(prompt_ids, sampling, asyncio.get_running_loop(), chunks=asyncio.Queue())
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

    # The worker thread.

    def _take(self, block: bool, timeout: float | None = None) -> Job | None:
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

    def _admit(self, batch: _Batch | None) -> list[Job]:
        """Jobs to start now: when idle, the first to come and those that follow within
        the batching window; when busy, whatever is waiting, up to the batch size."""
        room = self.max_batch_size - (len(batch.rows) if batch else 0)
        if batch is not None and (batch.model is not self.holder.current or not mergeable(batch.cache)):
            return []  # a new model version, or a cache that cannot grow: after this batch
        jobs: list[Job] = []
        if batch is None:
            first = self._take(block=True)
            if first is None:
                return []
            jobs.append(first)
            deadline = first.queued + self.window
            while len(jobs) < room and (job := self._take(True, max(0.0, deadline - time.monotonic()))):
                jobs.append(job)
        while len(jobs) < room and (job := self._take(block=False)):
            jobs.append(job)
        live = []
        for job in jobs:
            if job.cancelled.is_set():  # its client left while it waited
                self.on_cancel()
            else:
                live.append(job)
        return live

    def _run(self) -> None:
        batch: _Batch | None = None
        while True:
            jobs = self._admit(batch)
            if batch is None and not jobs:
                if self._closing:
                    return
                continue
            if jobs:
                model = batch.model if batch is not None else self.holder.current
                try:
                    joined = self._prefill(model, jobs)
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
                self._finish_rows(batch)
                if batch.rows:
                    self._step(batch)
                    self._finish_rows(batch)
            except Exception as exc:
                log.exception("generation failed for a batch of %d", len(batch.rows))
                for row in batch.rows:
                    row.job.deliver(exc)
                batch = None
                continue
            if not batch.rows:
                batch = None

    @torch.inference_mode()
    def _prefill(self, model: LoadedModel, jobs: list[Job]) -> _Batch:
        device, pad = model.model.device, model.tokenizer.pad_token_id
        width = max(len(job.prompt_ids) for job in jobs)
        ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, job in enumerate(jobs):
            ids[i, width - len(job.prompt_ids):] = torch.tensor(job.prompt_ids)
            mask[i, width - len(job.prompt_ids):] = 1
        ids, mask = ids.to(device), mask.to(device)
        cache = DynamicCache(config=model.model.config)
        logits = model.model(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
            past_key_values=cache, use_cache=True, logits_to_keep=1,
        ).logits[:, -1]
        rows = [_Row(job, self._generator(job.sampling, device)) for job in jobs]
        batch = _Batch(model, rows, cache, mask)
        self._append(batch, logits)
        return batch

    @torch.inference_mode()
    def _step(self, batch: _Batch) -> None:
        self.on_batch(len(batch.rows))
        last = torch.tensor([[row.tokens[-1]] for row in batch.rows], device=batch.mask.device)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
        logits = batch.model.model(
            input_ids=last, attention_mask=batch.mask, position_ids=batch.mask.sum(1, keepdim=True) - 1,
            past_key_values=batch.cache, use_cache=True,
        ).logits[:, -1]
        self._append(batch, logits)

    @staticmethod
    def _generator(sampling: Sampling, device: torch.device) -> torch.Generator | None:
        if sampling.greedy:
            return None
        generator = torch.Generator(device=device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)
        return generator

    def _append(self, batch: _Batch, logits: torch.Tensor) -> None:
        """Choose each row's next token, decode its text and decide whether it is done."""
        logits = logits.float()
        chosen = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(batch.rows):
            if not row.sampling.greedy:
                chosen[i] = _sample(logits[i], row.sampling, row.generator)
        tokenizer = batch.model.tokenizer
        for row, token in zip(batch.rows, chosen):
            if token in batch.eos:
                row.finish = "stop"
                continue
            row.tokens.append(token)
            checked = len(row.text)
            row.text = tokenizer.decode(row.tokens, skip_special_tokens=True)
            if row.sampling.stop:
                row.text, stopped = cut_at_stop(row.text, row.sampling.stop, max(0, checked - row.sampling.hold))
                if stopped:
                    row.finish = "stop"
            if row.finish is None and len(row.tokens) >= row.sampling.max_new_tokens:
                row.finish = "length"
            if row.job.chunks is not None:
                self._stream_text(row)

    @staticmethod
    def _stream_text(row: _Row) -> None:
        """Send the new text, holding back what could still turn out to be the start of
        a stop sequence or an incomplete character."""
        if row.finish is not None:
            ready = len(row.text)
        else:
            ready = min(len(row.text.rstrip("\ufffd")), len(row.text) - row.sampling.hold)
        if ready > row.sent:
            row.job.deliver(row.text[row.sent:ready])
            row.sent = ready

    def _finish_rows(self, batch: _Batch) -> None:
        keep = []
        for i, row in enumerate(batch.rows):
            if row.job.cancelled.is_set():
                self.on_cancel()
            elif row.finish is not None:
                if row.job.chunks is not None:
                    self._stream_text(row)
                row.job.deliver(Completion(row.text.strip(), len(row.job.prompt_ids), len(row.tokens),
                                           row.finish, batch.model.version))
            else:
                keep.append(i)
        if len(keep) < len(batch.rows):
            batch.keep(keep)


def _eos_ids(model: LoadedModel) -> set[int]:
    eos = model.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if model.tokenizer.eos_token_id is not None:
        ids.add(model.tokenizer.eos_token_id)
    return ids


def _sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """Temperature, then nucleus (top_p) sampling of one row's next token."""
    probs = torch.softmax((logits - logits.max()) / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(0) - sorted_probs > sampling.top_p  # always keeps the most likely
        probs = probs.scatter(0, order[outside], 0.0)
    return int(torch.multinomial(probs, 1, generator=generator))
