"""The whole product as a user drives it: `qaforge setup`, `zenml pipeline run`
twice (the second from cache), `qaforge info`, `qaforge serve` over HTTP, then a
retrain that has to beat the production version."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import mlflow
import pytest
import yaml

from qaforge.records import EvalMetric, ModelLabel

from fixture_site import free_port, wait_for_health
from helpers import BIN, REPO, run_cli, user_project, write_run_config

pytestmark = pytest.mark.e2e
CACHED_STEPS = ["chunk_step", "index_step", "synthesize_step", "train_step", "evaluate_step", "register_step", "promote_step"]
TOKEN = "test-token-123"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's project folder: the smoke config pointing at the sample corpus, with
    the support desk's question-answer pairs imported too."""
    root = tmp_path_factory.mktemp("project")
    run_config = user_project(root, "smoke.yaml")
    run_config["parameters"]["config"]["sources"]["qa"] = [
        {"path": str(REPO / "data" / "sample" / "support-answers.csv"), "group_field": "page"}]
    run_config["parameters"]["config"]["serving"] = {"reload_seconds": 1}
    write_run_config(root, run_config)
    return root


@pytest.fixture(scope="module")
def first_run(project: Path) -> str:
    run_cli("qaforge", "setup", "-c", "run.yaml", cwd=project)
    return run_cli(
        "zenml", "pipeline", "run", "pipelines.domain_qa.domain_qa_pipeline", "-c", "run.yaml", cwd=project
    )


def test_pipeline_registers_and_promotes(project: Path, first_run: str) -> None:
    info = run_cli("qaforge", "info", "-c", "run.yaml", cwd=project)
    tracking_uri = re.search(r"MLflow tracking URI: (\S+)", info)[1]
    assert "models:/qaforge-smoke@production = v1" in info
    client = mlflow.MlflowClient(tracking_uri)
    version = client.get_model_version_by_alias("qaforge-smoke", "production")
    run = client.get_run(version.run_id)
    # Two test documents decide nothing: the gate read the gold set, and said so.
    assert run.data.tags["eval.gate_set"] == "smoke" and "gated on the smoke set" in info
    # smoke.yaml trains and serves with passages, as the default does: the gate compared
    # the candidate with the base model given the same passages.
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/report.json")).read_text())
    served, baseline = report["gated"], report["baseline"]
    assert (served, baseline) == (ModelLabel.CANDIDATE_RETRIEVAL, ModelLabel.BASE_RETRIEVAL)
    assert run.data.metrics[str(EvalMetric("smoke", served, "rougeL"))] > \
        run.data.metrics[str(EvalMetric("smoke", baseline, "rougeL"))]
    assert run.data.params["training.method"] == "full"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 2, "per-step loss logged"
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) >= 1, "val loss logged"
    metrics = run.data.metrics
    assert metrics["train/tokens_per_s"] > 0 and metrics["train/peak_memory_mb"] > 0
    assert any(name.startswith("system/cpu") for name in metrics), "system metrics logged"
    decision = json.loads(Path(client.download_artifacts(run.info.run_id, "promotion/decision.json")).read_text())
    assert decision["promoted"] and decision["version"] == "1", decision["reason"]
    assert decision["question_set"] == "smoke" and "on the smoke set" in decision["reason"]
    assert decision["versus_base"]["low"] == metrics[f"eval/smoke/gain_over_{baseline}/rougeL_low"] > 0
    assert decision["versus_production"] is None, "nothing was in production before"
    for name in (EvalMetric("smoke", served, "perplexity"), EvalMetric("smoke", baseline, "perplexity"),
                 EvalMetric("speed", served, "latency_p95_ms"), EvalMetric("guard", served, "general_accuracy"),
                 EvalMetric("guard", baseline, "general_accuracy")):
        assert metrics[str(name)] > 0, name
    assert {"eval/answers.json", "eval/general.json", "eval/report.json"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "eval")
    }
    assert {"report/report.html", "report/report.md", "report/metrics.png", "report/loss.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "report")
    }
    assert not client.list_artifacts(run.info.run_id, "adapter"), "full fine-tuning has no adapter"
    assert "ingest/report.json" in {a.path for a in client.list_artifacts(run.info.run_id, "ingest")}
    # The imported pairs went through the split like the synthesized ones, and were tracked with them.
    assert metrics["ingest/imported_pairs"] == 10
    dataset = {split: [json.loads(line) for line in Path(client.download_artifacts(
        run.info.run_id, f"dataset/{split}.messages.jsonl")).read_text().splitlines()] for split in ("train", "test")}
    assert any(row.get("kind") == "imported" for rows in dataset.values() for row in rows), dataset["train"][:1]
    assert run.data.metrics["ingest/changes/added"] == run.data.metrics["ingest/documents"] > 0
    assert run.data.tags["promotion.promoted"] == "True"
    report = next((project / "reports").glob("*/report.html")).read_text()
    assert "candidate" in report and "data:image/png;base64," in report


def tracking_uri(project: Path) -> str:
    info = run_cli("qaforge", "info", "-c", "run.yaml", cwd=project)
    return re.search(r"MLflow tracking URI: (\S+)", info)[1]


def second_version(client: mlflow.MlflowClient) -> str:
    """A second version of the smoke model (the same weights), as a later run would register."""
    versions = client.search_model_versions("name='qaforge-smoke'")
    if len(versions) > 1:
        return "2"
    source = client.get_model_version_download_uri("qaforge-smoke", "1")
    run_id = client.get_model_version("qaforge-smoke", "1").run_id
    return client.create_model_version("qaforge-smoke", source, run_id=run_id).version


def test_rollback_swaps_production_and_previous(project: Path, first_run: str) -> None:
    client = mlflow.MlflowClient(tracking_uri(project))
    failed = subprocess.run(
        [str(BIN / "qaforge"), "rollback", "-c", "run.yaml"], cwd=project, capture_output=True, text=True
    )
    assert failed.returncode == 1 and "no version with alias @previous" in failed.stderr
    # A second version promoted over v1, as a better run would be.
    client.set_registered_model_alias("qaforge-smoke", "previous", "1")
    client.set_registered_model_alias("qaforge-smoke", "production", second_version(client))
    try:
        out = run_cli("qaforge", "rollback", "-c", "run.yaml", cwd=project)
        assert "models:/qaforge-smoke@production = v1; @previous = v2" in out
        assert "ZenML model qaforge-smoke version 1 is in stage production" in out
        assert str(client.get_model_version_by_alias("qaforge-smoke", "production").version) == "1"
        assert str(client.get_model_version_by_alias("qaforge-smoke", "previous").version) == "2"
    finally:  # leave v1 serving for the other tests
        client.set_registered_model_alias("qaforge-smoke", "production", "1")


def test_second_run_is_served_from_cache(project: Path, first_run: str) -> None:
    second = run_cli(
        "zenml", "pipeline", "run", "pipelines.domain_qa.domain_qa_pipeline", "-c", "run.yaml", cwd=project
    )
    # ingest always re-fetches; finding nothing changed, it lets every later step hit the cache
    assert "'changed': 0" in second and "'added': 0" in second
    assert not re.search(r"Using cached version of step\W+ingest_step", second)
    for step_name in CACHED_STEPS:
        assert re.search(rf"Using cached version of step\W+{step_name}", second), step_name


def test_served_model_answers_and_follows_the_alias(project: Path, first_run: str) -> None:
    port = free_port()
    log_path = project / "serve.log"
    with log_path.open("w") as log_file:
        server = subprocess.Popen(
            [str(BIN / "qaforge"), "serve", "-c", "run.yaml", "--port", str(port)],
            cwd=project, env=os.environ | {"QAFORGE_API_TOKENS": TOKEN}, stdout=log_file, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    client = mlflow.MlflowClient(tracking_uri(project))
    try:
        assert wait_for_health(base, server, log_path).json()["version"] == "1"

        question = {"input_text": "What is a typical Level 2 charging voltage?"}
        assert httpx.post(f"{base}/predict", json=question).status_code == 401
        wrong = httpx.post(f"{base}/predict", json=question, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid API key"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        chat = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": "qaforge-smoke", "messages": [{"role": "user", "content": "What is OCPP?"}], "max_tokens": 16},
            headers=auth,
            timeout=120,
        )
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"].strip()
        assert chat.json()["system_fingerprint"] == "v1"

        # Promote another version while requests keep coming: none may fail, and the
        # server must move to it without a restart.
        served: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def keep_asking() -> None:
            while not stop.is_set():
                r = httpx.post(f"{base}/predict", json=question, headers=auth, timeout=120)
                (served.append(r.json()["model_version"]) if r.status_code == 200 else failures.append(r.text))

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            while not served:
                time.sleep(0.2)
            client.set_registered_model_alias("qaforge-smoke", "production", second_version(client))
            deadline = time.monotonic() + 120
            while httpx.get(f"{base}/health").json()["version"] != "2":
                assert time.monotonic() < deadline, "the server did not pick up the new version"
                time.sleep(0.5)
            count = len(served)
            while len(served) < count + 2:
                time.sleep(0.2)
        finally:
            stop.set()
            asker.join()
        assert not failures, failures
        assert served[0] == "1" and served[-1] == "2"
        models = httpx.get(f"{base}/v1/models", headers=auth).json()
        assert models["data"][0]["id"] == "qaforge-smoke" and models["data"][0]["version"] == "2"
    finally:
        server.terminate()
        server.wait(timeout=30)
        client.set_registered_model_alias("qaforge-smoke", "production", "1")


def test_retrained_candidate_is_gated_against_production(project: Path, first_run: str) -> None:
    """A run that trains a new version scores production (v1) in the same evaluation,
    reuses the answers the base and v1 gave in the first run, and promotes only if the candidate beats
    base and production. The decision is read from MLflow, not from printed text."""
    client = mlflow.MlflowClient(tracking_uri(project))
    run_config = yaml.safe_load((project / "run.yaml").read_text())
    run_config["parameters"]["config"]["training"]["seed"] = 7
    (project / "retrain.yaml").write_text(yaml.safe_dump(run_config))
    try:
        run_cli("zenml", "pipeline", "run", "pipelines.domain_qa.domain_qa_pipeline", "-c", "retrain.yaml", cwd=project)
        [latest] = client.search_model_versions("name='qaforge-smoke'", order_by=["version_number DESC"], max_results=1)
        run = client.get_run(latest.run_id)
        decision = json.loads(Path(client.download_artifacts(run.info.run_id, "promotion/decision.json")).read_text())
        report = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/report.json")).read_text())
        assert decision["version"] == str(latest.version) != "1" and decision["production_version"] == "1"
        assert report["models"]["production"] == "models:/qaforge-smoke/1"
        assert report["reused"] == [report["baseline"], "production"], "only the new candidate was asked"
        first = client.get_run(client.get_model_version("qaforge-smoke", "1").run_id)
        # The registered v1 answers this split as it did when it was the candidate.
        assert run.data.metrics["eval/smoke/production/rougeL"] == pytest.approx(
            first.data.metrics[str(EvalMetric("smoke", report["gated"], "rougeL"))], abs=1e-4
        )
        lows = decision["versus_base"]["low"], decision["versus_production"]["low"]
        assert decision["promoted"] is (min(lows) > 0), decision["reason"]
        assert run.data.tags["promotion.promoted"] == str(decision["promoted"])
    finally:
        client.set_registered_model_alias("qaforge-smoke", "production", "1")
