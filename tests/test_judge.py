"""The LLM judge against a real OpenAI-compatible server on 127.0.0.1: rubric scores
validated and repaired, and pairwise preferences with the order swapped."""

from __future__ import annotations

import json
import re

import pytest

from qaforge.config import EvaluationConfig, JudgeConfig
from qaforge.evaluation.judge import judge_set, pairwise, rubric_scores
from qaforge.records import EvalRow, Resampling, SetReport

from fixture_site import chat_completion, serve_chat

QUESTIONS = ["What voltage does Level 2 use?", "What is OCPP?", "What is CCS?"]
REFERENCES = ["Level 2 uses 240 V.", "OCPP is a charging protocol.", "CCS is a connector standard."]
LONG = ["Level 2 charging uses a 240 V supply.", "OCPP is the open charge point protocol.", "CCS is a plug."]
SHORT = ["240", "A protocol", "A connector standard for DC charging."]


def judge_config(url: str, **kwargs: object) -> JudgeConfig:
    return JudgeConfig(base_url=url, model="judge-test", api_key_env=None, retries=1, repairs=1, **kwargs)


def answer_of(prompt: str, label: str) -> str:
    return re.search(rf"{label}: (.*)", prompt)[1]


def test_rubric_scores_every_criterion_and_repairs_bad_json() -> None:
    calls = []

    def reply(body: dict) -> tuple[int, dict]:
        calls.append(body)
        prompt = body["messages"][0]["content"]
        if len(body["messages"]) == 1 and "OCPP" in prompt:
            return 200, chat_completion(body, '{"relevance": 9}')  # out of range and incomplete
        score = min(5, len(answer_of(prompt, "Assistant's answer").split()))
        criteria = re.search(r"criterion: (.*)\.", prompt)[1].split(", ")
        return 200, chat_completion(body, json.dumps({c: score for c in criteria}))

    with serve_chat(reply) as url:
        scores = rubric_scores(QUESTIONS, REFERENCES, LONG, judge_config(url, criteria=["relevance", "clarity"]))
    assert scores == [{"relevance": 5, "clarity": 5}, {"relevance": 5, "clarity": 5}, {"relevance": 4, "clarity": 4}]
    repair = next(c for c in calls if len(c["messages"]) == 3)
    assert "less than or equal to 5" in repair["messages"][2]["content"]
    assert len(calls) == 4


def test_pairwise_counts_a_model_win_only_when_both_orders_agree() -> None:
    def prefers_longer(body: dict) -> tuple[int, dict]:
        prompt = body["messages"][0]["content"]
        a, b = answer_of(prompt, "Answer A"), answer_of(prompt, "Answer B")
        return 200, chat_completion(body, json.dumps({"better": "A" if len(a) > len(b) else "B"}))

    with serve_chat(prefers_longer) as url:
        result, outcome = pairwise(QUESTIONS, REFERENCES, LONG, SHORT, judge_config(url))
    assert (result.wins, result.losses, result.ties, result.inconsistent) == (2, 1, 0, 0)
    assert outcome.tolist() == [1, 1, -1], "per question: LONG's answer is longer but for the last"


def test_pairwise_cancels_a_judge_that_always_picks_the_first_answer() -> None:
    def always_a(body: dict) -> tuple[int, dict]:
        return 200, chat_completion(body, '{"better": "A"}')

    with serve_chat(always_a) as url:
        result, outcome = pairwise(QUESTIONS, REFERENCES, LONG, SHORT, judge_config(url))
    assert (result.wins, result.losses, result.ties, result.inconsistent) == (0, 0, 3, 3)
    assert outcome.tolist() == [0, 0, 0]


def test_evaluation_adds_judge_scores_intervals_and_preferences() -> None:
    rows = [
        EvalRow(question=q, reference=r, source="s", answers={"candidate": long, "base": short})
        for q, r, long, short in zip(QUESTIONS, REFERENCES, LONG, SHORT)
    ]
    scores = SetReport(name="test", unit="documents", units=3, rows=rows,
                       metrics={"candidate": {"rougeL": 0.5}, "base": {"rougeL": 0.4}})

    def by_length(body: dict) -> tuple[int, dict]:
        prompt = body["messages"][0]["content"]
        if "Answer A:" in prompt:
            a, b = answer_of(prompt, "Answer A"), answer_of(prompt, "Answer B")
            return 200, chat_completion(body, json.dumps({"better": "A" if len(a) > len(b) else "B"}))
        score = 5 if len(answer_of(prompt, "Assistant's answer")) > 30 else 2
        return 200, chat_completion(body, json.dumps({"relevance": score, "clarity": score}))

    with serve_chat(by_length) as url:
        cfg = EvaluationConfig(judge=judge_config(url, criteria=["relevance", "clarity"]), bootstrap_samples=200)
        judged = judge_set(scores, "candidate", "base", cfg, clusters=["doc-a", "doc-a", "doc-b"])
    # LONG answers are over 30 characters but the last; SHORT only the last.
    assert judged.metrics["candidate"]["judge"] == pytest.approx((5 + 5 + 2) / 3)
    assert judged.metrics["base"]["judge_relevance"] == pytest.approx((2 + 2 + 5) / 3)
    by_question, by_document = [c for c in judged.comparisons if c.metric == "judge"]
    assert by_question.resampled == Resampling.QUESTIONS and by_document.resampled == Resampling.DOCUMENTS
    assert by_document.clusters == 2 and by_question.clusters == 3
    assert by_question.gain == by_document.gain == pytest.approx(1.0)
    assert by_question.low <= by_question.gain <= by_question.high
    # The gate reads the judge's score like any metric: the more cautious interval.
    assert judged.gain("judge", "base").low == min(by_question.low, by_document.low)
    assert judged.pairwise.wins == 2 and judged.metrics["candidate"]["judge_win_rate"] == pytest.approx(2 / 3)
    preference = judged.gain("judge_preference", "base")
    assert preference.gain == pytest.approx(2 / 3 - 1 / 3), "won two questions, lost one"
