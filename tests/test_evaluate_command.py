"""`qaforge evaluate`: models scored on a config's question sets without training, as
a user runs it, into the pipeline's report."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from qaforge.config import JUDGE_CRITERIA, RegistryConfig
from qaforge.promotion import gate
from qaforge.records import EvalReport, ModelLabel, Resampling

from fixture_site import chat_completion, serve_chat
from helpers import BIN, run_cli, user_project, write_run_config


def small_project(root: Path, **evaluation: object) -> None:
    """The smoke config, asked few enough questions for a test."""
    run_config = user_project(root, "smoke.yaml")
    cfg = run_config["parameters"]["config"]
    cfg["evaluation"] |= {"max_examples": 6, "knowledge": 0, "memorisation": 0, "general_qa": None,
                          "latency_samples": 0} | evaluation
    write_run_config(root, run_config)


def test_the_base_and_a_model_folder_are_scored_without_training(tmp_path: Path, base_model_dir: str) -> None:
    small_project(tmp_path)
    out = run_cli("qaforge", "evaluate", "-c", "run.yaml", "--model", "base", "--model", base_model_dir,
                  "--out", "scores", cwd=tmp_path)
    reports = {path.parent.name: json.loads(path.read_text()) for path in (tmp_path / "scores").glob("*/report.json")}
    assert len(reports) == 2, out
    base = reports.pop("base")
    [folder] = reports.values()
    # The base alone: with passages against closed book, on the gold set and the test split.
    assert (base["gated"], base["baseline"]) == (ModelLabel.BASE_RETRIEVAL, ModelLabel.BASE)
    assert set(base["sets"]) == {"test", "smoke"} and base["gate_set"] == "smoke"
    assert len(base["sets"]["test"]["rows"]) == 6
    # A folder is asked as the config serves (with passages), against the base asked the
    # same way. This folder holds the base weights: its answers are the base's, from the
    # answer cache, and it gains nothing.
    assert (folder["gated"], folder["baseline"]) == (ModelLabel.CANDIDATE_RETRIEVAL, ModelLabel.BASE_RETRIEVAL)
    for name in ("test", "smoke"):
        for row in folder["sets"][name]["rows"]:
            assert row["answers"][ModelLabel.CANDIDATE_RETRIEVAL] == row["answers"][ModelLabel.BASE_RETRIEVAL]
    [gain] = [c for c in folder["sets"]["smoke"]["comparisons"] if c["metric"] == "rougeL"]
    assert gain["gain"] == gain["low"] == gain["high"] == 0
    assert sorted(folder["reused"]) == sorted([ModelLabel.CANDIDATE_RETRIEVAL, ModelLabel.BASE_RETRIEVAL])
    page = (tmp_path / "scores" / "base" / "report.html").read_text()
    assert "base_retrieval" in page and "Training" not in page, "no training to report"
    assert "on the smoke set" in out and "Report: " in out


def test_what_names_no_model_is_refused_before_anything_runs(tmp_path: Path) -> None:
    small_project(tmp_path)
    result = subprocess.run([str(BIN / "qaforge"), "evaluate", "-c", "run.yaml", "--model", "base", "--model",
                             "no-such-folder"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--model 'no-such-folder' is not a model folder, a models:/ or runs:/ URI, or 'base'" in result.stderr
    assert not (tmp_path / ".qaforge").exists(), "nothing was fetched or cached"


def by_length(body: dict) -> tuple[int, dict]:
    """A judge that prefers longer answers: every rubric criterion 5 for an answer of more
    than eight words, else 2; of two answers, the longer."""
    prompt = body["messages"][0]["content"]
    if "Answer A:" in prompt:
        a, b = (re.search(rf"{label}: (.*)", prompt)[1] for label in ("Answer A", "Answer B"))
        return 200, chat_completion(body, json.dumps({"better": "A" if len(a) > len(b) else "B"}))
    score = 5 if len(re.search(r"Assistant's answer: (.*)", prompt)[1].split()) > 8 else 2
    return 200, chat_completion(body, json.dumps({c: score for c in JUDGE_CRITERIA}))


def test_the_judge_can_gate(tmp_path: Path) -> None:
    """With `primary_metric: judge`, every question set carries the judge's score with
    intervals over its documents (or groups), and the gate decides on it."""
    with serve_chat(by_length) as judge_url:
        small_project(tmp_path, primary_metric="judge", judge={"base_url": judge_url, "model": "judge",
                                                               "api_key_env": None})
        run_cli("qaforge", "evaluate", "-c", "run.yaml", "--model", "base", "--out", "scores", cwd=tmp_path)
    report = EvalReport.model_validate_json((tmp_path / "scores" / "report.json").read_text())
    gated, baseline = report.gated, report.baseline
    for scores in report.sets.values():
        judged = {(c.metric, c.resampled) for c in scores.comparisons if c.metric.startswith("judge")}
        assert judged == {(metric, unit) for metric in ("judge", "judge_preference")
                          for unit in {Resampling.QUESTIONS, scores.unit}}, (scores.name, judged)
        assert 2 <= scores.metrics[gated]["judge"] <= 5 and scores.pairwise is not None
    decision = gate(report, "1", "judge", RegistryConfig(max_general_drop=None))
    interval = report.decided_on.gain("judge", baseline)
    assert decision.metric == "judge" and decision.question_set == "smoke" == report.gate_set
    assert decision.versus_base == interval and decision.promoted is (interval.low > 0), decision.reason
