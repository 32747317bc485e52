"""The one generation engine (qaforge/generation.py), which the server and evaluation
share: continuous batching gives each prompt the answer it gets alone and the answer
transformers' generate() gives, scores reference answers as the model's own loss
does, and never lets a job meet another model's weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from qaforge.config import InferenceOptions
from qaforge.generation import Batch, Completion, Job, Sampling, generate
from qaforge.modeling import generate_answers, load_for_inference
from qaforge.prompting import build_messages, encode_prompt, render_prompt

# fp32 on any CPU: these check the batching arithmetic, not bf16 rounding.
FP32 = InferenceOptions(precision="fp32")
QUESTIONS = ["What is OCPP?", "Explain in detail how a Level 2 charger works at home, step by step?", "Why?",
             "What is the capital of France?", "How long does DC fast charging take?"]


@dataclass(frozen=True)
class Weights:
    model: Any
    tokenizer: Any
    version: str | None = None


@pytest.fixture(scope="module")
def fp32(base_model_dir: str) -> Weights:
    return Weights(*load_for_inference(base_model_dir, FP32))


def test_continuous_batching_answers_as_alone_and_as_generate(fp32: Weights) -> None:
    """Ten prompts through a batch of three: rows leave at their own end and new ones
    join the running batch (prefilled in groups, padded on the left), yet every answer
    is the one the prompt gets alone, and the one transformers' generate() gives."""
    conversations = [build_messages(q, "Be brief.") for q in QUESTIONS * 2]
    prompts = [encode_prompt(fp32.tokenizer, c) for c in conversations]
    batched = generate(fp32, prompts, Sampling(20), max_batch_size=3)
    alone = [generate(fp32, [p], Sampling(20))[0] for p in prompts[:5]]
    assert [c.text for c in batched[:5]] == [c.text for c in alone]
    assert [c.text for c in batched[5:]] == [c.text for c in batched[:5]], "a row that joined late answers the same"
    lengths = {c.completion_tokens for c in batched}
    assert len(lengths) > 1 and max(lengths) <= 20, "rows stop at their own end"
    for prompt, completion in zip(prompts[:3], alone):
        with torch.no_grad():
            out = fp32.model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)
        assert fp32.tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True).strip() == completion.text
    assert all(c.cost > 0 for c in batched) and sum(c.cost for c in batched) < 120


def test_an_answer_that_ends_at_its_first_token_leaves_the_others_running(fp32: Weights) -> None:
    """A row whose first token ends its answer (an empty answer) rides along in the batch
    until it is compacted, as any finished row does: it used to have no token to feed the
    next pass, and the whole batch failed with it (the server's too)."""
    prompts = [encode_prompt(fp32.tokenizer, build_messages(q, "Be brief.")) for q in QUESTIONS]
    first = generate(fp32, [prompts[0]], Sampling(1))[0].text
    config = fp32.model.generation_config
    saved = config.eos_token_id
    # The first prompt's first token now ends an answer: its answer is empty.
    config.eos_token_id = [*(saved if isinstance(saved, list) else [saved]),
                           *fp32.tokenizer(first, add_special_tokens=False)["input_ids"][:1]]
    try:
        alone = [generate(fp32, [p], Sampling(12))[0] for p in prompts]
        batched = generate(fp32, prompts, Sampling(12), max_batch_size=8)
    finally:
        config.eos_token_id = saved
    assert (batched[0].text, batched[0].completion_tokens, batched[0].finish_reason) == ("", 0, "stop")
    assert [c.text for c in batched] == [c.text for c in alone]


def test_reference_nll_equals_the_models_own_loss(fp32: Weights) -> None:
    """Scored on the prompt's cache right after its prefill, a reference answer gets the
    NLL the model's own loss gives it; padding and batching change nothing."""
    messages = build_messages("What does Level 2 use?", "Be brief.")
    answer = "Level 2 uses 240 V."
    [found] = generate_answers(fp32.model, fp32.tokenizer, [messages], 4, references=[answer]).nll
    prompt = fp32.tokenizer(render_prompt(fp32.tokenizer, messages), add_special_tokens=False,
                            return_tensors="pt")["input_ids"]
    target = fp32.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
    labels = torch.cat([torch.full_like(prompt, -100), target], dim=1)
    with torch.no_grad():
        loss = fp32.model(input_ids=torch.cat([prompt, target], dim=1), labels=labels).loss
    nll, tokens = found
    assert tokens == target.shape[1]
    assert nll / tokens == pytest.approx(float(loss), rel=1e-4)
    longer = build_messages("Explain in detail how a Level 2 charger works at home?", "Be brief.")
    batched = generate_answers(fp32.model, fp32.tokenizer, [longer, messages], 4,
                               references=["A much longer reference answer than the other one.", answer]).nll
    assert batched[1][0] == pytest.approx(nll, rel=1e-4) and batched[1][1] == tokens
    alone = generate_answers(fp32.model, fp32.tokenizer, [messages], 4).answers
    assert generate_answers(fp32.model, fp32.tokenizer, [messages], 4, references=[answer]).answers == alone, (
        "scoring leaves the cache as it was: the answer is the same"
    )


class Collected(Job):
    result: Completion | None = None

    def deliver(self, item: object) -> None:
        if isinstance(item, Completion):
            self.result = item


def test_a_batch_runs_one_model_only(fp32: Weights) -> None:
    other = Weights(fp32.model, fp32.tokenizer, version="2")
    prompt = encode_prompt(fp32.tokenizer, build_messages("Hi", None))
    batch = Batch.prefill(fp32, [Collected(fp32, prompt, Sampling(2))])
    assert not batch.accepts(Collected(other, prompt, Sampling(2)))
    with pytest.raises(ValueError, match="a batch runs one model"):
        Batch.prefill(fp32, [Collected(fp32, prompt, Sampling(2)), Collected(other, prompt, Sampling(2))])
