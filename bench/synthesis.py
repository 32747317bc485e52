"""Offline QA generation on the sample corpus: pairs per second, and the share of
candidate pairs each filter keeps.

    python bench/synthesis.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

from common import default_chunks, default_config

from qaforge.synthesis import candidate_pairs, synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    config = default_config()
    chunks = default_chunks(config)
    cfg = config.synthesis
    start = time.perf_counter()
    for _ in range(args.repeat):
        data = synthesize(chunks, cfg)
    seconds = (time.perf_counter() - start) / args.repeat
    candidates = len(candidate_pairs(chunks, cfg)[0])
    kept = len(data.train) + len(data.val) + len(data.test)
    documents = len({c.doc_id for c in chunks.chunks})
    print(f"{documents} documents, {len(chunks.chunks)} chunks, {candidates} candidate pairs")
    print(f"{'stage':<22}{'pairs':>7}{'share':>8}")
    remaining = candidates
    for name in ("empty", "refusal", "ungrounded", "length", "duplicate_question"):
        remaining -= data.dropped.get(name, 0)
        print(f"after {name:<16}{remaining:>7}{remaining / candidates:>8.1%}")
    print(f"kept{kept:>25}  train/val/test {len(data.train)}/{len(data.val)}/{len(data.test)}")
    print(f"offline generator: {kept / seconds:,.0f} kept pairs/s ({seconds * 1000:.1f} ms per corpus)")


if __name__ == "__main__":
    main()
