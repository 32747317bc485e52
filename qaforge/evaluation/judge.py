"""LLM-as-judge over an OpenAI-compatible endpoint.

Rubric mode scores one answer 1-5 on each criterion (the MyCoach rubric by default).
Pairwise mode asks which of two answers is better, once in each order: a judge that
favours the first (or second) position then cancels out instead of deciding.
Replies are JSON validated by pydantic, with repairs, through `ChatClient`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from statistics import mean
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, create_model
from tqdm import tqdm

from qaforge.chat_client import ChatClient, Usage
from qaforge.config import EvaluationConfig, JudgeConfig, JudgeMode
from qaforge.evaluation.metrics import mean_gain
from qaforge.records import Interval, PairwiseResult, SetReport

log = logging.getLogger(__name__)

RUBRIC_PROMPT = """You grade an assistant's answer to a question about a domain's documents.
Question: {question}
Reference answer (from the documents): {reference}
Assistant's answer: {answer}

Score the assistant's answer from 1 (very poor) to 5 (excellent) on each criterion: {criteria}.
Judge facts against the reference answer. Reply with a JSON object only, mapping each criterion
to an integer score, for example {example}."""

PAIRWISE_PROMPT = """Two assistants answered a question about a domain's documents.
Question: {question}
Reference answer (from the documents): {reference}
Answer A: {answer_a}
Answer B: {answer_b}

Which answer is better: more correct against the reference, complete, clear and to the point?
Reply with a JSON object only: {{"better": "A"}}, {{"better": "B"}} or {{"better": "tie"}}."""


class Preference(BaseModel):
    better: Literal["A", "B", "tie"]


def rubric_schema(criteria: list[str]) -> type[BaseModel]:
    """A schema requiring every criterion, each an integer 1-5."""
    fields: dict[str, Any] = {c: (int, Field(ge=1, le=5)) for c in criteria}
    return create_model("RubricScores", **fields)


def _run(jobs: list, cfg: JudgeConfig, desc: str) -> tuple[list, Usage]:
    """Run (messages, schema) jobs concurrently; results in job order."""
    usage = Usage()

    async def run() -> list:
        client = ChatClient(cfg, usage)
        semaphore = asyncio.Semaphore(cfg.concurrency)
        progress = tqdm(total=len(jobs), desc=desc, unit="request")

        async def one(messages: list[dict[str, str]], schema: type[BaseModel]) -> BaseModel:
            async with semaphore:
                try:
                    return await client.ask(messages, schema)
                finally:
                    progress.update()

        try:
            return await asyncio.gather(*(one(m, s) for m, s in jobs))
        finally:
            progress.close()
            await client.aclose()

    return asyncio.run(run()), usage


def rubric_scores(
    questions: list[str], references: list[str], answers: list[str], cfg: JudgeConfig
) -> list[dict[str, int]]:
    """Each answer's score per criterion."""
    schema = rubric_schema(cfg.criteria)
    example = json.dumps({c: 4 for c in cfg.criteria})
    jobs = [
        (
            [{"role": "user", "content": RUBRIC_PROMPT.format(
                question=q, reference=r, answer=a, criteria=", ".join(cfg.criteria), example=example
            )}],
            schema,
        )
        for q, r, a in zip(questions, references, answers)
    ]
    replies, usage = _run(jobs, cfg, "judge rubric")
    log.info("judge rubric: %d requests, %d repairs", usage.requests, usage.repairs)
    return [reply.model_dump() for reply in replies]


def pairwise(
    questions: list[str],
    references: list[str],
    answers_a: list[str],
    answers_b: list[str],
    cfg: JudgeConfig,
    labels: tuple[str, str] = ("candidate", "base"),
) -> tuple[PairwiseResult, np.ndarray]:
    """Ask each question with a's answer first, then with b's first. Also each
    question's outcome: 1 where a won, -1 where b did, 0 for a tie."""
    jobs = []
    for q, r, a, b in zip(questions, references, answers_a, answers_b):
        for first, second in ((a, b), (b, a)):
            prompt = PAIRWISE_PROMPT.format(question=q, reference=r, answer_a=first, answer_b=second)
            jobs.append(([{"role": "user", "content": prompt}], Preference))
    replies, usage = _run(jobs, cfg, "judge pairwise")
    log.info("judge pairwise: %d requests, %d repairs", usage.requests, usage.repairs)
    inconsistent = 0
    outcome = []
    for a_first, b_first in zip(replies[::2], replies[1::2]):
        # Map both verdicts to "which model", undoing the swap of the second.
        first = {"A": "a", "B": "b", "tie": "tie"}[a_first.better]
        second = {"A": "b", "B": "a", "tie": "tie"}[b_first.better]
        outcome.append(1 if first == second == "a" else -1 if first == second == "b" else 0)
        inconsistent += first != second and "tie" not in (first, second)
    won = np.array(outcome)
    return (PairwiseResult(a=labels[0], b=labels[1], wins=int((won > 0).sum()), losses=int((won < 0).sum()),
                           ties=int((won == 0).sum()), inconsistent=inconsistent), won)


def judge_set(scores: SetReport, gated: str, baseline: str, cfg: EvaluationConfig,
              clusters: list[str] | None = None) -> SetReport:
    """A question set with the judge's rubric scores (`judge`, the mean of the criteria,
    which the gate can decide on) and its pairwise preferences between the gated system
    and its baseline (`judge_preference`: the share of questions won less the share
    lost). Each gain gets intervals over questions and, given each question's cluster
    (its document or group), over clusters, as every other metric does."""
    if (judge := cfg.judge) is None:
        return scores
    rows = scores.rows[: judge.max_examples] if judge.max_examples else scores.rows
    clusters = clusters[: len(rows)] if clusters is not None else None
    questions, references = [r.question for r in rows], [r.reference for r in rows]
    comparisons, metrics = list(scores.comparisons), {k: dict(v) for k, v in scores.metrics.items()}

    def gains(metric: str, a: np.ndarray, b: np.ndarray, pair: tuple[str, str]) -> list[Interval]:
        return [mean_gain(metric, a, b, pair, cfg.bootstrap_samples, cfg.confidence, groups, scores.unit)
                for groups in ([None] if clusters is None else [None, clusters])]

    preferences = None
    if JudgeMode.RUBRIC in judge.modes:
        means: dict[str, np.ndarray] = {}
        for label in scores.metrics:
            rubric = rubric_scores(questions, references, [r.answers[label] for r in rows], judge)
            means[label] = np.array([mean(s.values()) for s in rubric])
            metrics[label]["judge"] = float(means[label].mean())
            for criterion in judge.criteria:
                metrics[label][f"judge_{criterion}"] = mean(s[criterion] for s in rubric)
        comparisons += [c for label in means if label != gated
                        for c in gains("judge", means[gated], means[label], (gated, label))]
    if JudgeMode.PAIRWISE in judge.modes:
        preferences, won = pairwise(questions, references, [r.answers[gated] for r in rows],
                                    [r.answers[baseline] for r in rows], judge, (gated, baseline))
        metrics[gated]["judge_win_rate"] = preferences.wins / preferences.n
        metrics[baseline]["judge_win_rate"] = preferences.losses / preferences.n
        comparisons += gains("judge_preference", (won > 0).astype(float), (won < 0).astype(float),
                             (gated, baseline))
    return scores.model_copy(update={"metrics": metrics, "comparisons": comparisons, "pairwise": preferences})
