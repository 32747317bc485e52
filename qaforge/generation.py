"""The one generation engine, for serving and evaluation alike: continuous batching.
Rows run one token at a time in a shared batch; a row joins at the next step (after
one prefill of its prompt) and leaves the moment it is done (end of answer,
max_tokens, a stop sequence, or its client left), so a long answer never holds up a
short one.

Each row samples on its own (greedy, or temperature/top_p with its own seeded
generator), checks its own stop sequences on its decoded text, and may be held to a
grammar (JSON of a schema: only tokens that keep it valid can be chosen, and it ends
when the JSON is whole), so requests with different settings share a batch, streaming
or not. Every job carries the model that
built its prompt, and a batch runs one model: a job never meets another model's weights.

The server drives a batch from a queue on a worker thread (serving/engine.py);
`generate` drives it from a list, for evaluation and offline use.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from qaforge.structured import Constraint

# Below this, sampling is greedy: dividing logits by a smaller temperature overflows.
GREEDY_BELOW = 1e-4


class Weights(Protocol):
    """What the engine needs of a model: the weights, their tokenizer, and a version
    for the answers to carry (None for a model from a folder)."""

    @property
    def model(self) -> Any: ...
    @property
    def tokenizer(self) -> Any: ...
    @property
    def version(self) -> str | None: ...


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    grammar: str | None = None  # what the answer must match (qaforge.structured.json_grammar)

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
    seconds: float = 0.0  # from the job's arrival to its last token
    cost: float = 0.0  # its share of the model's time: prefill by prompt tokens, each step split among its rows
    reference_nll: tuple[float, int] | None = None  # (summed NLL, tokens) of a reference answer, when scored


def cut_at_stop(text: str, stop: tuple[str, ...], start: int = 0) -> tuple[str, bool]:
    """The text before the first stop sequence found at or after `start` (OpenAI
    leaves the stop sequence out of the answer)."""
    cuts = [i for s in stop if (i := text.find(s, start)) >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


@dataclass(eq=False)
class Job:
    """One prompt to answer, with the model that built it. `deliver` receives the
    streamed text pieces (when `streaming`), then the Completion or an exception."""

    model: Weights
    prompt_ids: list[int]
    sampling: Sampling
    streaming: bool = False
    reference: list[int] | None = None  # token ids of an answer to score after the prompt
    queued: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)  # its client left
    cost: float = 0.0
    reference_nll: tuple[float, int] | None = None

    def deliver(self, item: str | Completion | BaseException) -> None:
        raise NotImplementedError


@dataclass
class _Row:
    job: Job
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters streamed so far
    finish: str | None = None
    gone: bool = False  # delivered (or its client left): it stays in the batch until the batch is compacted
    last: int = 0  # the token chosen at the latest pass: the row's next input while it stays in the batch
    constraint: Constraint | None = None  # the grammar its answer must match, as generated so far

    @property
    def sampling(self) -> Sampling:
        return self.job.sampling


class Batch:
    """The rows of one model in flight, with their key/value cache, padded on the left."""

    def __init__(self, model: Weights, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        self.model, self.rows, self.cache, self.mask = model, rows, cache, mask
        self.eos = _eos_ids(model)

    @classmethod
    @torch.inference_mode()
    def prefill(cls, model: Weights, jobs: Sequence[Job]) -> Batch:
        """The jobs' prompts through the model at once, and each row's first token."""
        if any(job.model is not model for job in jobs):
            raise ValueError("a batch runs one model: every job must carry it")
        device, pad = model.model.device, model.tokenizer.pad_token_id
        width = max(len(job.prompt_ids) for job in jobs)
        ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, job in enumerate(jobs):
            ids[i, width - len(job.prompt_ids):] = torch.tensor(job.prompt_ids)
            mask[i, width - len(job.prompt_ids):] = 1
        ids, mask = ids.to(device), mask.to(device)
        cache = new_cache(model)
        start = time.perf_counter()
        logits = model.model(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
            past_key_values=cache, use_cache=True, logits_to_keep=1,
        ).logits[:, -1]
        _charge(jobs, time.perf_counter() - start, [len(job.prompt_ids) for job in jobs])
        batch = cls(model, [_Row(job, _generator(job.sampling, device), constraint=_constraint(job.sampling, model))
                            for job in jobs], cache, mask)
        if any(job.reference for job in jobs):
            start = time.perf_counter()
            for job, nll in zip(jobs, batch._score(logits, [job.reference or [] for job in jobs])):
                job.reference_nll = nll if job.reference is not None else None
            _charge(jobs, time.perf_counter() - start, [len(job.reference or ()) for job in jobs])
        batch._append(logits)
        return batch

    def _score(self, logits: torch.Tensor, references: Sequence[list[int]]) -> list[tuple[float, int]]:
        """(summed negative log-likelihood, token count) of each row's reference answer
        after its prompt, right after the prefill (whose `logits` give each reference's
        first token): only the references' own tokens go through the model, on top of the
        prompts' cache, which is left as it was."""
        first = torch.log_softmax(logits.float(), dim=-1)
        results = [(-float(first[i, r[0]]), 1) if r else (0.0, 0) for i, r in enumerate(references)]
        rest = max(len(r) for r in references) - 1
        if rest <= 0:
            return results
        device, pad = self.mask.device, self.model.tokenizer.pad_token_id
        ids = torch.full((len(references), rest), pad, dtype=torch.long)
        targets = torch.full((len(references), rest), -100, dtype=torch.long)
        for i, r in enumerate(references):
            if len(r) > 1:
                ids[i, : len(r) - 1] = torch.tensor(r[:-1])
                targets[i, : len(r) - 1] = torch.tensor(r[1:])
        # Padded on the right: after every real token of its row, so it changes none of them.
        mask = torch.cat([self.mask, (targets != -100).long().to(device)], dim=1)
        positions = self.mask.sum(1, keepdim=True) + torch.arange(rest, device=device)
        saved = [(layer.keys, layer.values) for layer in _kv_layers(self.cache)]
        try:  # the references go into columns past the saved ones, so those stay as they were
            logits = self.model.model(input_ids=ids.to(device), attention_mask=mask, position_ids=positions,
                                      past_key_values=self.cache, use_cache=True).logits
        finally:
            for layer, (keys, values) in zip(_kv_layers(self.cache), saved):
                layer.keys, layer.values = keys, values
        targets = targets.to(device)
        for start in range(0, len(references), 8):  # float logits of a few rows at a time
            part = slice(start, start + 8)
            nll = torch.nn.functional.cross_entropy(logits[part].float().transpose(1, 2), targets[part],
                                                    ignore_index=-100, reduction="none").sum(dim=1)
            for i, value in enumerate(nll.tolist(), start):
                summed, count = results[i]
                results[i] = (summed + value, count + int((targets[i] != -100).sum()))
        return results

    @property
    def size(self) -> int:
        """Rows still generating."""
        return sum(not row.gone for row in self.rows)

    def accepts(self, job: Job) -> bool:
        """Whether a job can join now: same model, and a cache that can grow."""
        return job.model is self.model and mergeable(self.cache)

    def extend(self, other: Batch) -> None:
        self._compact()
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(_kv_layers(self.cache), _kv_layers(other.cache)):
            mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)])
            mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(other.mask, width, 1)])
        self.rows += other.rows

    def advance(self, on_cancel: Callable[[], None] = lambda: None,
                on_step: Callable[[int], None] = lambda rows: None) -> None:
        """Hand over finished rows, run one step for the others, hand over those done then."""
        self._finish_rows(on_cancel)
        if self.rows:
            on_step(self.size)
            self._step()
            self._finish_rows(on_cancel)

    def fail(self, exc: BaseException) -> None:
        for row in self.rows:
            if not row.gone:
                row.job.deliver(exc)
        self.rows = []

    def _compact(self) -> None:
        """Drop the rows that are gone, and the padding columns no remaining row needs.
        It copies the whole cache, so it waits until a quarter of the rows are gone or
        new rows join (which copies it anyway); until then a gone row rides along."""
        if any(row.gone for row in self.rows):
            self._keep([i for i, row in enumerate(self.rows) if not row.gone])

    def _keep(self, indices: list[int]) -> None:
        self.rows = [self.rows[i] for i in indices]
        index = torch.tensor(indices, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask[index]
        first = int(self.mask.any(dim=0).int().argmax()) if self.rows else 0
        self.mask = self.mask[:, first:]
        for layer in _kv_layers(self.cache):
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]

    @torch.inference_mode()
    def _step(self) -> None:
        start = time.perf_counter()
        last = torch.tensor([[row.last] for row in self.rows], device=self.mask.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        logits = self.model.model(
            input_ids=last, attention_mask=self.mask, position_ids=self.mask.sum(1, keepdim=True) - 1,
            past_key_values=self.cache, use_cache=True,
        ).logits[:, -1]
        self._append(logits)
        live = [row.job for row in self.rows if not row.gone]
        _charge(live, time.perf_counter() - start, [1] * len(live))

    def _append(self, logits: torch.Tensor) -> None:
        """Choose each row's next token, decode its text and decide whether it is done."""
        logits = logits.float()
        for i, row in enumerate(self.rows):
            if row.constraint is not None and not row.gone:
                logits[i].masked_fill_(~row.constraint.allowed().to(logits.device), float("-inf"))
        chosen = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(self.rows):
            if not row.sampling.greedy:
                chosen[i] = _sample(logits[i], row.sampling, row.generator)
        tokenizer = self.model.tokenizer
        for row, token in zip(self.rows, chosen):
            # Every row needs an input for the next pass, also one that ends now or was
            # delivered: a row whose first token ends its answer has no other token.
            row.last = token
            if row.gone:
                continue
            if token in self.eos:
                row.finish = "stop"
                continue
            row.tokens.append(token)
            if row.constraint is not None:
                row.constraint.consume(token)
                if row.constraint.complete:
                    row.finish = "stop"
            checked = len(row.text)
            row.text = tokenizer.decode(row.tokens, skip_special_tokens=True)
            if row.sampling.stop:
                row.text, stopped = cut_at_stop(row.text, row.sampling.stop, max(0, checked - row.sampling.hold))
                if stopped:
                    row.finish = "stop"
            if row.finish is None and len(row.tokens) >= row.sampling.max_new_tokens:
                row.finish = "length"
            if row.job.streaming:
                _stream_text(row)

    def _finish_rows(self, on_cancel: Callable[[], None]) -> None:
        for row in self.rows:
            if row.gone:
                continue
            if row.job.cancelled.is_set():
                on_cancel()
                row.gone = True
            elif row.finish is not None:
                if row.job.streaming:
                    _stream_text(row)
                job = row.job
                job.deliver(Completion(row.text.strip(), len(job.prompt_ids), len(row.tokens), row.finish,
                                       self.model.version, time.monotonic() - job.queued, job.cost,
                                       job.reference_nll))
                row.gone = True
        gone = len(self.rows) - self.size
        if gone == len(self.rows):
            self.rows = []
        elif gone * 4 >= len(self.rows):
            self._compact()


def _charge(jobs: Sequence[Job], seconds: float, weights: Sequence[int]) -> None:
    """Share the time of one forward pass among the jobs in it, by their tokens in it."""
    total = sum(weights) or 1
    for job, weight in zip(jobs, weights):
        job.cost += seconds * weight / total


def _stream_text(row: _Row) -> None:
    """Send the new text, holding back what could still turn out to be the start of a
    stop sequence or an incomplete character."""
    if row.finish is not None:
        ready = len(row.text)
    else:
        ready = min(len(row.text.rstrip("\ufffd")), len(row.text) - row.sampling.hold)
    if ready > row.sent:
        row.job.deliver(row.text[row.sent:ready])
        row.sent = ready


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values grow in place into spare columns, a block at
    a time, instead of being copied whole at every token (torch.cat): on a CPU that copy
    was a sixth of each decoding step. `keys` and `values` are views of the filled part;
    setting them (a batch extended or compacted) starts a new buffer."""

    SPARE = 64  # columns added each time the buffer is full

    def __init__(self) -> None:
        self._k: tuple[torch.Tensor, int] | None = None
        self._v: tuple[torch.Tensor, int] | None = None
        super().__init__()

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._k is None else _filled_part(self._k)

    @keys.setter
    def keys(self, tensor: torch.Tensor | None) -> None:
        self._k = _filled(tensor)

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else _filled_part(self._v)

    @values.setter
    def values(self, tensor: torch.Tensor | None) -> None:
        self._v = _filled(tensor)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self._k is not None and self._v is not None  # lazy_initialization set both
        self._k, self._v = _grow(self._k, key_states), _grow(self._v, value_states)
        return _filled_part(self._k), _filled_part(self._v)


def _filled_part(filled: tuple[torch.Tensor, int]) -> torch.Tensor:
    buffer, length = filled
    return buffer[..., :length, :]


def _filled(tensor: torch.Tensor | None) -> tuple[torch.Tensor, int] | None:
    """A buffer filled to its end (an empty one, before the first tokens, has no columns)."""
    return None if tensor is None else (tensor, tensor.shape[-2] if tensor.dim() >= 2 else 0)


def _grow(filled: tuple[torch.Tensor, int], new: torch.Tensor) -> tuple[torch.Tensor, int]:
    buffer, length = filled
    end = length + new.shape[-2]
    if buffer.numel() == 0 or buffer.shape[:-2] != new.shape[:-2] or end > buffer.shape[-2]:
        grown = new.new_empty((*new.shape[:-2], end + GrowingLayer.SPARE, new.shape[-1]))
        if length:
            grown[..., :length, :] = buffer[..., :length, :]
        buffer = grown
    buffer[..., length:end, :] = new
    return buffer, end


def new_cache(model: Weights) -> DynamicCache:
    """The model's cache, with every full-attention layer growing in place."""
    cache = DynamicCache(config=model.model.config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _kv_layers(cache: DynamicCache) -> list[Any]:
    """The cache's layers, whose `keys` and `values` the batch slices and joins.
    transformers types a layer as possibly a linear-attention state without keys; the
    engine runs models whose every layer is attention (full or a sliding window)."""
    return list(cache.layers)


def mergeable(cache: DynamicCache) -> bool:
    """Rows can join a running batch only when every layer caches all positions (not
    a sliding window or a recurrent state); otherwise they wait until it is done."""
    return all(isinstance(layer, GrowingLayer) for layer in cache.layers)


def _generator(sampling: Sampling, device: torch.device) -> torch.Generator | None:
    if sampling.greedy:
        return None
    generator = torch.Generator(device=device)
    if sampling.seed is None:
        generator.seed()
    else:
        generator.manual_seed(sampling.seed)
    return generator


def _constraint(sampling: Sampling, model: Weights) -> Constraint | None:
    if sampling.grammar is None:
        return None
    return Constraint(sampling.grammar, model.tokenizer, model.model.config.vocab_size, sorted(_eos_ids(model)))


def _eos_ids(model: Weights) -> set[int]:
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


class _Collected(Job):
    result: Completion | None = None

    def deliver(self, item: str | Completion | BaseException) -> None:
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Completion):
            self.result = item


# Padded prompt tokens per prefill pass: longer passes run slower per token on a CPU
# (measured: about 3,000 tokens/s up to 2-3k tokens, 2,300 at 18k; bench/RESULTS.md).
PREFILL_TOKENS = 2048


def generate(model: Weights, prompts: Sequence[list[int]], sampling: Sampling | Sequence[Sampling],
             max_batch_size: int = 32, references: Sequence[list[int] | None] | None = None) -> list[Completion]:
    """Completions of `prompts` (each with its own sampling, if given a list), in their
    order, through the server's engine. Prompts of similar length are prefilled
    together, in passes of about PREFILL_TOKENS; a finished row's place goes to the next
    prompt once a quarter of the batch is free (fewer, larger prefills). Given token ids
    of a reference answer for a prompt, its completion carries the reference's NLL too."""
    samplings = [sampling] * len(prompts) if isinstance(sampling, Sampling) else list(sampling)
    jobs = [_Collected(model, list(p), s, reference=list(r) if r is not None else None)
            for p, s, r in zip(prompts, samplings, references or [None] * len(prompts))]
    waiting = deque(sorted(jobs, key=lambda j: len(j.prompt_ids)))
    refill = max(1, max_batch_size // 4)
    batch: Batch | None = None
    while waiting or batch is not None:
        room = max_batch_size - (batch.size if batch is not None else 0)
        if waiting and (batch is None or (room >= min(refill, len(waiting)) and mergeable(batch.cache))):
            while room and waiting:
                group = [waiting.popleft()]
                while room > len(group) and waiting and \
                        (len(group) + 1) * len(waiting[0].prompt_ids) <= PREFILL_TOKENS:
                    group.append(waiting.popleft())
                room -= len(group)
                joined = Batch.prefill(model, group)
                if batch is None:
                    batch = joined
                else:
                    batch.extend(joined)
        assert batch is not None  # the loop runs while jobs wait or a batch runs, and a waiting job makes one
        batch.advance()
        if not batch.rows:
            batch = None
    done = [job.result for job in jobs if job.result is not None]
    if len(done) != len(jobs):  # every row hands over a Completion or raises: this is a bug in the batch
        raise RuntimeError(f"the engine answered {len(done)} of {len(jobs)} prompts")
    return done
