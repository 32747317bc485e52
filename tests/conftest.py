"""Shared fixtures. The environment is set before anything imports ZenML or MLflow:
tests never touch the user's ZenML store, never send analytics, never download."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
import yaml

from qaforge.config import ModelConfig, SourcesConfig

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
BIN = Path(sys.executable).parent  # the CLIs installed beside this interpreter


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> str:
    """Run one of the installed CLIs as a user would; its output, after checking its exit code."""
    result = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=1200,
                            env=env if env is not None else os.environ | {"COLUMNS": "200"})
    output = result.stdout + result.stderr
    assert result.returncode in ok, f"{' '.join(args)} exited {result.returncode}:\n{output[-6000:]}"
    return output


def user_project(root: Path, config: str) -> dict[str, Any]:
    """`configs/<config>` as a user's project at `root` holds it: the run config, with
    its repository-relative sources and gold sets made absolute, the repo's model cache
    and training output under `root`. Written to `root/run.yaml` by `write_run_config`."""
    run_config = yaml.safe_load((REPO / "configs" / config).read_text())
    cfg = run_config["parameters"]["config"]
    for web in cfg["sources"].get("web", []):
        web["serve_dir"] = str(REPO / web["serve_dir"])
    cfg["sources"]["files"] = [str(REPO / f) for f in cfg["sources"].get("files", [])]
    for gold in cfg.get("evaluation", {}).get("gold", []):
        gold["path"] = str(REPO / gold["path"])
    cfg["model"] = cfg.get("model", {}) | {"cache_dir": str(REPO / ".qaforge" / "models")}
    cfg["training"]["output_dir"] = str(root / "train")
    return run_config


def write_run_config(root: Path, run_config: dict[str, Any], name: str = "run.yaml") -> None:
    (root / name).write_text(yaml.safe_dump(run_config))


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


@contextmanager
def running(app: Any, settings: Any) -> Iterator[str]:
    """The API app served by uvicorn on a free port, configured as `qaforge serve` does."""
    import uvicorn

    from serving.server import uvicorn_config

    from fixture_site import free_port

    server = uvicorn.Server(uvicorn_config(app, settings, "127.0.0.1", free_port(), log_config=None,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
