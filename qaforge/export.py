"""Take a trained model out of MLflow: a Hugging Face folder (weights, tokenizer, chat
template, the trained system prompt) and a GGUF file with an Ollama Modelfile, for
llama.cpp, Ollama and LM Studio. GGUF is written for llama-architecture models
(SmolLM, Llama, TinyLlama and their fine-tunes) with the `gguf` package; other
architectures get the Hugging Face folder and a pointer to llama.cpp's converter."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qaforge.fsutil import write_atomic

if TYPE_CHECKING:
    from transformers import PretrainedConfig

log = logging.getLogger(__name__)

QAFORGE_FILE = "qaforge.json"


class GGUFType(StrEnum):
    """Tensor type of the GGUF's matrices (norms stay f32, as llama.cpp writes them)."""

    F32 = "f32"
    F16 = "f16"
    Q8_0 = "q8_0"


@dataclass(frozen=True)
class Exported:
    hf_dir: Path
    gguf: Path | None
    modelfile: Path | None
    system_prompt: str | None
    retrieval: bool = False  # it answers from retrieved passages: hf/ carries its index, a GGUF runs without


def fetch_model(location: str, work: Path) -> tuple[Path, str | None, Path | None]:
    """The merged model folder, the trained system prompt and the retrieval index (if it
    answers from passages) of a logged qaforge model (any MLflow URI) or of a local folder."""
    from qaforge.served import (
        INDEX_ARTIFACT,
        SYSTEM_PROMPT_KEY,
        TOP_K_KEY,
        WEIGHTS_ARTIFACT,
        artifact_location,
        is_mlflow_uri,
        logged_file,
        logged_flavor,
    )

    if not is_mlflow_uri(location):
        folder = Path(location)
        if not folder.is_dir():
            raise ValueError("neither an MLflow model URI (models:/, runs:/, mlflow-artifacts:/) nor a model folder")
        saved = json.loads((folder / QAFORGE_FILE).read_text()) if (folder / QAFORGE_FILE).exists() else {}
        index = saved.get("retrieval_index")
        return folder, saved.get("system_prompt"), folder / index if index else None
    where = artifact_location(location)
    flavor = logged_flavor(where, work)
    artifacts, config = flavor["artifacts"], flavor.get("config") or {}
    index = (logged_file(where, artifacts[INDEX_ARTIFACT]["path"], work)
             if INDEX_ARTIFACT in artifacts and int(config.get(TOP_K_KEY) or 0) else None)
    return logged_file(where, artifacts[WEIGHTS_ARTIFACT]["path"], work), config.get(SYSTEM_PROMPT_KEY), index


def write_hf_folder(model_dir: Path, out: Path, system_prompt: str | None, index: Path | None) -> Path:
    """A folder `from_pretrained` loads as is; qaforge.json keeps the system prompt the
    model was trained with (its answers depend on it), and the index when it answers
    from retrieved passages."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model_dir, out)
    if index is not None:  # already there when the folder is an earlier export's hf/
        shutil.copytree(index, out / "index", dirs_exist_ok=True)
    write_atomic(out / QAFORGE_FILE, json.dumps(
        {"system_prompt": system_prompt, "retrieval_index": "index" if index is not None else None}, indent=1))
    return out


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k projections (transformers undoes it on load)."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _pre_tokenizer(hf_dir: Path) -> str:
    """llama.cpp's name for how the tokenizer splits text before BPE, read from
    tokenizer.json: GPT-2's regex, or SmolLM's single digits before it."""
    pre = json.loads((hf_dir / "tokenizer.json").read_text()).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    kinds = [(s.get("type"), s.get("individual_digits")) for s in steps]
    if kinds == [("ByteLevel", None)]:
        return "gpt-2"
    if kinds == [("Digits", True), ("ByteLevel", None)]:
        return "smollm"
    raise ValueError(f"the tokenizer's pre-tokenizer {kinds} has no llama.cpp name qaforge knows: llama.cpp would "
                     "split text differently from the trained tokenizer. Use --no-gguf and llama.cpp's "
                     "convert_hf_to_gguf.py, which knows more of them")


def _rope_theta(config: PretrainedConfig) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def _refuse_unwritten(config: PretrainedConfig) -> None:
    """What this writer does not put into the GGUF, and llama.cpp would then get wrong:
    scaled rotary embeddings (Llama 3.1's `llama3`, `linear`, `yarn`, ...) and a head
    size other than hidden_size / heads. Refused rather than exported "successfully"."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type != "default":
        raise ValueError(f"rope_type '{rope_type}' (scaled rotary embeddings) is not written by qaforge's GGUF "
                         "export: use --no-gguf and llama.cpp's convert_hf_to_gguf.py")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if head_dim * heads != config.hidden_size:
        raise ValueError(f"head_dim {head_dim} x {heads} heads is not hidden_size {config.hidden_size}: qaforge's "
                         "GGUF export writes only that layout; use --no-gguf and llama.cpp's convert_hf_to_gguf.py")


def write_gguf(hf_dir: Path, path: Path, tensor_type: GGUFType = GGUFType.F16, name: str = "qaforge") -> Path:
    """Convert a llama-architecture Hugging Face folder to GGUF: hyperparameters, the
    BPE tokenizer with its merges, special tokens and chat template, and every tensor."""
    import gguf
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(hf_dir)
    if config.model_type != "llama":
        raise ValueError(
            f"GGUF export supports llama-architecture models, not '{config.model_type}': convert the exported "
            f"Hugging Face folder with llama.cpp's convert_hf_to_gguf.py instead"
        )
    _refuse_unwritten(config)
    pre_tokenizer = _pre_tokenizer(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    file_type = {GGUFType.F32: gguf.LlamaFileType.ALL_F32, GGUFType.F16: gguf.LlamaFileType.MOSTLY_F16,
                 GGUFType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}[tensor_type]

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".gguf.partial")
    writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)

    vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_token_list([vocab.get(i, f"[PAD{i}]") for i in range(config.vocab_size)])
    writer.add_token_types([
        gguf.TokenType.CONTROL if i in special else
        gguf.TokenType.UNUSED if i not in vocab else gguf.TokenType.NORMAL
        for i in range(config.vocab_size)
    ])
    # Merges, bos/eos/pad ids and the chat template, read from the folder's tokenizer files.
    gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=config.vocab_size).add_to_gguf(writer)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    state = {}
    for file in sorted(hf_dir.glob("*.safetensors")):
        state.update(load_file(file))
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # llama.cpp reuses token_embd for the output
    for hf_name, tensor in state.items():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"{hf_name}: no GGUF name for this tensor of a llama model")
        data = tensor.to(torch.float32).numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        if data.ndim <= 1 or tensor_type == GGUFType.F32:
            writer.add_tensor(gguf_name, data)
        elif tensor_type == GGUFType.F16:
            writer.add_tensor(gguf_name, data.astype(np.float16))
        else:
            quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    partial.replace(path)
    return path


# Ollama's Go template for ChatML, the format SmolLM2 and Qwen are trained on. Ollama
# hands a template the system turn twice, as `.System` and as the first of `.Messages`
# (the Modelfile's SYSTEM when the request has none): rendering the messages alone puts
# it in once, where training and qaforge's server put it.
CHATML_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


CLOSED_BOOK_NOTE = ("# This model was trained to answer from retrieved passages, which neither Ollama nor llama.cpp\n"
                    "# retrieves: asked here it answers closed book, as it was not evaluated. qaforge serve\n"
                    "# (or hf/ with hf/index/) answers as it was trained.")


def modelfile(gguf_name: str, system_prompt: str | None, chat_template: str, closed_book_note: bool = False) -> str:
    """An Ollama Modelfile: the GGUF beside it, the trained system prompt, greedy
    decoding as qaforge evaluates, and the prompt template when it is ChatML (else
    Ollama reads the chat template embedded in the GGUF)."""
    lines = [CLOSED_BOOK_NOTE, f"FROM ./{gguf_name}"] if closed_book_note else [f"FROM ./{gguf_name}"]
    if "<|im_start|>" in chat_template:
        lines += [f'TEMPLATE """{CHATML_TEMPLATE}"""', 'PARAMETER stop "<|im_end|>"']
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt.replace(chr(34) * 3, chr(34))}"""')
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def export_model(location: str, out: Path, tensor_type: GGUFType = GGUFType.F16, gguf: bool = True,
                 name: str = "qaforge", closed_book: bool = False) -> Exported:
    """Write `out/hf/` and, for a llama-architecture model, `out/gguf/<name>.gguf` with
    `out/gguf/Modelfile`. A model that answers from retrieved passages gets a GGUF only
    with `closed_book`: nothing retrieves for it there."""
    with tempfile.TemporaryDirectory(prefix="qaforge-export-") as work:
        model_dir, system_prompt, index = fetch_model(location, Path(work))
        if gguf and index is not None and not closed_book:
            raise ValueError("this model answers from retrieved passages, and a GGUF for llama.cpp or Ollama runs "
                             "without them (closed book, as it was never evaluated): export with --no-gguf for hf/ "
                             "with its index, or with --closed-book to write the GGUF anyway")
        hf_dir = write_hf_folder(model_dir, out / "hf", system_prompt, index)
    retrieval = index is not None
    if not gguf:
        return Exported(hf_dir, None, None, system_prompt, retrieval)
    gguf_path = write_gguf(hf_dir, out / "gguf" / f"{name}-{tensor_type}.gguf", tensor_type, name)
    from transformers import AutoTokenizer

    template = AutoTokenizer.from_pretrained(hf_dir).chat_template or ""
    mf = out / "gguf" / "Modelfile"
    write_atomic(mf, modelfile(gguf_path.name, system_prompt, template, closed_book_note=retrieval))
    return Exported(hf_dir, gguf_path, mf, system_prompt, retrieval)


def push_to_hub(hf_dir: Path, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload the Hugging Face folder to the Hub (HF_TOKEN, or `token`); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(hf_dir), repo_id=repo_id,
                               commit_message="qaforge export")
    return commit.commit_url
