"""The API against hostile clients: qaforge's server on 127.0.0.1 with two keys.

1. Load: concurrency 16, requests alternating between the two keys.
2. A hostile stop string: key A asks with a long stop sequence (if the server refuses
   it, with the longest stop sequences it accepts) and, one second later, key B sends
   an 8-token request. Key B's latency against the same request alone shows whether
   one client can stall another.

    python bench/hostile.py [--requests 48] [--stop-chars 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import time

import httpx
import numpy as np
import psutil
from serve import QUESTIONS, start, wait_ready

from common import default_config

KEYS = {"alice": "bench-key-alice", "bob": "bench-key-bob"}


def chat(question: str, max_tokens: int, **extra: object) -> dict:
    return {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, **extra}


async def post(client: httpx.AsyncClient, key: str, body: dict) -> tuple[int, float]:
    start = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEYS[key]}"})
    return response.status_code, time.perf_counter() - start


async def load(url: str, concurrency: int, requests: int, max_tokens: int) -> None:
    semaphore = asyncio.Semaphore(concurrency)
    statuses: collections.Counter[int] = collections.Counter()
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        async with semaphore:
            try:
                status, seconds = await post(client, list(KEYS)[i % 2], chat(QUESTIONS[i % len(QUESTIONS)], max_tokens))
            except httpx.TransportError:
                statuses[-1] += 1
                return
            statuses[status] += 1
            if status == 200:
                latencies.append(seconds)

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(requests)))
        seconds = time.perf_counter() - start
    ms = np.array(latencies or [float("nan")]) * 1000
    print(f"load: concurrency {concurrency}, two keys, {requests} requests of max_tokens {max_tokens}: "
          f"{len(latencies) / seconds:.2f} req/s, p50 {np.percentile(ms, 50):.0f} ms, "
          f"p95 {np.percentile(ms, 95):.0f} ms, statuses {dict(statuses)} (-1: connection error)")


async def hostile_stop(url: str, stop_chars: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        _, alone = await post(client, "bob", chat(QUESTIONS[1], 8))
        stop: list[str] = ["\u00a7" * stop_chars]
        status, _ = await post(client, "alice", chat(QUESTIONS[0], 1, stop=stop))
        if status != 200:  # refused: the most the server accepts
            for count, chars in ((4, 256), (4, 64), (4, 32), (1, 32)):
                stop = ["\u00a7" * chars] * count
                if (await post(client, "alice", chat(QUESTIONS[0], 1, stop=stop)))[0] == 200:
                    break
            print(f"hostile stop: a stop of {stop_chars} chars got {status}; sending {len(stop)} x {len(stop[0])} chars")
        hostile = asyncio.create_task(post(client, "alice", chat(QUESTIONS[0], 64, stop=stop)))
        await asyncio.sleep(1.0)
        normal_status, normal = await post(client, "bob", chat(QUESTIONS[1], 8))
        hostile_status, hostile_seconds = await hostile
    print(f"hostile stop: alice's request ({len(stop)} x {len(stop[0])} chars, max_tokens 64) "
          f"{hostile_status} in {hostile_seconds:.1f} s; bob's 8-token request sent 1 s later "
          f"{normal_status} in {normal:.1f} s (alone: {alone:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--stop-chars", type=int, default=2000)
    args = parser.parse_args()
    from qaforge.modeling import resolve_base_model

    logging.getLogger("httpx").setLevel(logging.WARNING)
    model_dir = resolve_base_model(default_config().model)
    tokens = ",".join(f"{name}:{key}" for name, key in KEYS.items())
    process, url = start("qaforge", model_dir, tokens)
    try:
        wait_ready(url, process)
        server = psutil.Process(process.pid)
        asyncio.run(load(url, 2, 2, args.max_tokens))  # warm-up
        rss = server.memory_info().rss
        asyncio.run(load(url, args.concurrency, args.requests, args.max_tokens))
        asyncio.run(hostile_stop(url, args.stop_chars))
        print(f"server memory: {rss / 2**30:.2f} GiB after warm-up, {server.memory_info().rss / 2**30:.2f} GiB at the end")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
