"""Export without a pipeline: a local model folder to a Hugging Face folder and a q8_0
GGUF that transformers loads back and that still answers; a model llama.cpp's GGUF
layout does not cover is refused with a pointer. (The exact f32 round trip of a
trained, registered version is in test_shared_stack.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qaforge.export import GGUFType, export_model, modelfile, write_gguf
from qaforge.modeling import generate_answers
from qaforge.prompting import build_messages

pytestmark = pytest.mark.slow


def test_local_folder_to_hf_and_q8_gguf(base_model_dir: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = export_model(base_model_dir, tmp_path / "out", GGUFType.Q8_0, name="smol")
    assert json.loads((exported.hf_dir / "qaforge.json").read_text()) == {"system_prompt": None,
                                                                          "retrieval_index": None}
    assert (exported.hf_dir / "model.safetensors").exists()
    assert exported.gguf == tmp_path / "out" / "gguf" / "smol-q8_0.gguf"
    # 8-bit blocks: about half the size of the f16 weights (135M parameters).
    assert 120e6 < exported.gguf.stat().st_size < 200e6
    tokenizer = AutoTokenizer.from_pretrained(exported.gguf.parent, gguf_file=exported.gguf.name, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(exported.gguf.parent, gguf_file=exported.gguf.name,
                                                 dtype=torch.float32).eval()
    answer = generate_answers(model, tokenizer, [build_messages("What is the capital of France?", None)], 16)
    assert "Paris" in answer.answers[0]
    assert exported.modelfile.read_text() == modelfile("smol-q8_0.gguf", None, tokenizer.chat_template)


def test_modelfile_keeps_the_system_prompt_and_template() -> None:
    text = modelfile("m.gguf", 'Answer in one sentence. Say """no""" if unsure.', "<|im_start|>{{ m }}")
    assert text.splitlines()[0] == "FROM ./m.gguf"
    assert 'SYSTEM """Answer in one sentence. Say "no" if unsure."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0" in text
    # Not ChatML: no template of ours, Ollama reads the one in the GGUF.
    assert "TEMPLATE" not in modelfile("m.gguf", None, "[INST] {{ m }} [/INST]")


def test_other_architectures_are_refused_with_a_pointer(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="not 'gpt2'.*convert_hf_to_gguf.py"):
        write_gguf(tmp_path / "gpt2", tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf*")), "nothing half-written"


def test_a_missing_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither an MLflow model URI .* nor a model folder"):
        export_model(str(tmp_path / "no-such-model"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
