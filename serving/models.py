"""The served model: loaded from the MLflow registry (`models:/<name>@<alias>`) or a
local model folder, and swapped for a new version when the alias moves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qaforge.config import InferenceOptions
from qaforge.prompting import last_question
from qaforge.records import Passage
from qaforge.retrieval import Retriever

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    uri: str
    name: str
    version: str | None
    model: Any
    tokenizer: Any
    system_prompt: str | None
    retriever: Retriever | None = None  # the index logged with the model, when it answers from passages
    top_k: int = 0

    def retrieve(self, messages: list[dict[str, str]]) -> list[Passage] | None:
        """The passages for the conversation's newest question; None for a closed-book model."""
        if self.retriever is None or not self.top_k:
            return None
        return self.retriever.search(last_question(messages), self.top_k)


def registry_version(uri: str) -> str | None:
    """The version a `models:/` URI points at now; None for a local folder."""
    if not uri.startswith("models:/"):
        return None
    from mlflow import MlflowClient

    name, sep, alias = uri.removeprefix("models:/").partition("@")
    if sep:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    return name.rpartition("/")[2]


def model_name(uri: str) -> str:
    if uri.startswith("models:/"):
        return uri.removeprefix("models:/").partition("@")[0].partition("/")[0]
    return Path(uri).name


def load_model(uri: str, options: InferenceOptions | None = None) -> LoadedModel:
    """Load the version the URI points at now (pinned, so a concurrent alias move cannot
    make the recorded version and the loaded weights disagree), on the device and in
    the precision `options` ask for."""
    options = options or InferenceOptions()
    version = registry_version(uri)
    if version is None:
        from qaforge.modeling import load_for_inference

        model, tokenizer = load_for_inference(uri, options)
        return LoadedModel(uri, model_name(uri), None, model, tokenizer, None)
    from qaforge.mlflow_model import load_qa_model

    qa = load_qa_model(f"models:/{model_name(uri)}/{version}", options)
    return LoadedModel(uri, model_name(uri), version, qa.model, qa.tokenizer, qa.system_prompt, qa.retriever, qa.top_k)


class ModelHolder:
    """The current model. Requests read `current` once and keep that object, so a swap
    never changes the model under a request in flight."""

    def __init__(
        self,
        current: LoadedModel,
        options: InferenceOptions | None = None,
        on_swap: Callable[[LoadedModel], None] = lambda m: None,
    ) -> None:
        self.current = current
        self.options = options
        self.on_swap = on_swap

    async def watch(self, interval: float) -> None:
        """Poll the alias; load a new version off the event loop, then swap."""
        while True:
            await asyncio.sleep(interval)
            try:
                version = await asyncio.to_thread(registry_version, self.current.uri)
                if version == self.current.version:
                    continue
                log.info("model %s moved to v%s; loading it", self.current.uri, version)
                loaded = await asyncio.to_thread(load_model, self.current.uri, self.options)
            except Exception:  # a registry hiccup must not stop serving the loaded model
                log.exception("checking %s for a new version failed; still serving v%s",
                              self.current.uri, self.current.version)
                continue
            previous, self.current = self.current, loaded
            self.on_swap(loaded)
            log.info("now serving %s v%s (was v%s)", loaded.uri, loaded.version, previous.version)
