"""Does the report say what the server does? Every system of a run config's evaluation
(the candidate trained once with its training section, and the base, closed book and
with passages) is logged as the train step logs a model, served by `python -m
serving.server` on 127.0.0.1, and asked the questions evaluation asked it, all at once
(the server batches them as they come). Prints, per question set and system, the
primary metric from the report and from the server's answers, and how many answers differ.

    python bench/agreement.py [--config configs/default.yaml] [--precision auto]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import mlflow
import torch
from serve import free_port, wait_ready

from qaforge.evaluation import AnswerCache, ModelRef, evaluate, question_sets, systems
from qaforge.evaluation.answers import messages_of
from qaforge.evaluation.metrics import score_answers
from qaforge.mlflow_model import log_qa_model
from qaforge.modeling import resolve_base_model
from qaforge.retrieval import Retriever
from qaforge.served import Answering
from qaforge.synthesis import synthesize
from qaforge.training import train

from common import REPO, default_chunks, default_config

KEY = "agreement-key"


async def ask(url: str, conversations: list[list[dict[str, str]]], max_tokens: int) -> list[str]:
    async with httpx.AsyncClient(timeout=600) as client:
        replies = await asyncio.gather(*(client.post(
            f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
            json={"messages": messages, "max_tokens": max_tokens, "temperature": 0}) for messages in conversations))
    for reply in replies:
        reply.raise_for_status()
    return [r.json()["choices"][0]["message"]["content"] for r in replies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()
    config = default_config(args.config.resolve())
    evaluation = config.evaluation.model_copy(update={"precision": args.precision})
    chunks = default_chunks(config)
    data = synthesize(chunks, config.synthesis)
    index = Retriever.build(chunks)
    training = config.training.model_copy(update={"output_dir": REPO / ".qaforge" / "bench-train"})
    candidate = str(train(data, config.model, training, config.prompt, retriever=index,
                          top_k=config.retrieval.top_k).model_dir)
    base = resolve_base_model(config.model)
    prompt, top_k = config.prompt.system_prompt, config.retrieval.top_k
    chosen, gated, baseline = systems(ModelRef(candidate), ModelRef(base), None, Answering(prompt),
                                      Answering(prompt, index, top_k), config.retrieval.serve,
                                      evaluation.compare_modes)
    sets = question_sets(data, evaluation)
    report = evaluate(chosen, sets, evaluation, gated=gated, baseline=baseline, gate_on=evaluation.gate_on,
                      cache=AnswerCache(None))
    metric = evaluation.primary_metric
    print(f"CPU: torch capability {torch.backends.cpu.get_cpu_capability()}; config {args.config.name}; "
          f"precision {args.precision}; {metric}", flush=True)
    print(f"{'set':<14}{'system':<22}{'report':>9}{'server':>9}{'|diff|':>9}{'answers differ':>16}")
    with tempfile.TemporaryDirectory(prefix="qaforge-agreement-") as tmp:
        tracking = f"sqlite:///{tmp}/mlflow.db"
        mlflow.set_tracking_uri(tracking)
        for label, system in chosen.items():
            with mlflow.start_run():
                logged = log_qa_model(system.model.location, system.answering.system_prompt,
                                      system.answering.retriever, system.answering.top_k)
            version = mlflow.register_model(logged, f"agreement-{label}").version
            port = free_port()
            env = os.environ | {
                "QAFORGE_MODEL_URI": f"models:/agreement-{label}/{version}", "QAFORGE_TRACKING_URI": tracking,
                "QAFORGE_PORT": str(port), "QAFORGE_API_TOKENS": KEY, "QAFORGE_PRECISION": args.precision,
                "QAFORGE_RELOAD_SECONDS": "0", "QAFORGE_REQUESTS_PER_MINUTE": "100000",
                "QAFORGE_TOKENS_PER_MINUTE": "100000000", "QAFORGE_MAX_BATCH_SIZE": str(evaluation.batch_size),
            }
            server = subprocess.Popen([sys.executable, "-m", "serving.server"], env=env, cwd=REPO,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{port}"
            try:
                wait_ready(url, server)
                for name, scores in report.sets.items():
                    if label not in scores.metrics:
                        continue
                    pairs = sets[name].pairs
                    served = asyncio.run(ask(url, [messages_of(p) for p in pairs], evaluation.max_new_tokens))
                    reported = [row.answers[label] for row in scores.rows]
                    value = score_answers(served, [p.answer for p in pairs]).value(metric)
                    differ = sum(a != b for a, b in zip(served, reported))
                    print(f"{name:<14}{label:<22}{scores.metrics[label][metric]:>9.4f}{value:>9.4f}"
                          f"{abs(value - scores.metrics[label][metric]):>9.4f}{differ:>10} of {len(pairs)}",
                          flush=True)
            finally:
                server.terminate()
                server.wait(timeout=60)


if __name__ == "__main__":
    main()
