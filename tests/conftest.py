"""Shared fixtures. The environment is set before anything imports ZenML or MLflow:
tests never touch the user's ZenML store, never send analytics, never download."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ["ZENML_CONFIG_PATH"] = tempfile.mkdtemp(prefix="qaforge-zenml-")
# Its local artifact store holds every test pipeline's models (~1 GB a session).
atexit.register(shutil.rmtree, os.environ["ZENML_CONFIG_PATH"], ignore_errors=True)
os.environ.update(
    ZENML_ANALYTICS_OPT_IN="false",
    ZENML_LOGGING_COLORS_DISABLED="true",
    MLFLOW_DISABLE_TELEMETRY="true",
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    CRAWL4AI_NO_CLOUD_NOTICE="1",
)

import pytest

from qaforge.config import ModelConfig, SourcesConfig

from helpers import REPO, SAMPLE


@pytest.fixture(scope="session")
def base_model_dir() -> str:
    from qaforge.modeling import resolve_base_model

    # The repo's own cache: the GGUF is dequantized once per checkout, not per test run.
    return resolve_base_model(ModelConfig(cache_dir=REPO / ".qaforge" / "models"))


@pytest.fixture(scope="session")
def tokenizer(base_model_dir: str):
    from qaforge.modeling import load_tokenizer

    return load_tokenizer(base_model_dir)


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory):
    from qaforge.ingest import ingest

    sources = SourcesConfig(
        web=[{"start": "index.html", "serve_dir": SAMPLE / "site"}],
        files=[SAMPLE / "docs"],
        state_dir=tmp_path_factory.mktemp("ingest-state"),
    )
    corpus, report = ingest(sources)
    assert not report.failures, report.failures
    return corpus


@pytest.fixture(scope="session")
def sample_chunks(sample_corpus, tokenizer):
    from qaforge.chunking import chunk_corpus

    return chunk_corpus(sample_corpus, tokenizer, max_tokens=192)


@pytest.fixture(scope="session")
def sample_dataset(sample_chunks):
    from qaforge.config import load_config
    from qaforge.synthesis import synthesize

    # As the embedded default synthesizes it (its split suits a corpus this small).
    return synthesize(sample_chunks, load_config(REPO / "configs" / "default.yaml").synthesis)
