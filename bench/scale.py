"""How cost grows with the corpus: ingest (crawl and convert), chunk, index, synthesis
and evaluation on generated sites of about 10, 100 and 1,000 pages (a park guide from
scripts/make_sample_docs.py, crawled from 127.0.0.1), with the default config's
settings. Prints seconds and peak memory (the resident set of a process that runs one
size only) per stage.

Evaluation is the base model answering the test split's questions with retrieved
passages through the engine, one system of the four a run scores. Its cost per question
does not depend on the corpus, so above `--eval-questions` (default 100) it answers a
spread of that many and prints the seconds per question with the split's full size.

    python bench/scale.py [--pages 10 100 1000] [--eval-questions 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import torch

from qaforge.chunking import chunk_corpus
from qaforge.config import WebSource
from qaforge.evaluation.answers import AnswerCache, Ask, LazyModel, answer, as_asked
from qaforge.evaluation.sets import spread
from qaforge.ingest import ingest
from qaforge.modeling import load_tokenizer, resolve_base_model
from qaforge.records import ModelLabel, ModelRef
from qaforge.retrieval import Retriever
from qaforge.served import Answering
from qaforge.synthesis import synthesize

from common import REPO, default_config

sys.path.insert(0, str(REPO / "scripts"))
from make_sample_docs import write_site


@contextmanager
def measured(row: dict[str, Any], stage: str) -> Iterator[None]:
    """The stage's seconds and the process's peak resident memory while it ran, sampled."""
    process, peak, done = psutil.Process(), [psutil.Process().memory_info().rss], threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        row[stage] = time.perf_counter() - start
        done.set()
        sampler.join()
        row[f"{stage} MB"] = max(peak[0], process.memory_info().rss) / 2**20


def run(pages: int, eval_questions: int, log: Callable[[str], None]) -> dict[str, Any]:
    cfg = default_config()
    base = resolve_base_model(cfg.model)
    tokenizer = load_tokenizer(base)
    row: dict[str, Any] = {"pages": pages}
    with tempfile.TemporaryDirectory(prefix=f"qaforge-scale-{pages}-") as tmp:
        site = Path(tmp) / "site"
        write_site(site, pages)
        sources = cfg.sources.model_copy(update={
            "web": [WebSource(start="index.html", serve_dir=site, max_pages=pages + pages // 50 + 2,
                              concurrency=8)],
            "files": [], "state_dir": Path(tmp) / "ingest"})
        with measured(row, "ingest"):
            corpus, report = ingest(sources)
        row["documents"], row["failures"] = len(corpus.documents), len(report.failures)
        with measured(row, "chunk"):
            chunks = chunk_corpus(corpus, tokenizer, cfg.chunking.max_tokens)
        row["chunks"] = len(chunks.chunks)
        with measured(row, "index"):
            index = Retriever.build(chunks)
        with measured(row, "synthesis"):
            data = synthesize(chunks, cfg.synthesis)
        row["pairs"], row["test questions"] = len(data.train) + len(data.val) + len(data.test), len(data.test)
        asked = spread(data.test, eval_questions)
        answering = Answering(cfg.prompt.system_prompt, index, cfg.retrieval.top_k)
        model = LazyModel(ModelRef(base, identity=base), cfg.evaluation)
        model.get()  # loading the model is not the corpus's cost
        with measured(row, "evaluation"):
            answer(model,
                   [Ask(("test", ModelLabel.BASE_RETRIEVAL), as_asked(asked, answering), None,
                        cfg.evaluation.max_new_tokens)],
                   cfg.evaluation.batch_size, AnswerCache(None))
        row["asked"] = len(asked)
    log(f"{pages} pages: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--eval-questions", type=int, default=100)
    parser.add_argument("--row", action="store_true", help=argparse.SUPPRESS)  # one size, its row as JSON
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.row:
        [pages] = args.pages
        print(json.dumps(run(pages, args.eval_questions, lambda line: print(line, file=sys.stderr, flush=True))))
        return
    print(f"CPU: torch capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads", flush=True)
    rows = []
    for pages in args.pages:  # each size in a process of its own, so that its memory is its own
        done = subprocess.run([sys.executable, __file__, "--row", "--pages", str(pages),
                               "--eval-questions", str(args.eval_questions)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{pages} pages failed:\n{done.stderr[-4000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(done.stderr.strip().splitlines()[-1], flush=True)

    stages = ["ingest", "chunk", "index", "synthesis", "evaluation"]
    print(f"\n{'pages':>6}{'docs':>6}{'chunks':>8}{'pairs':>7}{'test q':>8}"
          + "".join(f"{s + ' s':>14}" for s in stages) + f"{'s per q':>9}{'peak MB':>9}")
    for r in rows:
        print(f"{r['pages']:>6}{r['documents']:>6}{r['chunks']:>8}{r['pairs']:>7}{r['test questions']:>8}"
              + "".join(f"{r[s]:>14.1f}" for s in stages)
              + f"{r['evaluation'] / max(r['asked'], 1):>9.2f}{max(r[f'{s} MB'] for s in stages):>9.0f}")
    print("\npeak MB per stage: " + "; ".join(
        f"{r['pages']} pages: " + ", ".join(f"{s} {r[f'{s} MB']:.0f}" for s in stages) for r in rows))
    print("evaluation of the whole test split, per system: " + ", ".join(
        f"{r['pages']} pages {r['test questions']} questions ~{r['evaluation'] / max(r['asked'], 1) * r['test questions']:.0f} s"
        for r in rows))


if __name__ == "__main__":
    main()
