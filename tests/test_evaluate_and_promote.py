import pytest

from steps.evaluate import metrics_table, normalize_answer, score, token_f1
from steps.promote import decide


def test_token_f1_by_hand() -> None:
    # prediction {cat, sat}, reference {cat, sat, down}: P = 1, R = 2/3, F1 = 0.8
    assert token_f1("The cat sat.", "cat sat down") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0
    assert token_f1("dog", "cat") == 0.0
    assert normalize_answer("The  Type-2 plug!") == "type2 plug"


def test_identical_answers_score_perfectly() -> None:
    refs = ["Level 2 uses 240 V.", "A CCS2 inlet takes AC and DC."]
    metrics = score(refs, refs)
    for name in ("rouge1", "rouge2", "rougeL", "token_f1", "exact_match"):
        assert metrics[name] == pytest.approx(1.0)
    assert metrics["bleu"] == pytest.approx(100.0)
    assert metrics["chrf"] == pytest.approx(100.0)


def test_rouge1_by_hand() -> None:
    # unigram overlap 2 of 3 predicted and 2 of 4 reference tokens: F = 2*(2/3)*(1/2)/(2/3+1/2)
    metrics = score(["charger needs power"], ["the charger needs electricity"])
    assert metrics["rouge1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert metrics["answer_words"] == 3


def test_score_rejects_mismatched_lists() -> None:
    with pytest.raises(ValueError, match="equal, non-zero"):
        score(["a"], [])


def test_metrics_table_lists_every_model() -> None:
    table = metrics_table({"base": {"rougeL": 0.2}, "candidate": {"rougeL": 0.35}})
    assert table.splitlines()[1].split() == ["rougeL", "0.2000", "0.3500"]


@pytest.mark.parametrize(
    ("candidate", "base", "production", "margin", "promoted", "reason"),
    [
        (0.40, 0.30, None, 0.0, True, "beats base 0.3000"),
        (0.30, 0.30, None, 0.0, False, "does not beat base"),
        (0.32, 0.30, None, 0.05, False, "by more than 0.05"),
        (0.40, 0.30, 0.45, 0.0, False, "does not beat production v3"),
        (0.50, 0.30, 0.45, 0.0, True, "and production v3 0.4500"),
    ],
)
def test_gate_decisions(candidate, base, production, margin, promoted, reason) -> None:  # noqa: ANN001
    decision = decide("rougeL", candidate, base, production, margin, version="4", production_version="3")
    assert decision.promoted is promoted
    assert reason in decision.reason
