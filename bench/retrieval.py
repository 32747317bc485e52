"""Closed-book fine-tuning versus retrieval-augmented fine-tuning (RAFT), each scored
as four systems (base and fine-tuned, closed book and with retrieved passages) on every
question set of a run config: the unseen-document test split, held-out phrasings of
training questions, and its gold sets. Prints each system's primary metric, the gains
with document-level 95% intervals, retrieval recall, and the time each stage took.

    python bench/retrieval.py [--config configs/default.yaml] [--modes closed raft]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import REPO, default_chunks, default_config

from qaforge.config import CONTEXT_MARGIN_TOKENS, ContextTraining
from qaforge.evaluation import ModelRef, evaluate, question_sets, systems
from qaforge.modeling import resolve_base_model
from qaforge.records import EvalReport, Resampling
from qaforge.retrieval import Retriever
from qaforge.synthesis import synthesize
from qaforge.training import train


def gains(report: EvalReport, metric: str) -> str:
    out = []
    for c in report.comparisons:
        if c.metric == metric and c.resampled == Resampling.DOCUMENTS:
            out.append(f"{c.a} - {c.b}: {c.gain:+.3f} [{c.low:+.3f}, {c.high:+.3f}] ({c.clusters} docs)")
    return "\n    ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--modes", nargs="+", choices=["closed", "raft"], default=["closed", "raft"])
    parser.add_argument("--steps", type=int)
    args = parser.parse_args()
    config = default_config(args.config.resolve())
    start = time.perf_counter()
    chunks = default_chunks(config)
    times = {"ingest+chunk": time.perf_counter() - start}
    start = time.perf_counter()
    data = synthesize(chunks, config.synthesis)
    times["synthesize"] = time.perf_counter() - start
    start = time.perf_counter()
    retriever = Retriever.build(chunks)
    times["index"] = time.perf_counter() - start
    top_k, evaluation, metric = config.retrieval.top_k, config.evaluation, config.evaluation.primary_metric
    sets = question_sets(data, evaluation)
    print(f"{len(chunks.chunks)} chunks; train/val/test/paraphrase {len(data.train)}/{len(data.val)}/"
          f"{len(data.test)}/{len(data.paraphrase)}; sets {', '.join(f'{k} {len(v)}' for k, v in sets.items())}")
    base = resolve_base_model(config.model)
    for mode in args.modes:
        raft = mode == "raft"
        training = config.training.model_copy(update={"max_steps": args.steps or config.training.max_steps} | (
            {"context": config.training.context or ContextTraining(),
             "max_length": max(config.training.max_length,
                               top_k * config.chunking.max_tokens + CONTEXT_MARGIN_TOKENS)} if raft else
            {"context": None}))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run = train(data, config.model, training.model_copy(update={"output_dir": Path(tmp)}), config.prompt,
                        retriever=retriever, top_k=top_k)
            times[f"train ({mode})"] = time.perf_counter() - start
            chosen, gated, baseline = systems(ModelRef(str(run.model_dir)), ModelRef(base, identity=base), None,
                                              raft, compare_modes=True)
            start = time.perf_counter()
            report = evaluate(chosen, sets, config.prompt, evaluation, gated=gated, baseline=baseline,
                              retriever=retriever, top_k=top_k, cache_dir=evaluation.cache_dir)
            times[f"evaluate ({mode})"] = time.perf_counter() - start
        print(f"\n== {mode}: trained {run.fit.steps} steps, best val loss {run.fit.best_val_loss}", flush=True)
        for r in (report, *report.other_sets):
            values = "  ".join(f"{label} {m[metric]:.3f}" for label, m in r.metrics.items())
            recall = f", retrieval recall@{top_k} {r.retrieval_recall:.2f}" if r.retrieval_recall is not None else ""
            print(f"[{r.question_set}] n={len(r.rows)}{recall}\n    {metric}: {values}\n    {gains(r, metric)}",
                  flush=True)
    print("\nseconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
