"""The registered model: an MLflow pyfunc wrapping the merged transformers model,
so `models:/<name>@production` loads with the same prompt format it was trained on."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc.model import PythonModel

from qaforge.config import InferenceOptions
from qaforge.modeling import generate_answers, load_for_inference
from qaforge.retrieval import Retriever
from qaforge.served import INDEX_ARTIFACT, SYSTEM_PROMPT_KEY, TOP_K_KEY, WEIGHTS_ARTIFACT, Answering

# Logged with every model so that a loader can override them:
# mlflow.pyfunc.load_model(uri, model_config=inference_options(...)).
INFERENCE_KEYS = tuple(InferenceOptions.model_fields)


def inference_options(options: InferenceOptions) -> dict[str, str]:
    return options.model_dump(mode="json", include=set(INFERENCE_KEYS))


class QAModel(PythonModel):
    """The model, its trained system prompt and, when it answers from retrieved
    passages, the index it was trained and evaluated with and how many passages it gets,
    for `mlflow.pyfunc.load_model` users. qaforge itself loads logged models with
    `served.load_model`, which reads the same config and artifacts."""

    def load_context(self, context: Any) -> None:
        config = context.model_config
        options = InferenceOptions(**{k: config[k] for k in INFERENCE_KEYS if config.get(k) is not None})
        self.model, self.tokenizer = load_for_inference(context.artifacts[WEIGHTS_ARTIFACT], options)
        self.answering = Answering.logged(config, context.artifacts.get(INDEX_ARTIFACT))

    def predict(self, context: Any, model_input: list[str], params: dict | None = None) -> list[str]:
        max_new_tokens = int((params or {}).get("max_new_tokens", 128))
        conversations = []
        for question in model_input:
            messages = [{"role": "user", "content": question}]
            conversations.append(self.answering.conversation(messages, self.answering.retrieve(messages)))
        return generate_answers(self.model, self.tokenizer, conversations, max_new_tokens).answers


def log_qa_model(merged_dir: str, system_prompt: str | None, retriever: Retriever | None = None,
                 top_k: int = 0) -> str:
    """Log the merged model into the active MLflow run; return its model URI. With a
    retriever, its index is logged with the model; with `top_k` > 0 the model answers
    from that many passages of it wherever it is loaded.

    The pickled QAModel refers to this module by name (no copy of qaforge's code is
    logged), so a model loads with the installed qaforge and never shadows it.
    """
    with tempfile.TemporaryDirectory() as tmp:
        index = {INDEX_ARTIFACT: str(retriever.save(Path(tmp) / "index"))} if retriever is not None else {}
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=QAModel(),
            artifacts={WEIGHTS_ARTIFACT: merged_dir} | index,
            model_config={SYSTEM_PROMPT_KEY: system_prompt, TOP_K_KEY: top_k}
            | inference_options(InferenceOptions()),
            pip_requirements=["mlflow", "torch", "transformers", "pydantic", "bm25s", "snowballstemmer"],
        )
    return info.model_uri
