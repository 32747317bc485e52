"""A human-readable evaluation report: every system on every question set, the gains
that decide promotion and which set decides, as Markdown and as one self-contained
HTML file with PNG plots (`sections`, `render`, `plots`); and the same in brief for the
console."""

from __future__ import annotations

from pathlib import Path

from qaforge.evaluation.metrics import breakdown_metric
from qaforge.evaluation.report.plots import (
    candidate_interval,
    headline,
    plot_by_source,
    plot_loss,
    plot_metrics,
)
from qaforge.evaluation.report.render import fmt, render_html, render_markdown
from qaforge.evaluation.report.sections import build_sections
from qaforge.records import EvalReport, TrainedModel

__all__ = ["candidate_interval", "comparisons_text", "fmt", "metrics_text", "write_report"]


def write_report(
    report: EvalReport,
    trained: TrainedModel | None,
    out_dir: Path,
    *,
    title: str,
    primary_metric: str,
    examples: int = 8,
) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots into out_dir; return
    {"markdown": ..., "html": ..., "<plot name>": ...} with only the plots that had data.
    The plots are of the set the gate reads (or the first set, when none can decide).
    `trained`: how the candidate was trained, if it was (not for `qaforge evaluate`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = report.decided_on or next(iter(report.sets.values()))
    plots = {
        name: path
        for name, path in (
            ("metrics", plot_metrics(headline(shown.comparisons, report.baseline), out_dir / "metrics.png")),
            ("by_source", plot_by_source(shown.by_source, breakdown_metric(primary_metric), out_dir / "by_source.png")),
            ("loss", plot_loss(trained.history if trained else [], out_dir / "loss.png")),
        )
        if path is not None
    }
    sections = build_sections(report, trained, plots, primary_metric=primary_metric, examples=examples)
    markdown, page = out_dir / "report.md", out_dir / "report.html"
    markdown.write_text(render_markdown(title, sections), encoding="utf-8")
    page.write_text(render_html(title, sections), encoding="utf-8")
    return {"markdown": markdown, "html": page, **plots}


def metrics_text(metrics: dict[str, dict[str, float]], corner: str = "metric") -> str:
    """A column per key of `metrics`, a row per key of its values (named by `corner`)."""
    labels = list(metrics)
    names = list(dict.fromkeys(n for values in metrics.values() for n in values))
    lines = [f"{corner:<24}" + "".join(f"{label:>21}" for label in labels)]
    lines += [
        f"{n:<24}" + "".join(f"{metrics[label][n]:>21.4f}" if n in metrics[label] else f"{'':>21}" for label in labels)
        for n in names
    ]
    return "\n".join(lines)


def comparisons_text(report: EvalReport, metric: str | None = None) -> str:
    """The gated system's gains on every question set (on `metric` only, if given), and
    which set the gate reads."""
    lines = [
        f"[{scores.name}] {c.metric:<18} {c.a} - {c.b}: {c.gain:+.4f}  {round(100 * c.confidence)}% CI "
        f"[{c.low:+.4f}, {c.high:+.4f}] over {c.clusters} {c.resampled}"
        for scores in report.sets.values()
        for c in scores.comparisons
        if metric is None or c.metric == metric
    ]
    if report.gate_note:
        lines.append(report.gate_note)
    lines.append(f"The gate decides on: {report.gate_set}" if report.gate_set else "No set can decide.")
    return "\n".join(lines)
