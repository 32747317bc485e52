"""Offline QA generation on the sample, FAQ and owner's-manual corpora: pairs per
second, the share of candidate questions each filter keeps, the share of malformed ones
(a verb or pronoun as subject, doubled punctuation, a question inside a question, a
clause cut off) and the share of each kind of question kept (how-to, troubleshooting,
definition, table, ...).

    python bench/synthesis.py [--repeat 5] [--configs configs/default.yaml configs/faq.yaml configs/manual.yaml]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from qaforge.synthesis import candidate_pairs, synthesize
from qaforge.synthesis.filters import malformed

from common import REPO, default_chunks, default_config

FILTERS = ("empty", "malformed", "refusal", "ungrounded", "length", "duplicate_question")


def report(path: Path, repeat: int) -> None:
    config = default_config(path)
    chunks = default_chunks(config)
    cfg = config.synthesis
    start = time.perf_counter()
    for _ in range(repeat):
        data = synthesize(chunks, cfg)
    seconds = (time.perf_counter() - start) / repeat
    found = candidate_pairs(chunks, cfg)[0]
    questions = [(c.question, bool(c.history)) for c in found] + [(q, False) for c in found for q in c.rephrasings]
    bad = [(q, why) for q, follow_up in questions if not follow_up and (why := malformed(q))]
    kept = len(data.train) + len(data.val) + len(data.test) + len(data.knowledge) + len(data.memorisation)
    documents = len({c.doc_id for c in chunks.chunks})
    print(f"\n== {path.relative_to(REPO)}: {documents} documents, {len(chunks.chunks)} chunks, "
          f"{len(found)} candidate pairs, {len(questions)} questions with rephrasings")
    print(f"malformed questions written: {len(bad)} of {len(questions)} ({len(bad) / len(questions):.1%}), "
          "all dropped")
    for question, why in bad[:5]:
        print(f"  {why}: {question}")
    print(f"{'stage':<22}{'pairs':>7}{'share':>8}   (first phrasings)")
    remaining = len(found)
    for name in FILTERS:
        remaining -= data.dropped.get(name, 0) if name != "malformed" else sum(
            1 for c in found if not c.history and malformed(c.question))
        print(f"after {name:<16}{remaining:>7}{remaining / len(found):>8.1%}")
    kinds: dict[str, int] = {}
    for p in data.train + data.val + data.test:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    total = sum(kinds.values())
    print(f"kept{kept:>25}  train/val/test/knowledge/memorisation {len(data.train)}/{len(data.val)}/"
          f"{len(data.test)}/{len(data.knowledge)}/{len(data.memorisation)}")
    print("kinds of train/val/test questions: " + ", ".join(
        f"{kind} {n / total:.0%}" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1])))
    how_to = sum(p.question.startswith(("How do I", "How can I")) for p in data.train + data.val + data.test)
    print(f"how-to questions: {how_to / total:.0%}")
    for p in data.test[:6]:
        print(f"  test question: {p.question}")
    print(f"offline generator: {kept / seconds:,.0f} kept pairs/s ({seconds * 1000:.1f} ms per corpus)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--configs", nargs="+", type=Path,
                        default=[REPO / "configs" / name for name in ("default.yaml", "faq.yaml", "manual.yaml")])
    args = parser.parse_args()
    for path in args.configs:
        report(path.resolve(), args.repeat)


if __name__ == "__main__":
    main()
