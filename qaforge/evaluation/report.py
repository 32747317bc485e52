"""A human-readable evaluation report: the candidate versus the base (and the current
production version), as Markdown and as one self-contained HTML file, with PNG plots.

Both documents are rendered from the same list of sections, so they cannot drift apart.
Plots use matplotlib's object-oriented `Figure` rather than pyplot: it needs no GUI
backend and leaves no global figure registry behind, so a pipeline step can call this
any number of times without switching the process-wide backend or leaking memory.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from qaforge.evaluation.metrics import LOWER_IS_BETTER
from qaforge.records import EvalReport, EvalRow, Interval, ModelLabel, PairwiseResult, Resampling, TrainedModel

SIGNIFICANT = 4
DPI = 100  # Fixed, so the PNGs (embedded in the HTML as base64) stay small.
# One colour per model, the same in every plot whatever order the models come in.
COLORS = {
    ModelLabel.BASE: "#9aa5b1", ModelLabel.CANDIDATE: "#2b6cb0", ModelLabel.PRODUCTION: "#dd6b20",
    ModelLabel.BASE_RETRIEVAL: "#4a5568", ModelLabel.CANDIDATE_RETRIEVAL: "#6b46c1",
}
OTHER_COLOR = "#38a169"
CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       color: #1a202c; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.75rem 0 1.5rem; font-size: 0.92rem; }
th, td { border: 1px solid #cbd5e0; padding: 0.3rem 0.6rem; vertical-align: top; }
th { background: #edf2f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td { white-space: pre-wrap; }
tr:nth-child(even) td { background: #f7fafc; }
img { max-width: 100%; border: 1px solid #e2e8f0; margin: 0.5rem 0 1.5rem; }
"""


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    align: str = ""  # One "l" or "r" per column; by default the first left and the numbers right.

    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.headers) - 1)


@dataclass
class Image:
    path: Path


Block = str | Table | Image


@dataclass
class Section:
    title: str
    blocks: list[Block]


def write_report(
    report: EvalReport,
    trained: TrainedModel,
    out_dir: Path,
    *,
    title: str,
    primary_metric: str,
    examples: int = 8,
) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots into out_dir; return
    {"markdown": ..., "html": ..., "<plot name>": ...} with only the plots that had data."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        name: path
        for name, path in (
            ("metrics", plot_metrics(headline(report.comparisons, report.baseline), out_dir / "metrics.png")),
            ("by_source", plot_by_source(report.by_source, primary_metric, out_dir / "by_source.png")),
            ("loss", plot_loss(trained.history, out_dir / "loss.png")),
        )
        if path is not None
    }
    sections = build_sections(report, trained, plots, primary_metric=primary_metric, examples=examples)
    markdown, page = out_dir / "report.md", out_dir / "report.html"
    markdown.write_text(render_markdown(title, sections), encoding="utf-8")
    page.write_text(render_html(title, sections), encoding="utf-8")
    return {"markdown": markdown, "html": page, **plots}


# ---- numbers -------------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    """Four significant digits in fixed notation: latencies in the thousands and ROUGE
    near zero both stay readable, and nothing turns into 1.235e+04."""
    if value is None:
        return ""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    decimals = max(0, SIGNIFICANT - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def fmt_signed(value: float) -> str:
    return ("+" if value > 0 else "") + fmt(value)


def fmt_count(value: float | None) -> str:
    # Question counts arrive as floats inside by_source; "12.00 questions" would read oddly.
    return "" if value is None else str(round(value))


def verdict(interval: Interval) -> str:
    # Gains are signed upstream so positive is better, whatever the metric's direction.
    if interval.low > 0:
        return "better"
    if interval.high < 0:
        return "worse"
    return "no clear difference"


def candidate_interval(interval: Interval) -> tuple[float, float]:
    """The gain's confidence interval on the candidate's own metric scale."""
    if interval.metric in LOWER_IS_BETTER:
        # There the gain is base - candidate, so the candidate is base - gain.
        return interval.value_b - interval.high, interval.value_b - interval.low
    return interval.value_b + interval.low, interval.value_b + interval.high


def short_source(source: str) -> str:
    """The last path component of a URL or path, which is what tells sources apart."""
    parts = [p for p in re.split(r"[/\\]", source.split("?", 1)[0].split("#", 1)[0]) if p]
    return parts[-1] if parts else source


def model_labels(report: EvalReport) -> list[str]:
    """Labels in the order the evaluation reported them, then any only seen in answers."""
    labels = list(report.metrics)
    for row in report.rows:
        labels += [label for label in row.answers if label not in labels]
    return labels


# ---- sections ------------------------------------------------------------------------------------


def build_sections(
    report: EvalReport, trained: TrainedModel, plots: dict[str, Path], *, primary_metric: str, examples: int
) -> list[Section]:
    labels = model_labels(report)
    sections = [
        question_sets_section(report, primary_metric),
        Section(f"Metrics on the {report.question_set} questions", [metrics_table(report.metrics)]),
        *comparison_sections(report.comparisons, plots.get("metrics"), report.baseline),
        pairwise_section(report.pairwise),
        by_source_section(report.by_source, primary_metric, plots.get("by_source")),
        training_section(trained, plots.get("loss")),
        examples_section(report.rows[:examples], labels, len(report.rows)),
        forgetting_section(report.general, report.metrics),
        *(section for other in report.other_sets for section in other_set_sections(other, primary_metric)),
    ]
    return [s for s in sections if s is not None]


def question_sets_section(report: EvalReport, primary_metric: str) -> Section | None:
    """Every system on every question set at a glance, with the gated system's gain over
    the base model in the same mode: the gate decides on the first row."""
    if not report.other_sets and report.retrieval_recall is None:
        return None
    labels = list(report.metrics)
    rows = []
    for r in (report, *report.other_sets):
        gain = next((c for c in r.comparisons if c.metric == primary_metric and c.b == r.baseline
                     and c.resampled == Resampling.DOCUMENTS), None)
        rows.append([
            r.question_set, str(len(r.rows)), fmt(r.retrieval_recall),
            *[fmt(r.metrics.get(label, {}).get(primary_metric)) for label in labels],
            f"{fmt_signed(gain.gain)} [{fmt_signed(gain.low)}, {fmt_signed(gain.high)}]" if gain else "",
        ])
    note = (
        f"{primary_metric} of each system. test: questions about documents no model trained on (style and "
        "reading); paraphrase: training questions asked in words not trained on (what the model learned); "
        "other sets: questions written by people. Retrieval recall: share of questions whose source chunk "
        f"was among the retrieved passages. The gate decides on the {report.question_set} set, for "
        f"{report.gated} against {report.baseline}."
    )
    headers = ["question set", "n", "retrieval recall", *labels, f"{report.gated} − {report.baseline} (CI, documents)"]
    return Section("Question sets", [note, Table(headers, rows)])


def other_set_sections(report: EvalReport, primary_metric: str) -> list[Section]:
    sections = [Section(f"Metrics on the {report.question_set} questions", [metrics_table(report.metrics)])]
    sections += [
        Section(f"{section.title} ({report.question_set})", section.blocks)
        for section in comparison_sections(report.comparisons, None, report.baseline)
    ]
    if (per_source := by_source_section(report.by_source, primary_metric, None)) is not None:
        sections.append(Section(f"{per_source.title} ({report.question_set})", per_source.blocks))
    return sections


def metrics_table(metrics: dict[str, dict[str, float]]) -> Table:
    labels = list(metrics)
    names = list(dict.fromkeys(name for values in metrics.values() for name in values))
    rows = [[name] + [fmt(metrics[label].get(name)) for label in labels] for name in names]
    return Table(["metric", *labels], rows)


def comparison_sections(comparisons: list[Interval], plot: Path | None,
                        baseline: str = ModelLabel.BASE) -> list[Section]:
    """One section per model the candidate is compared with: each metric's gain with its
    interval over resampled questions and, where there is one, over resampled documents
    (the gate decides on the latter: questions about one document are not independent)."""
    sections = []
    for other in dict.fromkeys(c.b for c in comparisons):
        by_metric: dict[str, dict[Resampling, Interval]] = {}
        for c in comparisons:
            if c.b == other:
                by_metric.setdefault(c.metric, {})[c.resampled] = c
        first = next(iter(by_metric.values()))[Resampling.QUESTIONS]
        confidence = f"{first.confidence:.0%}"
        rows = []
        for metric, intervals in by_metric.items():
            questions, documents = intervals[Resampling.QUESTIONS], intervals.get(Resampling.DOCUMENTS)
            rows.append([
                metric, fmt(questions.value_b), fmt(questions.value_a), fmt_signed(questions.gain),
                f"[{fmt_signed(questions.low)}, {fmt_signed(questions.high)}]",
                f"[{fmt_signed(documents.low)}, {fmt_signed(documents.high)}]" if documents else "",
                verdict(documents or questions),
            ])
        clusters = next((i[Resampling.DOCUMENTS].clusters for i in by_metric.values() if Resampling.DOCUMENTS in i), None)
        headers = ["metric", first.b, first.a, f"{first.a} − {first.b}", f"{confidence} CI, questions",
                   f"{confidence} CI, {clusters} documents" if clusters else "documents", "verdict"]
        note = (
            f"Paired bootstrap {confidence} confidence intervals, resampling the {first.clusters} questions, and "
            "resampling whole documents (the verdict's). Gains are signed so that positive means "
            f"{first.a} is better (for {', '.join(sorted(LOWER_IS_BETTER))} the gain is {first.b} − {first.a})."
        )
        blocks: list[Block] = [note, Table(headers, rows, align="lrrrrrl")]
        if plot and other == baseline:
            blocks.append(Image(plot))
        sections.append(Section(f"{first.a} versus {first.b}", blocks))
    return sections


def pairwise_section(pairwise: PairwiseResult | None) -> Section | None:
    if pairwise is None:
        return None
    a, b = pairwise.a, pairwise.b
    # Ties count against the win rate: a judge that cannot tell the answers apart is no evidence for a.
    win_rate = fmt(pairwise.wins / pairwise.n) if pairwise.n else ""
    counts = [
        str(v) for v in (pairwise.n, pairwise.wins, pairwise.losses, pairwise.ties, pairwise.inconsistent)
    ]
    note = (
        f"Each question judged in both orders; {a} wins a question only when the judge prefers "
        f"its answer both times, and a flip with the order counts as an (inconsistent) tie."
    )
    table = Table(
        ["questions", f"{a} wins", f"{b} wins", "ties", "of which inconsistent", f"{a} win rate"],
        [counts + [win_rate]],
    )
    return Section(f"LLM judge: {a} versus {b}", [note, table])


def by_source_section(
    by_source: dict[str, dict[str, float]], primary_metric: str, plot: Path | None
) -> Section | None:
    if not by_source:
        return None
    labels = source_labels(by_source)
    rows = [
        [source, fmt_count(values.get("n"))] + [fmt(values.get(label)) for label in labels]
        for source, values in by_source.items()
    ]
    blocks: list[Block] = [
        f"{primary_metric} on each source's test questions.",
        Table(["source", "n", *labels], rows),
    ]
    return Section("Per source", blocks + ([Image(plot)] if plot else []))


def source_labels(by_source: dict[str, dict[str, float]]) -> list[str]:
    return list(dict.fromkeys(k for values in by_source.values() for k in values if k != "n"))


def training_section(trained: TrainedModel, plot: Path | None) -> Section:
    rows = [
        ["method", trained.method],
        ["steps", str(trained.steps)],
        ["train loss", fmt(trained.train_loss)],
        ["best val loss", fmt(trained.best_val_loss)],
        ["seconds", fmt(trained.seconds)],
    ]
    blocks: list[Block] = [Table(["", "value"], rows, align="lr")]
    return Section("Training", blocks + ([Image(plot)] if plot else []))


def examples_section(rows: list[EvalRow], labels: list[str], total: int) -> Section | None:
    if not rows:
        return None
    table = Table(
        ["question", "reference", *labels],
        [[row.question, row.reference] + [row.answers.get(label, "") for label in labels] for row in rows],
        align="l" * (2 + len(labels)),
    )
    return Section("Example answers", [f"The first {len(rows)} of {total} test questions.", table])


def forgetting_section(general: list[EvalRow], metrics: dict[str, dict[str, float]]) -> Section | None:
    """General-knowledge questions outside the domain: a drop here means the fine-tune
    made the model forget what it knew."""
    names = list(dict.fromkeys(n for values in metrics.values() for n in values if n.startswith("general")))
    if not general and not names:
        return None
    blocks: list[Block] = [f"General-knowledge questions asked: {len(general)}."]
    if names:
        blocks.append(
            metrics_table({label: {n: v[n] for n in names if n in v} for label, v in metrics.items()})
        )
    return Section("Forgetting guard", blocks)


# ---- rendering -----------------------------------------------------------------------------------


def markdown_cell(text: str) -> str:
    # A raw pipe would split the cell and a raw newline would end the table row.
    return text.replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines += [
                    "| " + " | ".join(markdown_cell(h) for h in block.headers) + " |",
                    "|" + "|".join("---:" if a == "r" else "---" for a in block.alignment()) + "|",
                    *("| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in block.rows),
                ]
            elif isinstance(block, Image):
                # Relative, so the report and its plots can be moved together.
                lines.append(f"![{block.path.stem}]({block.path.name})")
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


def html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    cells = ['<td class="num">{}</td>' if a == "r" else "<td>{}</td>" for a in table.alignment()]
    body = "".join(
        "<tr>" + "".join(cell.format(html.escape(c)) for cell, c in zip(cells, row)) + "</tr>"
        for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_image(image: Image) -> str:
    # Embedded, so the single HTML file can be attached or mailed on its own.
    data = base64.b64encode(image.path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(image.path.stem)}" src="data:image/png;base64,{data}">'


def render_html(title: str, sections: list[Section]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(html_table(block))
            elif isinstance(block, Image):
                parts.append(html_image(block))
            else:
                parts.append(f"<p>{html.escape(block)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---- plots ---------------------------------------------------------------------------------------


def save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path


def headline(comparisons: list[Interval], baseline: str = ModelLabel.BASE) -> list[Interval]:
    """Per metric, the gated system versus the base, over documents where resampled so."""
    chosen: dict[str, Interval] = {}
    for c in comparisons:
        if c.b == baseline and (c.metric not in chosen or c.resampled == Resampling.DOCUMENTS):
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


# ---- plain text, for the console ----------------------------------------------------------------


def metrics_text(metrics: dict[str, dict[str, float]]) -> str:
    labels = list(metrics)
    names = list(dict.fromkeys(n for values in metrics.values() for n in values))
    lines = [f"{'metric':<24}" + "".join(f"{label:>21}" for label in labels)]
    lines += [
        f"{n:<24}" + "".join(f"{metrics[label][n]:>21.4f}" if n in metrics[label] else f"{'':>21}" for label in labels)
        for n in names
    ]
    return "\n".join(lines)


def comparisons_text(report: EvalReport, metric: str | None = None) -> str:
    """The gated system's gains on every question set (on `metric` only, if given)."""
    return "\n".join(
        f"[{r.question_set}] {c.metric:<18} {c.a} - {c.b}: {c.gain:+.4f}  {round(100 * c.confidence)}% CI "
        f"[{c.low:+.4f}, {c.high:+.4f}] over {c.clusters} {c.resampled}"
        for r in (report, *report.other_sets)
        for c in r.comparisons
        if metric is None or c.metric == metric
    )
