"""The QA dataset in the formats other tools read, and a dataset card."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from qaforge.prompting import build_messages, unweighted_history
from qaforge.records import QADataset, QAPair, QuestionSet

SPLITS = ("train", "val", "test")


def _messages(pair: QAPair, system_prompt: str | None) -> list[dict[str, Any]]:
    """The conversation; earlier answers carry OpenAI's `"weight": 0`, since each is a
    pair (and trained on) of its own."""
    return [*unweighted_history(build_messages(pair.question, system_prompt, pair.history)),
            {"role": "assistant", "content": pair.answer}]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_exports(data: QADataset, system_prompt: str | None, out_dir: Path) -> list[Path]:
    """Per split: ChatML-style messages JSONL (with provenance), Alpaca JSON (with
    provenance) and OpenAI fine-tuning JSONL (messages only, as that API requires)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for split in SPLITS:
        pairs: list[QAPair] = getattr(data, split)
        provenance = [{"chunk_id": p.chunk_id, "source": p.source, "kind": p.kind} for p in pairs]
        files: dict[str, list[dict]] = {
            f"{split}.messages.jsonl": [
                {"messages": _messages(p, system_prompt), **meta} for p, meta in zip(pairs, provenance)
            ],
            f"{split}.openai.jsonl": [{"messages": _messages(p, system_prompt)} for p in pairs],
        }
        for name, rows in files.items():
            _jsonl(out_dir / name, rows)
            written.append(out_dir / name)
        # Earlier turns as Alpaca's `history` (LLaMA-Factory's reading): [[question, answer], ...].
        alpaca = [
            {"instruction": p.question, "input": "", "output": p.answer, "system": system_prompt or "",
             "history": [[t.question, t.answer] for t in p.history], **meta}
            for p, meta in zip(pairs, provenance)
        ]
        (out_dir / f"{split}.alpaca.json").write_text(json.dumps(alpaca, ensure_ascii=False, indent=1))
        written.append(out_dir / f"{split}.alpaca.json")
    return written


def dataset_card(data: QADataset, examples: int = 3) -> str:
    splits = {s: getattr(data, s) for s in SPLITS}
    lines = [
        "# QA dataset",
        "",
        f"Generator: `{data.generator}`. Splits are by document: no document is in two splits.",
        "",
        "| split | pairs | documents | sources |",
        "|---|---|---|---|",
    ]
    held: dict[str, list[QAPair]] = {name: data.question_set(name) for name in (QuestionSet.KNOWLEDGE, QuestionSet.MEMORISATION)}
    for name, pairs in {**splits, **held}.items():
        lines.append(f"| {name} | {len(pairs)} | {len({p.doc_id for p in pairs})} | {len({p.source for p in pairs})} |")
    lines += ["", "knowledge (evaluation only): questions about training documents held out with every phrasing, whose "
              "answer sentences no training answer contains.",
              "", "memorisation (evaluation only): the held-out phrasing of training questions whose other "
              "phrasings, with the same answer, are trained on."]
    kinds = Counter(p.kind for pairs in splits.values() for p in pairs)
    lines += ["", "## Question kinds", "", *(f"- {k}: {n}" for k, n in kinds.most_common())]
    lines += ["", "## Dropped by filter", "", *(f"- {k}: {n}" for k, n in sorted(data.dropped.items()))]
    if not data.dropped:
        lines.append("- none")
    if data.generator_stats:
        lines += ["", "## Generator usage", "", *(f"- {k}: {v}" for k, v in data.generator_stats.items())]
    coverage = Counter(p.source for pairs in splits.values() for p in pairs)
    lines += ["", "## Source coverage", "", "| source | pairs |", "|---|---|"]
    lines += [f"| {source} | {n} |" for source, n in coverage.most_common()]
    lines += ["", "## Examples", ""]
    for pair in data.train[:examples]:
        lines += [f"- **Q:** {pair.question}", f"  **A:** {pair.answer}", f"  _({pair.kind}, {pair.source})_"]
    return "\n".join(lines) + "\n"
