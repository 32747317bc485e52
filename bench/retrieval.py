"""Closed-book fine-tuning versus retrieval-augmented fine-tuning (RAFT), each scored
as four systems (base and fine-tuned, closed book and with retrieved passages) on every
question set of a run config: the unseen-document test split, held-out facts of
training documents, reworded training questions, and its gold sets (every set for the
systems the gate compares, the gate's set for the other mode). Prints each system's primary metric, the gains
with document-level 95% intervals, retrieval recall, and the time each stage took.

    python bench/retrieval.py [--config configs/default.yaml] [--modes closed raft]
        [--steps N] [--replay RATIO] [--method full|lora] [--learning-rate LR] [--trainable-layers N]
        [--with-source SHARE] [--without-source-answer TEXT] [--report PREFIX]

Besides the primary metric it prints numeric accuracy (answers that state every figure
of the reference), the refusal rates, and the forgetting guard's general-QA accuracy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from qaforge.config import CONTEXT_MARGIN_TOKENS, ContextTraining, Method, ReplayConfig
from qaforge.evaluation import AnswerCache, ModelRef, evaluate, question_sets, systems
from qaforge.evaluation.metrics import NUMERIC_ACCURACY
from qaforge.modeling import resolve_base_model
from qaforge.records import Resampling, SetReport
from qaforge.retrieval import Retriever
from qaforge.served import Answering
from qaforge.synthesis import synthesize
from qaforge.training import train

from common import REPO, default_chunks, default_config


def gains(scores: SetReport, metric: str) -> str:
    out = []
    for c in scores.comparisons:
        # The set's own unit: documents or groups where it has them, else questions.
        if c.metric == metric and (c.resampled != Resampling.QUESTIONS or scores.unit == Resampling.QUESTIONS):
            out.append(f"{c.a} - {c.b}: {c.gain:+.3f} [{c.low:+.3f}, {c.high:+.3f}] ({c.clusters} {c.resampled})")
    return "\n    ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--modes", nargs="+", choices=["closed", "raft"], default=["closed", "raft"])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--replay", type=float, help="replay ratio of general data (0: none)")
    parser.add_argument("--method", choices=[m.value for m in Method])
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--trainable-layers", type=int, help="full fine-tuning of the top N layers only (0: all)")
    parser.add_argument("--with-source", type=float, help="RAFT: share of examples whose passages hold the answer")
    parser.add_argument("--without-source-answer", help="RAFT: the answer taught when they do not")
    parser.add_argument("--report", type=Path, help="write each mode's evaluation report to REPORT-<mode>.json")
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
    print(f"{len(chunks.chunks)} chunks; train/val {len(data.train)}/{len(data.val)}; sets "
          + ", ".join(f"{name} {q.describe()}" for name, q in sets.items()))
    base = resolve_base_model(config.model)
    for mode in args.modes:
        raft = mode == "raft"
        context = (config.training.context or ContextTraining()).model_copy(update={
            k: v for k, v in (("with_source", args.with_source),
                              ("without_source_answer", args.without_source_answer)) if v is not None})
        chosen_training = {k: v for k, v in (("max_steps", args.steps), ("learning_rate", args.learning_rate),
                                             ("method", args.method and Method(args.method))) if v is not None}
        if args.trainable_layers is not None:
            chosen_training["trainable_layers"] = args.trainable_layers or None
        if args.replay is not None:
            chosen_training["replay"] = ReplayConfig(ratio=args.replay) if args.replay else None
        training = config.training.model_copy(update=chosen_training | (
            {"context": context,
             "max_length": max(config.training.max_length,
                               top_k * config.chunking.max_tokens + CONTEXT_MARGIN_TOKENS)} if raft else
            {"context": None}))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run = train(data, config.model, training.model_copy(update={"output_dir": Path(tmp)}), config.prompt,
                        retriever=retriever, top_k=top_k)
            times[f"train ({mode})"] = time.perf_counter() - start
            system_prompt = config.prompt.system_prompt
            chosen, gated, baseline = systems(ModelRef(str(run.model_dir)), ModelRef(base, identity=base), None,
                                              Answering(system_prompt), Answering(system_prompt, retriever, top_k),
                                              raft, compare_modes=True)
            start = time.perf_counter()
            report = evaluate(chosen, sets, evaluation, gated=gated, baseline=baseline, gate_on=evaluation.gate_on,
                              cache=AnswerCache(evaluation.cache_dir))
            times[f"evaluate ({mode})"] = time.perf_counter() - start
        if args.report:
            Path(f"{args.report}-{mode}.json").write_text(report.model_dump_json(indent=1))
        layers = f" (top {training.trainable_layers} layers)" if training.trainable_layers else ""
        print(f"\n== {mode}: {training.method.value}{layers}, {run.fit.steps} steps at {training.learning_rate}, replay "
              f"{training.replay.ratio if training.replay else 0}, best val loss {run.fit.best_val_loss}", flush=True)
        print(f"gate: {report.gate_set} {report.gate_note}")
        for r in report.sets.values():
            recall = f", retrieval recall@{top_k} {r.retrieval_recall:.2f}" if r.retrieval_recall is not None else ""
            print(f"[{r.name}] n={len(r.rows)}{recall}\n    {gains(r, metric)}", flush=True)
            for name in (metric, "token_f1", NUMERIC_ACCURACY, "refusal_rate", "false_refusal_rate"):
                values = "  ".join(f"{label} {m[name]:.3f}" for label, m in r.metrics.items() if name in m)
                if values:
                    print(f"    {name}: {values}")
        if report.guard is not None:
            print("guard (general-QA accuracy): " + "  ".join(f"{k} {v:.3f}" for k, v in report.guard.accuracy.items()))
    print("\nseconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
