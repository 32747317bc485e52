"""A team's shared stack, for real: a PostgreSQL server (pgserver), an `mlflow server`
with basic auth on 127.0.0.1 backed by it, with its own artifact store, and a local
ZenML server; `qaforge setup --tracking-uri` registers a stack on the ZenML server, one
pipeline run goes through both, then what a scheduled retrain (on a runner with only the
MLflow server) and a user do with its results: `qaforge sources-changed`, `qaforge
report`, `qaforge serve` by alias and `qaforge export` of the promoted version to a
Hugging Face folder and a GGUF."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
import yaml

from qaforge.cli import SourcesCheck
from qaforge.export import CLOSED_BOOK_NOTE
from qaforge.records import EvalMetric, ModelLabel

from fixture_site import free_port, wait_for_health
from helpers import BIN, REPO, SAMPLE, run_cli

pytestmark = pytest.mark.e2e
TOKEN = "shared-stack-token"
MODEL = "qaforge-shared"
ADMIN_PASSWORD = "shared-stack-admin-pw"
CREDENTIALS = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    import pgserver

    # Its exit hook logs after pytest has closed the output: only warnings, then.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    server.psql("CREATE DATABASE mlflow;")
    server.psql("CREATE DATABASE mlflow_auth;")
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """MLflow's basic-auth app: users and runs both in PostgreSQL, artifacts proxied."""
    artifacts = tmp_path_factory.mktemp("mlflow-artifacts")
    auth_config = artifacts.parent / "basic_auth.ini"
    auth_config.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {postgres.get_uri('mlflow_auth')}\n"
                           "admin_username = admin\n"
                           "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = artifacts.parent / "mlflow-server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
             "--backend-store-uri", postgres.get_uri("mlflow"),
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
                              "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
                              "MLFLOW_FLASK_SERVER_SECRET_KEY": "shared-stack-test"},
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            wait_for_health(url, server, log_path)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=60)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A user's project with its own copy of the sources (so a page can change) and its
    own ZenML store: nothing is shared with the other end-to-end tests but the base model."""
    root = tmp_path_factory.mktemp("shared-project")
    # All sources inside the project, as in a checkout: their ids are relative to it.
    shutil.copytree(SAMPLE / "site", root / "site")
    shutil.copy(SAMPLE / "docs" / "fleet-depot-charging.docx", root)
    shutil.copy(SAMPLE / "smoke-gold.jsonl", root)
    run_config = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    run_config["model"]["name"] = MODEL
    cfg = run_config["parameters"]["config"]
    cfg["sources"]["web"][0]["serve_dir"] = "site"
    cfg["sources"]["files"] = ["fleet-depot-charging.docx"]
    cfg["evaluation"]["gold"][0]["path"] = "smoke-gold.jsonl"
    cfg["model"] = {"cache_dir": str(REPO / ".qaforge" / "models")}
    cfg["registry"]["model_name"] = MODEL
    (root / "run.yaml").write_text(yaml.safe_dump(run_config))
    env = os.environ | CREDENTIALS | {"ZENML_CONFIG_PATH": str(root / "zenml-config"),
                                      "COLUMNS": "200", "ZENML_AUTO_OPEN_DASHBOARD": "false"}
    return root, env


@pytest.fixture(scope="module")
def zenml_server(project) -> Iterator[str]:
    """ZenML's local server (a daemon with its own database); the project's client logs in to it."""
    root, env = project
    port = free_port()
    run_cli("zenml", "login", "--local", "--port", str(port), cwd=root, env=env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        run_cli("zenml", "logout", "--local", cwd=root, env=env)


@pytest.fixture(scope="module")
def trained(project, tracking_server: str, zenml_server: str) -> str:
    root, env = project
    setup = run_cli("qaforge", "setup", "-c", "run.yaml", "--tracking-uri", tracking_server, cwd=root, env=env)
    assert f"MLflow server {tracking_server}" in setup
    run_cli("zenml", "pipeline", "run", "pipelines.domain_qa.domain_qa_pipeline", "-c", "run.yaml", cwd=root, env=env)
    return tracking_server


def test_runs_and_versions_live_in_the_servers(postgres, project, trained: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    anonymous = httpx.get(f"{trained}/api/2.0/mlflow/registered-models/search", timeout=30)
    assert anonymous.status_code == 401, "the server asks for credentials"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    client = mlflow.MlflowClient(trained)
    version = client.get_model_version_by_alias(MODEL, "production")
    assert version.version == "1"
    assert len(version.tags["sources_fingerprint"]) == 64 and len(version.tags["config_digest"]) == 16
    run = client.get_run(version.run_id)
    served, baseline = ModelLabel.CANDIDATE_RETRIEVAL, ModelLabel.BASE_RETRIEVAL  # smoke.yaml serves with passages
    assert run.data.metrics[str(EvalMetric("smoke", served, "rougeL"))] > \
        run.data.metrics[str(EvalMetric("smoke", baseline, "rougeL"))]
    # Stored in PostgreSQL, not in a local file: ask the database itself.
    rows = postgres.psql(f"\\c mlflow\nSELECT name, version FROM model_versions WHERE name = '{MODEL}';")
    assert MODEL in rows and "(1 row)" in rows
    # The artifacts went through the server (proxied), not to a path on this machine.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    root, _ = project
    assert not list(root.rglob("mlflow.db")), "nothing tracked locally"


def test_stack_and_run_live_in_the_zenml_server(project, trained: str, zenml_server: str) -> None:
    root, env = project
    status = run_cli("zenml", "status", cwd=root, env=env)
    assert f"Connected to the local ZenML server: {zenml_server}" in status
    assert "The active stack is: 'qaforge-shared'" in status
    runs = run_cli("python", "-c", "from zenml.client import Client\n"
                   "for r in Client().list_pipeline_runs(): print(r.pipeline.name, r.status.value)", cwd=root, env=env)
    assert runs.split() == ["domain_qa_pipeline", "completed"]
    # The tracker refers to a ZenML secret: no password in the stack's configuration.
    tracker = run_cli("zenml", "experiment-tracker", "describe", "mlflow_tracker_qaforge-shared", cwd=root, env=env)
    assert ADMIN_PASSWORD not in tracker and "{{qaforge-shared-mlflow.tracking_password}}" in tracker


def test_sources_changed_asks_the_tracking_server(project, trained: str, tmp_path: Path) -> None:
    root, env = project
    out = run_cli("qaforge", "sources-changed", "-c", "run.yaml", cwd=root, env=env, ok=(SourcesCheck.UNCHANGED,))
    assert "Unchanged" in out
    # A fresh runner: another checkout of the project, with a new ZenML store and no
    # local state, compares equal all the same.
    runner = tmp_path / "runner"
    shutil.copytree(root, runner, ignore=shutil.ignore_patterns(".zen", ".qaforge"))
    runner_env = env | {"ZENML_CONFIG_PATH": str(tmp_path / "zenml")}
    run_cli("qaforge", "setup", "-c", "run.yaml", "--tracking-uri", trained, cwd=runner, env=runner_env)
    run_cli("qaforge", "sources-changed", "-c", "run.yaml", cwd=runner, env=runner_env, ok=(SourcesCheck.UNCHANGED,))

    page = runner / "site" / "index.html"
    page.write_text(page.read_text().replace("</main>", "<p>Depot chargers now run from 5 am to midnight.</p></main>"))
    out = run_cli("qaforge", "sources-changed", "-c", "run.yaml", cwd=runner, env=runner_env, ok=(SourcesCheck.CHANGED,))
    assert "the sources differ from those v1 was trained on" in out

    config = yaml.safe_load((runner / "run.yaml").read_text())
    config["parameters"]["config"]["training"]["max_steps"] = 17
    (runner / "run.yaml").write_text(yaml.safe_dump(config))
    out = run_cli("qaforge", "sources-changed", "-c", "run.yaml", cwd=runner, env=runner_env, ok=(SourcesCheck.CHANGED,))
    assert "the config differs" in out

    # No server to ask is an error, not "changed".
    run_cli("qaforge", "setup", "-c", "run.yaml", "--tracking-uri", "http://127.0.0.1:9", cwd=runner, env=runner_env)
    run_cli("qaforge", "sources-changed", "-c", "run.yaml", cwd=runner, env=runner_env | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
         ok=(SourcesCheck.ERROR,))


def test_report_comes_from_the_tracking_server(project, trained: str, tmp_path: Path) -> None:
    root, env = project
    out = run_cli("qaforge", "report", "-c", "run.yaml", "--out", str(tmp_path / "report"), cwd=root, env=env)
    assert f"{MODEL} v1" in out
    assert "rougeL" in (tmp_path / "report" / "report" / "report.md").read_text()


def test_served_by_alias_from_the_tracking_server(project, trained: str) -> None:
    root, env = project
    port = free_port()
    log_path = root / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(BIN / "qaforge"), "serve", "-c", "run.yaml", "--port", str(port)],
            cwd=root, env=env | {"QAFORGE_API_TOKENS": TOKEN}, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            health = wait_for_health(base, server, log_path).json()
            assert health["version"] == "1" and health["model"] == f"models:/{MODEL}@production"
            r = httpx.post(f"{base}/v1/chat/completions", timeout=120, headers={"Authorization": f"Bearer {TOKEN}"},
                           json={"model": MODEL, "max_tokens": 16,
                                 "messages": [{"role": "user", "content": "What is a charging depot?"}]})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"].strip()
        finally:
            server.terminate()
            server.wait(timeout=60)


def test_export_gives_the_same_greedy_answer_as_gguf(project, trained: str, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qaforge.modeling import generate_answers
    from qaforge.prompting import build_messages

    root, env = project
    out = tmp_path / "export"
    # The smoke model answers from retrieved passages, which nothing retrieves in a GGUF.
    refused = run_cli("qaforge", "export", "-c", "run.yaml", "--out", str(out), cwd=root, env=env, ok=(1,))
    assert "answers from retrieved passages" in refused and not out.exists()
    # f32, so that the two must agree token for token; f16 and q8_0 round the weights.
    printed = run_cli("qaforge", "export", "-c", "run.yaml", "--out", str(out), "--gguf-type", "f32", "--closed-book",
                      cwd=root, env=env)
    gguf = out / "gguf" / f"{MODEL}-f32.gguf"
    assert str(gguf) in printed and "Warning: this model was trained to answer from retrieved passages" in printed
    assert (out / "hf" / "index").is_dir(), "hf/ keeps the index it answers from"
    system_prompt = yaml.safe_load((root / "run.yaml").read_text())["parameters"]["config"]["prompt"]["system_prompt"]
    modelfile = (out / "gguf" / "Modelfile").read_text()
    assert modelfile.startswith(f"{CLOSED_BOOK_NOTE}\nFROM ./{gguf.name}\n")
    assert f'SYSTEM """{system_prompt}"""' in modelfile
    assert '<|im_start|>{{ .Role }}' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile

    conversations = [build_messages(q, system_prompt) for q in
                     ("What is a charging depot?", "How long does a fleet vehicle take to charge overnight?")]
    answers = []
    for folder, gguf_file in ((out / "hf", None), (gguf.parent, gguf.name)):
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left", **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
        answers.append(generate_answers(model, tokenizer, conversations, 32).answers)
    assert answers[0] == answers[1] and all(a.strip() for a in answers[0])
