"""Answer metrics, by hand and against sacrebleu, and the paired bootstrap's intervals
over questions and over clusters of them, on known data."""

import math

import numpy as np
import pytest
import sacrebleu

from qaforge.evaluation.metrics import (
    compare,
    contains_any,
    normalize_answer,
    numbers,
    numeric_accuracy,
    paired_bootstrap,
    score_answers,
    token_f1,
)
from qaforge.evaluation.report import metrics_text
from qaforge.refusal import is_refusal


def test_token_f1_by_hand() -> None:
    # prediction {cat, sat}, reference {cat, sat, down}: P = 1, R = 2/3, F1 = 0.8
    assert token_f1("The cat sat.", "cat sat down") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0
    assert token_f1("dog", "cat") == 0.0
    assert normalize_answer("The  Type-2 plug!") == "type2 plug"


def test_numeric_accuracy_asks_for_every_figure_of_the_reference() -> None:
    """A well-worded answer with a wrong figure scores high on ROUGE-L and zero here;
    questions whose reference states no figure are not counted."""
    reference = "A charge from 10% to 80% typically takes about 18 to 45 minutes on a high-power charger."
    wrong = "A charge from 10% to 80% typically takes about 2 to 10 hours on a high-power charger."
    right = "It takes about 18 to 45 minutes to go from 10 to 80 percent."
    assert numbers("1,500 W at 7.40 kW, 230 V") == {"1500", "7.4", "230"}
    assert numeric_accuracy([wrong], [reference]) == {"numeric_accuracy": 0.0}
    assert score_answers([wrong], [reference]).summary()["rougeL"] > 0.8
    assert numeric_accuracy([right, "Yes, it does."], [reference, "Yes."]) == {"numeric_accuracy": 1.0}
    assert numeric_accuracy(["Yes."], ["No figures here."]) == {}


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
