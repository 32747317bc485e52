"""The registered model: an MLflow pyfunc wrapping the merged transformers model,
so `models:/<name>@production` loads with the same prompt format it was trained on."""

from __future__ import annotations

from typing import Any

import mlflow

from qaforge.config import InferenceOptions
from qaforge.modeling import generate_answers, load_for_inference
from qaforge.prompting import build_messages


# Logged with every model so that a loader can override them:
# mlflow.pyfunc.load_model(uri, model_config=inference_options(...)).
INFERENCE_KEYS = tuple(InferenceOptions.model_fields)


def inference_options(options: InferenceOptions) -> dict[str, str]:
    return options.model_dump(mode="json", include=set(INFERENCE_KEYS))


class QAModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        config = context.model_config
        options = InferenceOptions(**{k: config[k] for k in INFERENCE_KEYS if config.get(k) is not None})
        self.model, self.tokenizer = load_for_inference(context.artifacts["model_dir"], options)
        self.system_prompt: str | None = config.get("system_prompt")

    def predict(self, context: Any, model_input: list[str], params: dict | None = None) -> list[str]:
        max_new_tokens = int((params or {}).get("max_new_tokens", 128))
        conversations = [build_messages(q, self.system_prompt) for q in model_input]
        return generate_answers(self.model, self.tokenizer, conversations, max_new_tokens).answers


def log_qa_model(merged_dir: str, system_prompt: str | None) -> str:
    """Log the merged model into the active MLflow run; return its model URI.

    The pickled QAModel refers to this module by name (no copy of qaforge's code is
    logged), so a model loads with the installed qaforge and never shadows it.
    """
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=QAModel(),
        artifacts={"model_dir": merged_dir},
        model_config={"system_prompt": system_prompt} | inference_options(InferenceOptions()),
        pip_requirements=["mlflow", "torch", "transformers", "pydantic"],
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
