"""The report's sections, from the evaluation record: which set the gate reads and why,
every system on every question set, the gains with their intervals, speed, training,
example answers and the forgetting guard."""

from __future__ import annotations

from pathlib import Path

from qaforge.evaluation.metrics import LOWER_IS_BETTER, breakdown_metric
from qaforge.evaluation.report.render import (
    Block,
    Image,
    Section,
    Table,
    fmt,
    fmt_count,
    fmt_signed,
    source_labels,
)
from qaforge.records import (
    EvalReport,
    EvalRow,
    GuardReport,
    Interval,
    PairwiseResult,
    QuestionSet,
    Resampling,
    SetReport,
    TrainedModel,
)

# What each of qaforge's own sets measures; any other set is a gold set written by people.
SET_MEANINGS: dict[str, str] = {
    QuestionSet.TEST: "questions about documents no model trained on (reading and style)",
    QuestionSet.KNOWLEDGE: "facts of training documents, asked and answered in words never trained on "
    "(did the model learn the fact, or can it read it from the passages?)",
    QuestionSet.MEMORISATION: "training questions reworded, whose answers are training targets word for word "
    "(memorisation, not knowledge)",
}


def verdict(interval: Interval) -> str:
    # Gains are signed upstream so positive is better, whatever the metric's direction.
    if interval.low > 0:
        return "better"
    if interval.high < 0:
        return "worse"
    return "no clear difference"


def units_text(scores: SetReport) -> str:
    return f"{scores.units} {scores.unit}"


def build_sections(
    report: EvalReport, trained: TrainedModel | None, plots: dict[str, Path], *, primary_metric: str,
    examples: int,
) -> list[Section]:
    gate = report.decided_on
    shown = gate or next(iter(report.sets.values()))
    sections = [
        decision_section(report, primary_metric),
        *set_sections(shown, report.baseline, primary_metric, plots),
        speed_section(report.speed),
        training_section(trained, plots.get("loss")),
        examples_section(shown.rows[:examples], list(shown.metrics), len(shown.rows), shown.name),
        forgetting_section(report.guard),
        *(section for scores in report.sets.values() if scores is not shown
          for section in set_sections(scores, report.baseline, primary_metric, {})),
    ]
    return [s for s in sections if s is not None]


def decision_section(report: EvalReport, primary_metric: str) -> Section:
    """Every system on every question set at a glance, with the gated system's gain over
    the baseline, and which set the gate reads."""
    labels = list(next(iter(report.sets.values())).metrics)
    rows = []
    for scores in report.sets.values():
        gain = scores.gain(primary_metric, report.baseline)
        rows.append([
            scores.name + (" (gate)" if scores.name == report.gate_set else ""), str(len(scores.rows)),
            units_text(scores), fmt(scores.retrieval_recall),
            *[fmt(scores.metrics.get(label, {}).get(primary_metric)) for label in labels],
            f"{fmt_signed(gain.gain)} [{fmt_signed(gain.low)}, {fmt_signed(gain.high)}]" if gain else "",
        ])
    meanings = "; ".join(f"{name}: {SET_MEANINGS.get(name, 'questions written by people')}" for name in report.sets)
    gate = (f"The gate decides on the {report.gate_set} set, for {report.gated} against {report.baseline}."
            if report.gate_set else "No question set has enough units to decide on: nothing is promoted.")
    blocks: list[Block] = [
        f"{primary_metric} of each system on each set. {meanings}. Retrieval recall: share of questions whose "
        "source chunk was among the retrieved passages. The interval is the more cautious of those over "
        "questions and over the set's units.",
        *([report.gate_note] if report.gate_note else []),
        gate,
        Table(["question set", "n", "units", "retrieval recall", *labels,
               f"{report.gated} − {report.baseline} (CI)"], rows),
    ]
    return Section("Decision", blocks)


def set_sections(scores: SetReport, baseline: str, primary_metric: str, plots: dict[str, Path]) -> list[Section]:
    where = f" ({scores.name})"
    sections = [Section(f"Metrics on the {scores.name} questions", [metrics_table(scores.metrics)])]
    sections += [Section(s.title + where, s.blocks)
                 for s in comparison_sections(scores.comparisons, plots.get("metrics"), baseline)]
    sections += [s for s in (pairwise_section(scores.pairwise),
                             by_source_section(scores.by_source, breakdown_metric(primary_metric),
                                               plots.get("by_source")))
                 if s is not None]
    return sections


def metrics_table(metrics: dict[str, dict[str, float]]) -> Table:
    labels = list(metrics)
    names = list(dict.fromkeys(name for values in metrics.values() for name in values))
    rows = [[name] + [fmt(metrics[label].get(name)) for label in labels] for name in names]
    return Table(["metric", *labels], rows)


def comparison_sections(comparisons: list[Interval], plot: Path | None, baseline: str) -> list[Section]:
    """One section per system the gated one is compared with: each metric's gain with its
    interval over resampled questions and, where there is one, over resampled units
    (documents, groups or categories: questions about one of them are not independent)."""
    sections = []
    for other in dict.fromkeys(c.b for c in comparisons):
        by_metric: dict[str, dict[Resampling, Interval]] = {}
        for c in comparisons:
            if c.b == other:
                by_metric.setdefault(c.metric, {})[c.resampled] = c
        first = next(iter(by_metric.values()))[Resampling.QUESTIONS]
        confidence = f"{first.confidence:.0%}"
        clustered = next((i for intervals in by_metric.values() for r, i in intervals.items()
                          if r != Resampling.QUESTIONS), None)
        rows = []
        for metric, intervals in by_metric.items():
            questions = intervals[Resampling.QUESTIONS]
            units = clustered and intervals.get(clustered.resampled)
            rows.append([
                metric, fmt(questions.value_b), fmt(questions.value_a), fmt_signed(questions.gain),
                f"[{fmt_signed(questions.low)}, {fmt_signed(questions.high)}]",
                f"[{fmt_signed(units.low)}, {fmt_signed(units.high)}]" if units else "",
                verdict(units or questions),
            ])
        headers = ["metric", first.b, first.a, f"{first.a} − {first.b}", f"{confidence} CI, questions",
                   f"{confidence} CI, {clustered.clusters} {clustered.resampled}" if clustered else "units",
                   "verdict"]
        note = (
            f"Paired bootstrap {confidence} confidence intervals, resampling the {first.clusters} questions and, "
            "where shown, whole units (the verdict's). Gains are signed so that positive means "
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
        f"{primary_metric} on each source's questions.",
        Table(["source", "n", *labels], rows),
    ]
    return Section("Per source", blocks + ([Image(plot)] if plot else []))


def speed_section(speed: dict[str, dict[str, float]]) -> Section | None:
    if not speed:
        return None
    return Section("Speed", [
        "Through the server's engine: tokens/s of the batched run over the gate's set; latency of single "
        "requests with nothing else in flight, for the systems the gate compares.",
        metrics_table(speed),
    ])


def training_section(trained: TrainedModel | None, plot: Path | None) -> Section | None:
    """How the candidate was trained; None for a model scored without training (`qaforge evaluate`)."""
    if trained is None:
        return None
    rows = [
        ["method", trained.method],
        ["steps", str(trained.steps)],
        ["train loss", fmt(trained.train_loss)],
        ["best val loss", fmt(trained.best_val_loss)],
        ["seconds", fmt(trained.seconds)],
    ]
    blocks: list[Block] = [Table(["", "value"], rows, align="lr")]
    return Section("Training", blocks + ([Image(plot)] if plot else []))


def examples_section(rows: list[EvalRow], labels: list[str], total: int, name: str) -> Section | None:
    if not rows:
        return None
    table = Table(
        ["question", "reference", *labels],
        [[row.question, row.reference] + [row.answers.get(label, "") for label in labels] for row in rows],
        align="l" * (2 + len(labels)),
    )
    return Section("Example answers", [f"The first {len(rows)} of {total} {name} questions.", table])


def forgetting_section(guard: GuardReport | None) -> Section | None:
    """General-knowledge questions outside the domain: a drop here means the fine-tune
    made the model forget what it knew."""
    if guard is None:
        return None
    rows = [[label, fmt(accuracy)] for label, accuracy in guard.accuracy.items()]
    rows += [[f"{c.a} − {c.b}", f"{fmt_signed(c.gain)} [{fmt_signed(c.low)}, {fmt_signed(c.high)}]"]
             for c in guard.comparisons]
    return Section("Forgetting guard", [
        f"{len(guard.rows)} general-knowledge questions, asked closed book: the share answered right.",
        Table(["system", "general-QA accuracy"], rows, align="lr"),
    ])
