"""`make demo` as a new user runs it: the shipped default config, unchanged but for where
its files are, through `qaforge setup` and `zenml pipeline run`; then the promoted model,
served, asked the sample corpus's plainest question and a follow-up over the API."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import mlflow
import pytest

from qaforge.config import RegistryConfig
from qaforge.records import EvalMetric

from fixture_site import free_port, wait_for_health
from helpers import BIN, run_cli, user_project, write_run_config

pytestmark = pytest.mark.e2e
TOKEN = "demo-token"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    write_run_config(root, user_project(root, "default.yaml"))
    run_cli("qaforge", "setup", "-c", "run.yaml", cwd=root)
    run_cli("zenml", "pipeline", "run", "pipelines.domain_qa.domain_qa_pipeline", "-c", "run.yaml", cwd=root)
    return root


def test_default_promotes_a_model_that_answers_from_its_sources(demo: Path) -> None:
    info = run_cli("qaforge", "info", "-c", "run.yaml", cwd=demo)
    assert "models:/qaforge-ev@production = v1" in info, info
    client = mlflow.MlflowClient(re.search(r"MLflow tracking URI: (\S+)", info)[1])
    run = client.get_run(client.get_model_version_by_alias("qaforge-ev", "production").run_id)
    decision = json.loads(Path(client.download_artifacts(run.info.run_id, "promotion/decision.json")).read_text())
    assert decision["promoted"] and decision["versus_base"]["low"] > 0, decision["reason"]
    # The default trains with passages and is served with them: the gate compared it with
    # the base model given the same passages, and the guard held.
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/report.json")).read_text())
    assert (report["gated"], report["baseline"]) == ("candidate_retrieval", "base_retrieval")
    assert run.data.params["training.context"] != "none"
    guard = {label: run.data.metrics[str(EvalMetric("guard", label, "general_accuracy"))]
             for label in (report["gated"], report["baseline"])}
    assert guard["candidate_retrieval"] >= guard["base_retrieval"] - RegistryConfig().max_general_drop, guard

    port = free_port()
    log_path = demo / "serve.log"
    with log_path.open("w") as log_file:
        server = subprocess.Popen(
            [str(BIN / "qaforge"), "serve", "-c", "run.yaml", "--port", str(port)],
            cwd=demo, env=os.environ | {"QAFORGE_API_TOKENS": TOKEN}, stdout=log_file, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base, server, log_path)
        messages = [{"role": "user", "content": "How long does it take to charge an electric car at a DC fast charger?"}]
        answer = ask(base, messages)
        text = answer["choices"][0]["message"]["content"]
        # "A charge from 10% to 80% typically takes about 18 to 45 minutes on a high-power charger."
        assert re.search(r"\b18\b.*\b45 minutes", text), text
        assert "levels-dc-fast-charging.html" in answer["sources"][0]["source"], answer["sources"]

        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "And what about at home?"}]
        follow_up = ask(base, messages)
        assert any("home-charging" in s["source"] for s in follow_up["sources"]), follow_up["sources"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def ask(base: str, messages: list[dict[str, str]]) -> dict:
    response = httpx.post(
        f"{base}/v1/chat/completions", json={"model": "qaforge-ev", "messages": messages},
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()
