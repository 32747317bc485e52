"""Real training runs on the tiny default model: each method lowers the loss, fp32 and
bf16 both train, QLoRA's gradients match a full-precision reference, and a killed run
resumes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from qaforge.config import GENERAL_DATA, ReplayConfig, TrainingConfig
from qaforge.general_data import GeneralQuestion, ReplayExample, read_jsonl
from qaforge.hardware import Precision
from qaforge.records import QAPair
from qaforge.training import (
    examples,
    fit,
    load_trainable_model,
    merge_adapter,
    project_answer_tokens_only,
    replay_sample,
    sft_dataset,
    training_compute,
)

from helpers import REPO

FACTS = [
    ("What is the depot code?", "The depot code is blue heron 42."),
    ("Which connector does bay 3 use?", "Bay 3 uses the CCS2 connector."),
    ("When do the night tariffs start?", "The night tariffs start at 23:00."),
    ("Who maintains the chargers?", "The chargers are maintained by Voltcare."),
]


def pairs(n: int = 16) -> list[QAPair]:
    return [
        QAPair(question=q, answer=a, chunk_id="c", doc_id="d", source="s", kind="fact", grounding=1.0)
        for q, a in (FACTS * n)[:n]
    ]


def small_config(method: str, **overrides: object) -> TrainingConfig:
    settings = {
        "method": method, "max_steps": 6, "batch_size": 4, "max_length": 96, "logging_steps": 1, "warmup_steps": 0,
        "learning_rate": 1e-4 if method == "full" else 2e-3, "eval_steps": 3, "save_steps": 3,
        "early_stopping_patience": 2,
    }
    return TrainingConfig(**settings | overrides)


@pytest.mark.training
@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
def test_each_method_lowers_train_and_val_loss(base_model_dir, tmp_path, method) -> None:
    data = sft_dataset(examples(pairs()), "Answer about the depot.")
    result = fit(data, sft_dataset(examples(pairs(4)), "Answer about the depot."), base_model_dir, small_config(method), tmp_path)
    losses = [h["loss"] for h in result.history if "loss" in h]
    val = [h["eval_loss"] for h in result.history if "eval_loss" in h]
    assert result.steps == 6 and len(losses) == 6 and len(val) == 2
    assert losses[-1] < losses[0] * 0.8, losses
    assert val[-1] < val[0] and result.best_val_loss == min(val)
    saved = {p.name for p in result.model_dir.iterdir()}
    assert ("model.safetensors" if method == "full" else "adapter_model.safetensors") in saved
    if method != "full":
        # The served model: the adapter folded into a full-precision base computes what
        # base plus adapter compute.
        merged_dir = merge_adapter(base_model_dir, result.model_dir, tmp_path / "merged")
        ids = torch.tensor([[1, 504, 2153, 314, 253, 12789, 47]])
        base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
        with torch.no_grad():
            expected = PeftModel.from_pretrained(base, result.model_dir)(input_ids=ids).logits
            merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)(input_ids=ids).logits
        assert torch.allclose(merged, expected, atol=1e-3)
        assert (merged_dir / "tokenizer.json").exists(), "the merged model carries its tokenizer"


@pytest.mark.training
def test_full_fine_tuning_of_the_top_layers_leaves_the_rest_as_it_was(base_model_dir, tmp_path) -> None:
    config = small_config("full", trainable_layers=2, max_steps=4, eval_steps=None, early_stopping_patience=None,
                          save_steps=4, learning_rate=3e-4)
    result = fit(sft_dataset(examples(pairs()), "Answer about the depot."), None, base_model_dir, config, tmp_path)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0], losses
    base = load_file(Path(base_model_dir) / "model.safetensors")
    trained = load_file(result.model_dir / "model.safetensors")
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    assert changed and all(name.startswith(("model.layers.28.", "model.layers.29.", "model.norm.")) for name in changed)
    assert "model.embed_tokens.weight" not in changed, "the embeddings and the output head tied to them stay"


def test_the_loss_projects_the_answer_tokens_only_and_is_the_loss_of_every_logit(base_model_dir, tokenizer,
                                                                                  monkeypatch) -> None:
    from trl.trainer import add_fused_lm_head
    from trl.trainer import utils as trl_utils

    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    ids = torch.tensor([tokenizer("Passages: the depot opens at 06:00. Question: when? It opens at 06:00.")["input_ids"]])
    labels = ids.clone()
    labels[:, :-6] = -100  # the answer's last tokens
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    expected = torch.nn.functional.cross_entropy(logits[labels[:, 1:] != -100], labels[:, 1:][labels[:, 1:] != -100])
    add_fused_lm_head(model)
    projected = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *args: projected.append(len(hidden)) or apply(hidden, *args))
    project_answer_tokens_only()
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels, fused_lm_head=True).loss
    assert projected == [6] and ids.shape[1] > 20, "only the positions whose next token is a label"
    assert torch.allclose(loss, expected, atol=1e-4), (loss, expected)


@pytest.mark.training
def test_packing_trains_on_the_same_examples(base_model_dir, tmp_path) -> None:
    result = fit(sft_dataset(examples(pairs()), None), None, base_model_dir, small_config("lora", packing=True), tmp_path)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0] * 0.8, losses


@pytest.mark.training
@pytest.mark.parametrize("precision", [Precision.FP32, Precision.BF16])
def test_forced_precision_trains_in_that_precision(base_model_dir, tmp_path, precision) -> None:
    """Both precisions train whatever the CPU (bf16 slowly where it is not native), and
    the trainer is told the one asked for."""
    config = small_config("lora", precision=precision, max_steps=4, batch_size=2, max_length=64, eval_steps=None,
                          save_steps=4, early_stopping_patience=None, learning_rate=3e-3)
    result = fit(sft_dataset(examples(pairs(8)), None), None, base_model_dir, config, tmp_path)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert result.steps == 4 and losses[-1] < losses[0], losses
    assert not (tmp_path / "checkpoints").exists(), "a finished run keeps no checkpoints"
    args = torch.load(result.model_dir / "training_args.bin", weights_only=False)
    assert (args.bf16, args.fp16, args.use_cpu) == (precision is Precision.BF16, False, True)


def lora_gradients(model: torch.nn.Module, batch: dict, autocast: torch.dtype | None) -> torch.Tensor:
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would leave A without gradient
            with torch.no_grad():
                param.copy_(0.01 * torch.randn(param.shape, generator=generator))
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    return torch.cat([p.grad.flatten().float() for p in peft_model.parameters() if p.requires_grad])


@pytest.mark.training
def test_qlora_gradients_match_a_full_precision_reference(base_model_dir, tokenizer) -> None:
    """The reference is fp32 over the same NF4-dequantized weights, so the only
    difference left is the 4-bit kernels and the compute precision this machine gets.
    Training loads its 4-bit model fresh, as here: on some CPUs bitsandbytes repacks
    4-bit weights for inference, after which LoRA gradients come out wrong."""
    compute = training_compute(small_config("qlora"))
    batch = tokenizer([f"{q} {a}" for q, a in FACTS[:2]], return_tensors="pt", padding=True)
    reference = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    quantized = dict(load_trainable_model(base_model_dir, "qlora", compute).named_modules())
    for name, module in reference.named_modules():
        if isinstance(quantized.get(name), bnb.nn.Linear4bit):
            weight = quantized[name].weight
            with torch.no_grad():
                module.weight.copy_(bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float())
    expected = lora_gradients(reference, batch, autocast=None)
    autocast = None if compute.precision is Precision.FP32 else compute.dtype
    qlora = lora_gradients(load_trainable_model(base_model_dir, "qlora", compute), batch, autocast)
    cosine = torch.nn.functional.cosine_similarity(qlora, expected, dim=0)
    assert cosine > 0.99 and (qlora - expected).norm() / expected.norm() < 0.1


RESUMABLE = {"max_steps": 16, "save_steps": 2, "eval_steps": None, "early_stopping_patience": None}
KILLED_RUN = """
import sys
from pathlib import Path
sys.path[:0] = [{repo!r}, {tests!r}]
from test_training import RESUMABLE, pairs, small_config
from qaforge.training import examples, fit, sft_dataset
fit(sft_dataset(examples(pairs()), None), None, {base!r}, small_config("lora", **RESUMABLE), Path({work!r}))
"""


@pytest.mark.training
def test_killed_run_resumes_from_its_last_checkpoint(base_model_dir, tmp_path, caplog) -> None:
    work = tmp_path / "killed"
    script = KILLED_RUN.format(repo=str(REPO), tests=str(REPO / "tests"), base=base_model_dir, work=str(work))
    process = subprocess.Popen([sys.executable, "-c", script], env=os.environ, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (work / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (work / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and checkpoints[-1] < 16, "killed before the end"
    config = small_config("lora", **RESUMABLE)
    with caplog.at_level(logging.INFO, logger="qaforge.training"):
        resumed = fit(sft_dataset(examples(pairs()), None), None, base_model_dir, config, work)
    assert f"resuming training from {work / 'checkpoints' / f'checkpoint-{checkpoints[-1]}'}" in caplog.text
    # The same run without the kill ends with the same weights.
    straight = fit(sft_dataset(examples(pairs()), None), None, base_model_dir, config, tmp_path / "straight")
    assert resumed.steps == straight.steps == 16
    assert resumed.train_loss == pytest.approx(straight.train_loss, rel=1e-3), "the whole run's loss, not the session's"
    got, expected = (load_file(r.model_dir / "adapter_model.safetensors") for r in (resumed, straight))
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-6)


@pytest.mark.training
def test_a_finished_run_is_not_trained_again_and_keeps_its_loss(base_model_dir, tmp_path, caplog) -> None:
    """A rerun of the same plan finds the finished run: no trainer, no zero-step resume
    reporting a loss of 0, the same model folder and the loss it really had."""
    config = small_config("lora", max_steps=4, eval_steps=None, early_stopping_patience=None, save_steps=2)
    first = fit(sft_dataset(examples(pairs(8)), None), None, base_model_dir, config, tmp_path)
    with caplog.at_level(logging.INFO, logger="qaforge.training"):
        again = fit(sft_dataset(examples(pairs(8)), None), None, base_model_dir, config, tmp_path)
    assert not first.reused and again.reused and "resuming" not in caplog.text
    assert first.train_loss > 0 and (again.train_loss, again.steps, again.model_dir) == (
        first.train_loss, first.steps, first.model_dir)


def test_an_example_that_would_lose_answer_tokens_is_named_before_training(base_model_dir: str, tmp_path) -> None:
    """trl cuts an example longer than max_length from the end, which cuts its answer (or
    drops it, left with none), silently: training refuses it first, naming it and the
    length it needs, with the system prompt and earlier turns counted."""
    from qaforge.config import ModelConfig, PromptConfig
    from qaforge.records import QADataset, Turn
    from qaforge.training import train

    long = QAPair(question="What happens at the depot at night?", answer="The chargers run. " * 20, chunk_id="c",
                  doc_id="d", source="s", kind="fact", grounding=1.0,
                  history=[Turn(question="What is the depot?", answer="A bus garage with 40 chargers.")])
    data = QADataset(train=pairs(4) + [long], val=[], test=pairs(1))
    config = small_config("full", max_length=96, output_dir=tmp_path, eval_steps=None, early_stopping_patience=None)
    with pytest.raises(ValueError, match=r"training example 4 \('What happens at the depot at night\?'\) is "
                                         r"\d+ tokens .* over training.max_length=96: trl would cut its answer"):
        train(data, ModelConfig(cache_dir=Path(base_model_dir).parent), config, PromptConfig())
    assert not list(tmp_path.iterdir()), "nothing trained, nothing written"


def test_replay_sample_is_sized_seeded_and_disjoint_from_the_guard_set() -> None:
    cfg = ReplayConfig(ratio=0.5)
    sample = replay_sample(cfg, 300, seed=1)
    assert len(sample) == 150 and sample == replay_sample(cfg, 300, seed=1)
    pool = read_jsonl(cfg.path, ReplayExample)
    assert len({r.question for r in sample}) == min(150, len(pool))
    guard = {q.question.lower() for q in read_jsonl(GENERAL_DATA / "general_qa.jsonl", GeneralQuestion)}
    assert not guard & {r.question.lower() for r in pool}


def test_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "replay.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{"question": "q2"}\n')
    with pytest.raises(ValueError, match=r"replay.jsonl:2: answer: Field required"):
        read_jsonl(path, ReplayExample)


def test_dataset_hash_sees_the_earlier_turns() -> None:
    """Two datasets that differ only in a follow-up's first turn train different
    models, so they must not share a checkpoint folder."""
    from qaforge.records import QAPair, Turn
    from qaforge.training import dataset_hash, examples

    def pair(first_answer: str) -> QAPair:
        return QAPair(history=[Turn(question="What is Level 2?", answer=first_answer)], question="How fast is it?",
                      answer="Up to 19.2 kW.", chunk_id="c", doc_id="d", source="s", kind="follow-up", grounding=1.0)

    assert dataset_hash(examples([pair("AC charging at 240 V.")])) != dataset_hash(examples([pair("DC fast charging.")]))


@pytest.mark.training
def test_a_model_trained_with_passages_answers_from_a_fact_it_never_saw(sample_dataset, sample_chunks,
                                                                          tmp_path) -> None:
    """RAFT: trained with retrieved passages in its prompts, the model reads the answer
    out of a passage at question time, here a planted fact that is in no training
    example, and without the passage it does not know it."""
    from qaforge.config import ContextTraining, ModelConfig, PromptConfig
    from qaforge.modeling import generate_answers, load_for_inference
    from qaforge.prompting import build_messages
    from qaforge.records import Passage, QADataset
    from qaforge.retrieval import Retriever
    from qaforge.training import train

    data = QADataset(train=[p for p in sample_dataset.train if not p.history][:96], val=[], test=[])
    # The default's recipe: the top 15 layers, every question with its source passage.
    cfg = TrainingConfig(method="full", trainable_layers=15, max_steps=12, batch_size=8, learning_rate=1e-4,
                         max_length=576, warmup_steps=0, eval_steps=None, early_stopping_patience=None, save_steps=12,
                         context=ContextTraining(with_source=1.0), output_dir=tmp_path)
    prompt = PromptConfig(system_prompt="You answer questions about electric-vehicle charging.")
    run = train(data, ModelConfig(cache_dir=REPO / ".qaforge" / "models"), cfg, prompt,
                retriever=Retriever.build(sample_chunks), top_k=2)
    planted = Passage(chunk_id="planted", doc_id="planted", title="Zorvex depot", source="planted",
                      text="The Zorvex depot charger has a maximum output of 417 kW. It was installed in 2031.")
    other = next(c for c in sample_chunks.chunks if "CHAdeMO" in c.text)
    distractor = Passage(chunk_id=other.chunk_id, doc_id=other.doc_id, title=other.title, source=other.source,
                         text=other.text)
    question = "What is the maximum output of the Zorvex depot charger?"
    model, tokenizer = load_for_inference(str(run.model_dir))
    with_passage, closed_book = generate_answers(model, tokenizer, [
        build_messages(question, prompt.system_prompt, context=[distractor, planted]),
        build_messages(question, prompt.system_prompt),
    ], max_new_tokens=32).answers
    assert "417" in with_passage, with_passage
    assert "417" not in closed_book, closed_book
