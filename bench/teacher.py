"""The base model as its own teacher, served by qaforge over HTTP (constrained decoding
on the server): for configs/teacher.yaml's prompts, with and without structured outputs
(`response_format` json_schema, or none and the reply parsed), the requests, the share
of replies that were valid JSON of the schema, the usable pairs per chunk (kept by the
synthesis filters) and the seconds. No repairs, so the share is the first reply's.

    python bench/teacher.py [--chunks 12] [--pairs 3] [--max-tokens 400]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml
from serve import KEY, start, wait_ready

from qaforge.config import Generator, ResponseFormat, SynthesisConfig, TeacherConfig
from qaforge.modeling import resolve_base_model
from qaforge.records import ChunkSet
from qaforge.synthesis import generate_pairs

from common import REPO, default_chunks, default_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=12)
    parser.add_argument("--pairs", type=int, default=3, help="Pairs asked per chunk.")
    parser.add_argument("--max-tokens", type=int, default=400)
    args = parser.parse_args()

    cfg = default_config()
    everything = default_chunks(cfg).chunks
    chunks = ChunkSet(chunks=[everything[i * len(everything) // args.chunks] for i in range(args.chunks)])
    shipped = yaml.safe_load((REPO / "configs" / "teacher.yaml").read_text())["parameters"]["config"]
    prompts = {k: shipped["synthesis"]["teacher"][k] for k in ("system_prompt", "user_prompt", "styles")}
    model_dir = resolve_base_model(cfg.model)
    os.environ["BENCH_TEACHER_KEY"] = KEY
    process, url = start("qaforge", model_dir)
    print(f"CPU: torch capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores; "
          f"{args.chunks} chunks of the sample corpus, {args.pairs} pairs asked each, max_tokens {args.max_tokens}")
    print(f"{'response_format':<16}{'requests':>9}{'valid JSON':>12}{'pairs written':>15}{'usable/chunk':>14}"
          f"{'seconds':>9}")
    try:
        wait_ready(url, process)
        for fmt in (ResponseFormat.JSON_SCHEMA, ResponseFormat.NONE):
            teacher = TeacherConfig(base_url=f"{url}/v1", model=Path(model_dir).name, api_key_env="BENCH_TEACHER_KEY",
                                    pairs_per_chunk=args.pairs, max_tokens=args.max_tokens, temperature=0.0,
                                    repairs=0, concurrency=4, timeout_seconds=600, response_format=fmt, **prompts)
            with tempfile.TemporaryDirectory() as cache:
                synthesis = SynthesisConfig(generator=Generator.TEACHER, teacher=teacher, cache_dir=Path(cache))
                start_s = time.perf_counter()
                try:
                    pairs, dropped, stats = generate_pairs(chunks, synthesis)
                except RuntimeError as exc:  # nothing usable at all: the run would stop here
                    print(f"{fmt.value:<16} {exc}")
                    continue
                seconds = time.perf_counter() - start_s
            valid = 1 - stats["unparseable"] / stats["requests"]
            print(f"{fmt.value:<16}{stats['requests']:>9}{valid:>12.0%}{len(pairs) + sum(dropped.values()):>15}"
                  f"{len(pairs) / args.chunks:>14.2f}{seconds:>9.1f}   dropped: {dict(dropped)}")
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()
