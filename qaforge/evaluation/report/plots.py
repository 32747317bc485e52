"""The report's plots, with matplotlib's object-oriented `Figure` rather than pyplot:
it needs no GUI backend and leaves no global figure registry behind, so a pipeline
step can call this any number of times without switching the process-wide backend or
leaking memory."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from qaforge.evaluation.metrics import LOWER_IS_BETTER
from qaforge.evaluation.report.render import fmt_count, fmt_signed, short_source, source_labels
from qaforge.records import Interval, ModelLabel, Resampling

DPI = 100  # Fixed, so the PNGs (embedded in the HTML as base64) stay small.
# One colour per system, the same in every plot whatever order the systems come in.
COLORS: dict[str, str] = {
    ModelLabel.BASE: "#9aa5b1", ModelLabel.CANDIDATE: "#2b6cb0", ModelLabel.PRODUCTION: "#dd6b20",
    ModelLabel.BASE_RETRIEVAL: "#4a5568", ModelLabel.CANDIDATE_RETRIEVAL: "#6b46c1",
}
OTHER_COLOR = "#38a169"


def candidate_interval(interval: Interval) -> tuple[float, float]:
    """The gain's confidence interval on the gated system's own metric scale."""
    if interval.metric in LOWER_IS_BETTER:
        # There the gain is other - gated, so the gated system's value is other - gain.
        return interval.value_b - interval.high, interval.value_b - interval.low
    return interval.value_b + interval.low, interval.value_b + interval.high


def save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path


def headline(comparisons: list[Interval], baseline: str) -> list[Interval]:
    """Per metric, the gated system versus the baseline, over the set's units where resampled so."""
    chosen: dict[str, Interval] = {}
    for c in comparisons:
        if c.b == baseline and (c.metric not in chosen or c.resampled != Resampling.QUESTIONS):
            chosen[c.metric] = c
    return list(chosen.values())


def plot_metrics(comparisons: list[Interval], path: Path) -> Path | None:
    """One small panel per metric, since their scales (ROUGE 0-1, BLEU 0-100,
    perplexity, milliseconds) cannot share an axis."""
    if not comparisons:
        return None
    cols = min(3, len(comparisons))
    rows = math.ceil(len(comparisons) / cols)
    figure = Figure(figsize=(3.2 * cols, 2.6 * rows))
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax, c in zip(axes, comparisons):
        low, high = candidate_interval(c)
        # The percentile interval need not contain the point estimate; clip so the bar stays drawable.
        yerr = [[max(c.value_a - low, 0.0)], [max(high - c.value_a, 0.0)]]
        ax.bar([0], [c.value_b], color=COLORS.get(c.b, OTHER_COLOR))
        ax.bar([1], [c.value_a], color=COLORS.get(c.a, OTHER_COLOR), yerr=yerr, capsize=4, ecolor="black")
        ax.set_xticks([0, 1], [c.b, c.a])
        ax.set_title(
            f"{c.metric}\n{fmt_signed(c.gain)} [{fmt_signed(c.low)}, {fmt_signed(c.high)}]", fontsize=9
        )
        ax.tick_params(labelsize=8)
    for ax in axes[len(comparisons) :]:
        ax.set_visible(False)
    return save(figure, path)


def plot_by_source(by_source: dict[str, dict[str, float]], primary_metric: str, path: Path) -> Path | None:
    if not by_source:
        return None
    labels = source_labels(by_source)
    sources = list(by_source)
    height = 0.8 / max(len(labels), 1)
    figure = Figure(figsize=(7, 1 + 0.3 * len(sources) * max(len(labels), 1)))
    ax = figure.subplots()
    for i, label in enumerate(labels):
        values = [by_source[s].get(label, math.nan) for s in sources]
        color = COLORS.get(label, OTHER_COLOR)
        ax.barh(
            [y + i * height for y in range(len(sources))], values, height=height, label=label, color=color
        )
    ax.set_yticks(
        [y + height * (len(labels) - 1) / 2 for y in range(len(sources))],
        [f"{short_source(s)} (n={fmt_count(by_source[s].get('n'))})" for s in sources],
        fontsize=8,
    )
    ax.invert_yaxis()  # First source on top, as in the table.
    ax.set_xlabel(primary_metric)
    ax.legend(fontsize=8)
    return save(figure, path)


def plot_loss(history: list[dict[str, float]], path: Path) -> Path | None:
    # Trainer log entries carry either "loss" (training) or "eval_loss" (validation) per step.
    curves = {
        name: [(e["step"], e[key]) for e in history if "step" in e and key in e]
        for name, key in (("train", "loss"), ("val", "eval_loss"))
    }
    curves = {name: points for name, points in curves.items() if points}
    if not curves:
        return None
    figure = Figure(figsize=(6, 3.5))
    ax = figure.subplots()
    for name, points in curves.items():
        steps, losses = zip(*points)
        ax.plot(steps, losses, marker="o" if name == "val" else None, markersize=3, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return save(figure, path)


