"""What evaluation costs: seconds per system and question set, cold (no cached answers),
for a run config's corpus and a candidate trained once with its training section (the
finished run is reused on a rerun) or given as a folder. Prints the CPU, the
seconds table, the total and each system's primary metric on each set.

    python bench/evaluate.py [--config configs/default.yaml] [--candidate DIR] [--batch-size N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from qaforge.evaluation import AnswerCache, ModelRef, evaluate, question_sets, systems
from qaforge.modeling import resolve_base_model
from qaforge.retrieval import Retriever
from qaforge.served import Answering
from qaforge.synthesis import synthesize
from qaforge.training import train

from common import REPO, default_chunks, default_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--candidate", help="A model folder; default: train one with the config.")
    parser.add_argument("--batch-size", type=int, help="evaluation.batch_size: rows the engine runs together.")
    args = parser.parse_args()
    config = default_config(args.config.resolve())
    if args.batch_size:
        config = config.model_copy(update={
            "evaluation": config.evaluation.model_copy(update={"batch_size": args.batch_size})})
    chunks = default_chunks(config)
    data = synthesize(chunks, config.synthesis)
    index = Retriever.build(chunks)
    candidate = args.candidate
    if candidate is None:
        training = config.training.model_copy(update={"output_dir": REPO / ".qaforge" / "bench-train"})
        candidate = str(train(data, config.model, training, config.prompt, retriever=index,
                              top_k=config.retrieval.top_k).model_dir)
    base = resolve_base_model(config.model)
    prompt, retrieval, evaluation = config.prompt, config.retrieval, config.evaluation
    chosen, gated, baseline = systems(
        ModelRef(candidate), ModelRef(base, identity=base), None, Answering(prompt.system_prompt),
        Answering(prompt.system_prompt, index, retrieval.top_k), retrieval.serve, evaluation.compare_modes)
    sets = question_sets(data, evaluation)
    start = time.perf_counter()
    report = evaluate(chosen, sets, evaluation, gated=gated, baseline=baseline, gate_on=evaluation.gate_on,
                      cache=AnswerCache(None))
    total = time.perf_counter() - start
    labels = list(chosen)
    print(f"CPU: torch capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads; "
          f"config {args.config.name}; sets: " + ", ".join(f"{name} {q.describe()}" for name, q in sets.items()))
    print(f"\nseconds{'':<9}" + "".join(f"{label:>21}" for label in labels))
    for scope, by_label in report.seconds.items():
        print(f"{scope:<16}" + "".join(f"{by_label[label]:>21.1f}" if label in by_label else f"{'':>21}"
                                       for label in labels))
    print(f"evaluation in all: {total:.1f} s")
    metric = evaluation.primary_metric
    print(f"\n{metric}{'':<{16 - len(metric)}}" + "".join(f"{label:>21}" for label in labels))
    for name, scores in report.sets.items():
        print(f"{name:<16}" + "".join(f"{scores.metrics[label][metric]:>21.4f}" if label in scores.metrics
                                       else f"{'':>21}" for label in labels))
    print(f"gate set: {report.gate_set}. {report.gate_note}")


if __name__ == "__main__":
    main()
