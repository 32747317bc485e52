"""A model as it answers: its weights, and how it is asked (the system prompt it was
trained with and, for a model that answers from passages, the index it was evaluated
with and how many passages it gets). The server and evaluation load models here and
build prompts here, so a model is scored exactly as it is served.

A logged model (`models:/...`, `runs:/...`) carries its system prompt, `top_k` and
index; a plain folder carries none, and whoever loads it says how it is asked.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from qaforge.config import InferenceOptions
from qaforge.prompting import conversation_query, encode_prompt, with_retrieved, with_system_prompt
from qaforge.records import ModelsUri, Passage, is_mlflow_uri
from qaforge.retrieval import Retriever

log = logging.getLogger(__name__)

# Keys of a logged model's config (mlflow_model.log_qa_model writes them).
SYSTEM_PROMPT_KEY = "system_prompt"
TOP_K_KEY = "retrieval_top_k"
# Artifacts of a logged model.
WEIGHTS_ARTIFACT = "model_dir"
INDEX_ARTIFACT = "index"


@dataclass(frozen=True)
class Answering:
    """How a model is asked: the system prompt a conversation gets when it brings none,
    and the `top_k` passages retrieved for its newest question (none when closed book)."""

    system_prompt: str | None
    retriever: Retriever | None = None
    top_k: int = 0

    @property
    def retrieves(self) -> bool:
        return self.retriever is not None and self.top_k > 0

    def retrieve(self, messages: list[dict[str, str]]) -> list[Passage] | None:
        """The passages for the conversation's newest question in the context of the one
        before it; None when closed book."""
        if self.retriever is None or not self.retrieves:
            return None
        return self.retriever.search(conversation_query(messages), self.top_k)

    def conversation(self, messages: list[dict[str, str]], passages: list[Passage] | None
                     ) -> list[dict[str, str]]:
        """The messages as the model reads them: the system prompt added where there is
        none, the passages put into the newest question."""
        return with_retrieved(with_system_prompt(messages, self.system_prompt), passages or [])

    @classmethod
    def logged(cls, config: dict[str, Any], index_dir: str | Path | None) -> Answering:
        """How a logged model is asked, from its config and its index artifact."""
        top_k = int(config.get(TOP_K_KEY) or 0)
        retriever = Retriever.load(Path(index_dir)) if index_dir and top_k else None
        return cls(config.get(SYSTEM_PROMPT_KEY), retriever, top_k if retriever else 0)


@dataclass(frozen=True)
class LoadedModel:
    uri: str
    name: str
    version: str | None
    model: Any
    tokenizer: Any
    answering: Answering

    def prompt(self, messages: list[dict[str, str]]) -> tuple[list[int], list[Passage] | None]:
        """A conversation's prompt token ids, as this model is asked, and the passages in it."""
        passages = self.answering.retrieve(messages)
        return encode_prompt(self.tokenizer, self.answering.conversation(messages, passages)), passages

    def asked(self, answering: Answering) -> LoadedModel:
        """The same weights, asked another way (evaluation's closed-book and retrieval modes)."""
        return replace(self, answering=answering)


def model_name(uri: str) -> str:
    parsed = ModelsUri.parse(uri)
    return parsed.name if parsed else Path(uri).name


def registry_version(uri: str) -> str | None:
    """The version a `models:/` URI points at now; None for anything else."""
    parsed = ModelsUri.parse(uri)
    if parsed is None:
        return None
    if parsed.version is not None:
        return parsed.version
    from mlflow import MlflowClient

    from qaforge.tracking import version_by_alias_from

    assert parsed.alias is not None  # a parsed models:/ URI names a version or an alias
    found = version_by_alias_from(MlflowClient(), parsed.name, parsed.alias)
    if found is None:
        raise LookupError(f"model '{parsed.name}' has no version with alias @{parsed.alias}")
    return str(found.version)


def artifact_location(uri: str) -> str:
    """Where a logged model's files are: its registered source, its logged model's
    artifact location, or the URI itself (`runs:/`, a folder)."""
    import mlflow
    from mlflow import MlflowClient

    parsed, version = ModelsUri.parse(uri), registry_version(uri)
    if parsed is not None and version is not None:
        return MlflowClient().get_model_version_download_uri(parsed.name, version)
    if uri.startswith("models:/"):
        return mlflow.get_logged_model(uri.removeprefix("models:/")).artifact_location
    return uri


def logged_file(location: str, path: str, into: Path | None = None) -> Path:
    """One file or folder of a logged model, downloaded into `into` (a local store hands
    its own path when `into` is None)."""
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{location.rstrip('/')}/{path}",
                                                    dst_path=str(into) if into else None))


def logged_flavor(location: str, into: Path | None = None) -> dict[str, Any]:
    from mlflow.models import Model

    return Model.load(logged_file(location, "MLmodel", into)).flavors["python_function"]


@contextmanager
def download_dir(location: str) -> Iterator[Path | None]:
    """Where a logged model's files are downloaded while they are read into memory: None
    for a local store, which hands its own paths; otherwise a temporary folder removed
    afterwards, since mlflow leaves each download it makes without a destination behind
    (a 0.5 GB copy of the weights per load, on every scheduled evaluation)."""
    if urlparse(location).scheme in ("", "file"):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="qaforge-download-") as tmp:
        yield Path(tmp)


def _answering_at(location: str, flavor: dict[str, Any], into: Path | None) -> Answering:
    config = flavor.get("config") or {}
    index = flavor["artifacts"].get(INDEX_ARTIFACT)
    return Answering.logged(config,
                            logged_file(location, index["path"], into) if index and config.get(TOP_K_KEY) else None)


def logged_answering(uri: str) -> Answering:
    """How a logged model is asked, read without downloading its weights."""
    location = artifact_location(uri)
    with download_dir(location) as into:
        return _answering_at(location, logged_flavor(location, into), into)


def load_model(uri: str, options: InferenceOptions | None = None) -> LoadedModel:
    """The model a URI names, on the device and in the precision `options` ask for. A
    registry URI is pinned to the version it points at now, so a concurrent alias move
    cannot make the recorded version and the loaded weights disagree. A plain folder is
    asked with no system prompt and closed book."""
    from qaforge.modeling import load_for_inference

    options = options or InferenceOptions()
    if not is_mlflow_uri(uri):
        model, tokenizer = load_for_inference(uri, options)
        return LoadedModel(uri, model_name(uri), None, model, tokenizer, Answering(None))
    version = registry_version(uri)
    parsed = ModelsUri.parse(uri)
    location = artifact_location(str(ModelsUri(parsed.name, version=version)) if parsed else uri)
    with download_dir(location) as into:
        flavor = logged_flavor(location, into)
        answering = _answering_at(location, flavor, into)
        weights = logged_file(location, flavor["artifacts"][WEIGHTS_ARTIFACT]["path"], into)
        model, tokenizer = load_for_inference(str(weights), options)
    return LoadedModel(uri, model_name(uri), version, model, tokenizer, answering)
