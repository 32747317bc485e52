"""The registered model: an MLflow pyfunc wrapping the merged transformers model,
so `models:/<name>@production` loads with the same prompt format it was trained on."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow

from qaforge.config import InferenceOptions
from qaforge.modeling import generate_answers, load_for_inference
from qaforge.prompting import build_messages
from qaforge.records import Passage
from qaforge.retrieval import Retriever


# Logged with every model so that a loader can override them:
# mlflow.pyfunc.load_model(uri, model_config=inference_options(...)).
INFERENCE_KEYS = tuple(InferenceOptions.model_fields)


def inference_options(options: InferenceOptions) -> dict[str, str]:
    return options.model_dump(mode="json", include=set(INFERENCE_KEYS))


class QAModel(mlflow.pyfunc.PythonModel):
    """The model, its trained system prompt and, when it answers from retrieved
    passages, the index it was trained and evaluated with and how many passages it gets."""

    def load_context(self, context: Any) -> None:
        config = context.model_config
        options = InferenceOptions(**{k: config[k] for k in INFERENCE_KEYS if config.get(k) is not None})
        self.model, self.tokenizer = load_for_inference(context.artifacts["model_dir"], options)
        self.system_prompt: str | None = config.get("system_prompt")
        self.top_k = int(config.get("retrieval_top_k") or 0)
        index = context.artifacts.get("index")
        self.retriever = Retriever.load(Path(index)) if index and self.top_k else None

    def context_for(self, question: str) -> list[Passage]:
        return self.retriever.search(question, self.top_k) if self.retriever else []

    def predict(self, context: Any, model_input: list[str], params: dict | None = None) -> list[str]:
        max_new_tokens = int((params or {}).get("max_new_tokens", 128))
        conversations = [build_messages(q, self.system_prompt, context=self.context_for(q)) for q in model_input]
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
        index = {"index": str(retriever.save(Path(tmp) / "index"))} if retriever is not None else {}
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=QAModel(),
            artifacts={"model_dir": merged_dir} | index,
            model_config={"system_prompt": system_prompt, "retrieval_top_k": top_k}
            | inference_options(InferenceOptions()),
            pip_requirements=["mlflow", "torch", "transformers", "pydantic", "bm25s", "snowballstemmer"],
        )
    return info.model_uri


def is_mlflow_uri(location: str) -> bool:
    return location.startswith(("runs:/", "models:/", "mlflow-artifacts:/"))


def load_qa_model(uri: str, options: InferenceOptions) -> QAModel:
    """A logged model, wherever its artifacts are (MLflow downloads them), on the device
    and in the precision `options` ask for."""
    return mlflow.pyfunc.load_model(uri, model_config=inference_options(options)).unwrap_python_model()


def load_model_and_tokenizer(location: str, options: InferenceOptions) -> tuple[Any, Any]:
    """A model by MLflow URI or local folder."""
    if is_mlflow_uri(location):
        loaded = load_qa_model(location, options)
        return loaded.model, loaded.tokenizer
    return load_for_inference(location, options)
