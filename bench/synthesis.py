"""Offline QA generation on the sample corpus: pairs per second, and the share of
candidate pairs each filter keeps.

    python bench/synthesis.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from qaforge.config import ModelConfig, SourcesConfig, SynthesisConfig
from qaforge.modeling import load_tokenizer, resolve_base_model
from steps.chunk import chunk_corpus
from steps.ingest import ingest
from steps.synthesize import candidate_pairs, synthesize

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        corpus, _ = ingest(
            SourcesConfig(
                web=[{"start": "index.html", "serve_dir": SAMPLE / "site"}],
                files=[SAMPLE / "docs"],
                state_dir=Path(tmp),
            )
        )
    chunks = chunk_corpus(corpus, load_tokenizer(resolve_base_model(ModelConfig())), 192)
    cfg = SynthesisConfig()
    start = time.perf_counter()
    for _ in range(args.repeat):
        data = synthesize(chunks, cfg)
    seconds = (time.perf_counter() - start) / args.repeat
    candidates = len(candidate_pairs(chunks, cfg)[0])
    kept = len(data.train) + len(data.val) + len(data.test)
    print(f"{len(corpus.documents)} documents, {len(chunks.chunks)} chunks, {candidates} candidate pairs")
    print(f"{'stage':<22}{'pairs':>7}{'share':>8}")
    remaining = candidates
    for name in ("empty", "refusal", "ungrounded", "length", "duplicate_question"):
        remaining -= data.dropped.get(name, 0)
        print(f"after {name:<16}{remaining:>7}{remaining / candidates:>8.1%}")
    print(f"kept{kept:>25}  train/val/test {len(data.train)}/{len(data.val)}/{len(data.test)}")
    print(f"offline generator: {kept / seconds:,.0f} kept pairs/s ({seconds * 1000:.1f} ms per corpus)")


if __name__ == "__main__":
    main()
