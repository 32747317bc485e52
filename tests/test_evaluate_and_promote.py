import math

import numpy as np
import pytest
import sacrebleu
import torch

from qaforge.evaluation.metrics import (
    compare, contains_any, normalize_answer, paired_bootstrap, score_answers, token_f1,
)
from qaforge.refusal import is_refusal
from qaforge.config import InferenceOptions
from qaforge.modeling import generate_answers, length_batches, load_for_inference, reference_nll
from qaforge.prompting import build_messages, render_prompt
from qaforge.records import EvalReport, Interval
from qaforge.evaluation.report import metrics_text
from qaforge.registry import decide


def test_token_f1_by_hand() -> None:
    # prediction {cat, sat}, reference {cat, sat, down}: P = 1, R = 2/3, F1 = 0.8
    assert token_f1("The cat sat.", "cat sat down") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0
    assert token_f1("dog", "cat") == 0.0
    assert normalize_answer("The  Type-2 plug!") == "type2 plug"


def test_identical_answers_score_perfectly() -> None:
    refs = ["Level 2 uses 240 V.", "A CCS2 inlet takes AC and DC."]
    metrics = score_answers(refs, refs).summary()
    for name in ("rouge1", "rouge2", "rougeL", "token_f1", "exact_match"):
        assert metrics[name] == pytest.approx(1.0)
    assert metrics["bleu"] == pytest.approx(100.0)
    assert metrics["chrf"] == pytest.approx(100.0)


def test_rouge1_by_hand() -> None:
    # unigram overlap 2 of 3 predicted and 2 of 4 reference tokens: F = 2*(2/3)*(1/2)/(2/3+1/2)
    metrics = score_answers(["charger needs power"], ["the charger needs electricity"]).summary()
    assert metrics["rouge1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert metrics["answer_words"] == 3


def test_resampled_bleu_and_chrf_equal_sacrebleu_on_the_same_subset() -> None:
    preds = ["Level 2 uses 240 volts.", "OCPP links chargers to servers.", "It is a plug.", "DC is fast."]
    refs = ["Level 2 uses 240 V.", "OCPP links a charger to its back office.", "CCS is a plug.", "DC charging is fast."]
    scored = score_answers(preds, refs)
    idx = np.array([0, 0, 2, 3])
    subset_p, subset_r = [preds[i] for i in idx], [refs[i] for i in idx]
    assert scored.value("bleu", idx) == pytest.approx(sacrebleu.corpus_bleu(subset_p, [subset_r]).score)
    assert scored.value("chrf", idx) == pytest.approx(sacrebleu.corpus_chrf(subset_p, [subset_r]).score)


def test_perplexity_pools_tokens_by_hand() -> None:
    scored = score_answers(["a", "b"], ["a", "b"], nll=[(2.0, 1), (4.0, 3)])
    assert scored.value("perplexity") == pytest.approx(math.exp(6.0 / 4))
    assert scored.value("perplexity", np.array([1, 1])) == pytest.approx(math.exp(8.0 / 6))


# fp32 on any CPU: these check the batching arithmetic, not bf16 rounding.
FP32 = InferenceOptions(precision="fp32")


def test_reference_nll_equals_the_models_own_loss(base_model_dir) -> None:  # noqa: ANN001
    model, tokenizer = load_for_inference(base_model_dir, FP32)
    messages = build_messages("What does Level 2 use?", "Be brief.")
    answer = "Level 2 uses 240 V."
    [(nll, tokens)] = reference_nll(model, tokenizer, [messages], [answer])
    prompt = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False, return_tensors="pt")["input_ids"]
    target = tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
    labels = torch.cat([torch.full_like(prompt, -100), target], dim=1)
    with torch.no_grad():
        loss = model(input_ids=torch.cat([prompt, target], dim=1), labels=labels).loss
    assert tokens == target.shape[1]
    assert nll / tokens == pytest.approx(float(loss), rel=1e-4)
    # Batched with a longer conversation (padding) gives the same numbers.
    longer = build_messages("Explain in detail how a Level 2 charger works at home?", "Be brief.")
    (nll_batched, _), _ = reference_nll(model, tokenizer, [messages, longer], [answer, answer])
    assert nll_batched == pytest.approx(nll, rel=1e-4)


def test_batches_group_similar_lengths_and_answers_keep_input_order(base_model_dir) -> None:  # noqa: ANN001
    assert length_batches([5, 1, 4, 2, 3], 2) == [[1, 3], [2, 4], [0]]
    assert length_batches([3, 1, 2], 8) == [[0, 1, 2]], "one batch is the input as it is"
    model, tokenizer = load_for_inference(base_model_dir, FP32)
    questions = ["What is OCPP?", "Explain in detail how a Level 2 charger works at home, step by step?", "Why?"]
    conversations = [build_messages(q, "Be brief.") for q in questions]
    batched = generate_answers(model, tokenizer, conversations, 8, batch_size=2)
    alone = [generate_answers(model, tokenizer, [c], 8, batch_size=1) for c in conversations]
    assert batched.answers == [g.answers[0] for g in alone]
    assert batched.prompt_tokens == [g.prompt_tokens[0] for g in alone]
    assert batched.completion_tokens == [g.completion_tokens[0] for g in alone]


def test_bootstrap_interval_on_known_data() -> None:
    base = np.zeros(50)
    shifted = paired_bootstrap("x", lambda i: (base[i] + 0.5).mean(), lambda i: base[i].mean(), 50)
    assert (shifted.gain, shifted.low, shifted.high) == pytest.approx((0.5, 0.5, 0.5))
    # Differences with mean 0.3 and sd 1 over 400 questions: the 95% interval is about
    # 0.3 +- 1.96 / sqrt(400) = [0.20, 0.40] around the sample mean.
    diff = np.random.default_rng(1).normal(0.3, 1.0, 400)
    noisy = paired_bootstrap("x", lambda i: diff[i].mean(), lambda i: 0.0, 400, samples=2000)
    assert noisy.low < diff.mean() < noisy.high
    assert noisy.high - noisy.low == pytest.approx(2 * 1.96 * diff.std() / 20, rel=0.15)
    assert noisy.low > 0


def test_lower_perplexity_counts_as_a_gain() -> None:
    candidate = score_answers(["x", "y"], ["x", "y"], nll=[(1.0, 1), (1.0, 1)])
    base = score_answers(["x", "y"], ["x", "y"], nll=[(3.0, 1), (3.0, 1)])
    [ppl] = [c for c in compare(candidate, base, ("candidate", "base"), 200, 0.95) if c.metric == "perplexity"]
    assert ppl.gain == pytest.approx(math.e**3 - math.e) and ppl.low > 0


def test_refusals_and_accepted_answers() -> None:
    assert is_refusal("I don't know: the documents I was trained on do not cover that.")
    assert not is_refusal("Level 2 uses 240 V.")
    assert contains_any("The capital of France is Paris.", ["Paris"])
    assert not contains_any("Parisian cafes are nice.", ["Paris"])
    assert contains_any("It has 8 legs.", ["8 legs", "eight"])


def test_metrics_table_lists_every_model() -> None:
    table = metrics_text({"candidate": {"rougeL": 0.35, "judge": 4.1}, "base": {"rougeL": 0.2}})
    assert table.splitlines()[1].split() == ["rougeL", "0.3500", "0.2000"]
    assert table.splitlines()[2].split() == ["judge", "4.1000"]


def interval(low: float, high: float, a: float = 0.40, b: float = 0.30) -> Interval:
    return Interval(metric="rougeL", a="candidate", b="base", value_a=a, value_b=b, gain=a - b,
                    low=low, high=high, confidence=0.95)


@pytest.mark.parametrize(
    ("base", "production", "margin", "drop", "promoted", "reason"),
    [
        (interval(0.05, 0.15), None, 0.0, None, True, "gain over base 95% CI [+0.0500, +0.1500] above 0.0"),
        (interval(-0.01, 0.2), None, 0.0, None, False, "gain over base +0.1000 (95% CI [-0.0100, +0.2000])"),
        (interval(0.03, 0.15), None, 0.05, None, False, "has a lower bound not above 0.05"),
        (interval(0.05, 0.15), interval(-0.02, 0.04, 0.40, 0.39), 0.0, None, False, "over production v3 +0.0100"),
        (interval(0.05, 0.15), interval(0.01, 0.04, 0.40, 0.38), 0.0, None, True, "over production [+0.0100"),
        (interval(0.05, 0.15), None, 0.0, 0.2, False, "general-QA accuracy dropped by 0.2000, more than 0.1"),
        (interval(0.05, 0.15), None, 0.0, 0.05, True, "general-QA accuracy change -0.0500"),
    ],
)
def test_gate_decisions(base, production, margin, drop, promoted, reason) -> None:  # noqa: ANN001
    decision = decide(base, production, margin, "4", "3", general_drop=drop, max_general_drop=0.1)
    assert decision.promoted is promoted
    assert reason in decision.reason
    assert decision.reason.startswith("rougeL 0.4000 vs base 0.3000")


def test_by_source_scores_each_source_on_its_own_questions() -> None:
    from qaforge.records import QAPair
    from qaforge.evaluation import by_source

    questions = [
        QAPair(question=f"q{i}", answer="a", chunk_id="c", doc_id="d", source=src, kind="fact", grounding=1.0)
        for i, src in enumerate(["a.pdf", "b.html", "a.pdf"])
    ]
    refs = ["Level 2 uses 240 V.", "OCPP is a protocol.", "CCS is a plug."]
    scored = {
        "candidate": score_answers(refs, refs),
        "base": score_answers(["Level 2 uses 240 V.", "nothing", "nothing"], refs),
    }
    table = by_source(questions, scored, "exact_match")
    assert table == {"a.pdf": {"n": 2, "candidate": 1.0, "base": 0.5}, "b.html": {"n": 1, "candidate": 1.0, "base": 0.0}}


def test_resampling_documents_widens_the_interval_when_documents_differ() -> None:
    """Twenty documents of ten questions each, whose gains differ by document: the
    questions of one document are not independent, and only the cluster bootstrap
    says how uncertain the gain really is."""
    rng = np.random.default_rng(0)
    per_document = rng.normal(0.1, 0.2, 20)
    diff = np.repeat(per_document, 10) + rng.normal(0, 0.02, 200)
    documents = [f"doc{i // 10}" for i in range(200)]
    questions = paired_bootstrap("x", lambda i: diff[i].mean(), lambda i: 0.0, 200)
    by_document = paired_bootstrap("x", lambda i: diff[i].mean(), lambda i: 0.0, 200, clusters=documents)
    assert (questions.resampled, questions.clusters) == ("questions", 200)
    assert (by_document.resampled, by_document.clusters) == ("documents", 20)
    assert questions.gain == by_document.gain
    # The spread of 20 document means is about sd 0.2 / sqrt(20); of 200 questions, 0.2 / sqrt(200) at most.
    assert by_document.high - by_document.low > 2 * (questions.high - questions.low)
    assert by_document.high - by_document.low == pytest.approx(2 * 1.96 * per_document.std() / np.sqrt(20), rel=0.3)


def report_with(comparisons: list[Interval], production: str | None = None) -> EvalReport:
    labels = ["candidate", "base"] + (["production"] if production else [])
    return EvalReport(metrics={label: {"rougeL": 0.3} for label in labels}, comparisons=comparisons, rows=[],
                      models={"production": production} if production else {})


def test_the_gate_decides_on_documents_and_on_production_from_the_same_report() -> None:
    from qaforge.config import RegistryConfig
    from qaforge.registry import gate

    narrow = interval(0.02, 0.10)
    wide = interval(-0.05, 0.20).model_copy(update={"resampled": "documents", "clusters": 6})
    decision = gate(report_with([narrow, wide]), "4", "rougeL", RegistryConfig())
    assert not decision.promoted and decision.versus_base == wide, "the document-level interval decides"
    over_production = interval(0.01, 0.03, 0.40, 0.38).model_copy(update={"b": "production", "resampled": "documents"})
    decision = gate(report_with([narrow, over_production], "models:/qaforge-ev/3"), "4", "rougeL", RegistryConfig())
    assert decision.promoted and decision.production_version == "3"
    assert decision.versus_production == over_production


@pytest.mark.slow
def test_evaluation_scores_a_logged_model_by_uri_and_reuses_fixed_models_answers(base_model_dir, tmp_path) -> None:  # noqa: ANN001
    """The candidate exists only as an MLflow model (as the train step leaves it); the
    base has an identity (weights that never change), so its answers come from the
    cache the second time."""
    import mlflow

    from qaforge.mlflow_model import log_qa_model

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run(experiment_id=mlflow.create_experiment("eval-by-uri")):
            uri = log_qa_model(base_model_dir, "Be brief.")
        run_evaluations(uri, base_model_dir, tmp_path)
    finally:
        mlflow.set_tracking_uri(previous)


def run_evaluations(uri: str, base_model_dir: str, tmp_path) -> None:  # noqa: ANN001
    from qaforge.config import EvaluationConfig, PromptConfig
    from qaforge.evaluation import ModelRef, System, evaluate
    from qaforge.records import ModelLabel, QAPair

    pairs = [
        QAPair(question=q, answer=a, chunk_id=f"c{i}", doc_id=f"d{i % 2}", source=f"s{i % 2}", kind="fact",
               grounding=1.0)
        for i, (q, a) in enumerate([("What is OCPP?", "OCPP is a charging protocol."),
                                    ("What is CCS?", "CCS is a plug."), ("What is Level 2?", "240 V charging.")])
    ]
    cfg = EvaluationConfig(max_new_tokens=6, latency_samples=0, general_qa=None, bootstrap_samples=100,
                           precision="fp32")
    models = {ModelLabel.CANDIDATE: System(ModelRef(uri)),
              ModelLabel.BASE: System(ModelRef(base_model_dir, identity=base_model_dir))}
    sets = {"test": pairs}
    first = evaluate(models, sets, PromptConfig(system_prompt="Be brief."), cfg, cache_dir=tmp_path / "answers")
    assert first.reused == [] and first.models["candidate"] == uri
    assert [r.answers["candidate"] for r in first.rows] == [r.answers["base"] for r in first.rows], (
        "the logged model is the base model, so it answers the same"
    )
    assert {(c.b, c.resampled) for c in first.comparisons} == {("base", "questions"), ("base", "documents")}
    again = evaluate(models, sets, PromptConfig(system_prompt="Be brief."), cfg, cache_dir=tmp_path / "answers")
    assert again.reused == ["base"], "a model without an identity is never cached"
    assert again.rows == first.rows and again.metrics["base"] == first.metrics["base"]
    other = cfg.model_copy(update={"max_new_tokens": 7})
    assert evaluate(models, sets, PromptConfig(system_prompt="Be brief."), other,
                    cache_dir=tmp_path / "answers").reused == []
