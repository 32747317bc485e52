"""Serving under load: qaforge's API (continuous batching) against a naive server (one
request at a time, plain model.generate under a lock) and, given a Python with
llama-cpp-python[server] or llama.cpp's llama-server binary, llama.cpp serving the same
model exported to GGUF by `qaforge export` (the peer a user would pick for a small model
on a CPU), all on 127.0.0.1, at concurrency 1, 4, 8 and 16 with a fixed number of requests each.

    python bench/serve.py [--requests 24] [--max-tokens 32] [--llama-python PATH] [--llama-server PATH]
                          [--gguf-type f16]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from pydantic import BaseModel

from common import REPO, default_config

KEY = "bench-key"
QUESTIONS = [
    "What is a Level 2 charger?",
    "How long does DC fast charging take?",
    "What is OCPP used for?",
    "What does a CCS2 connector carry?",
    "Why do idle fees exist at public chargers?",
    "What is smart charging?",
]


class NaiveRequest(BaseModel):
    messages: list[dict[str, str]]
    max_tokens: int = 32


def naive_app(model_dir: str):
    """The baseline: no batching, a global lock, greedy generate() per request."""
    import torch
    from fastapi import FastAPI

    from qaforge.modeling import load_for_inference

    model, tokenizer = load_for_inference(model_dir)
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat(body: NaiveRequest) -> dict:
        prompt = tokenizer.apply_chat_template(body.messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with lock, torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=body.max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        return {"choices": [{"message": {"content": tokenizer.decode(new, skip_special_tokens=True)}}],
                "usage": {"completion_tokens": int((new != tokenizer.pad_token_id).sum())}}

    return app


def naive_app_from_env():
    return naive_app(os.environ["BENCH_MODEL_DIR"])


def start(kind: str, model_dir: str, tokens: str = KEY) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = os.environ | {
        "QAFORGE_MODEL_URI": model_dir, "QAFORGE_API_TOKENS": tokens, "QAFORGE_RELOAD_SECONDS": "0",
        "QAFORGE_REQUESTS_PER_MINUTE": "1000000", "QAFORGE_TOKENS_PER_MINUTE": "1000000000",
        "BENCH_MODEL_DIR": model_dir, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'bench'}",
    }
    factory = "serving.app:create_app" if kind == "qaforge" else "serve:naive_app_from_env"
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", factory, "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return process, f"http://127.0.0.1:{port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama(kind: str, program: str, gguf: Path, parallel: int) -> tuple[subprocess.Popen, str]:
    """llama.cpp on the model exported to GGUF, with both cores and the chat template from
    the GGUF, as a user would start it: llama-cpp-python's OpenAI server (one request at a
    time), or llama.cpp's own llama-server with a slot per concurrent request."""
    port = free_port()
    if kind == "llama-cpp-python":
        command = [program, "-m", "llama_cpp.server", "--model", str(gguf), "--n_threads", str(os.cpu_count()),
                   "--n_ctx", "2048", "--api_key", KEY]
    else:
        command = [program, "-m", str(gguf), "-t", str(os.cpu_count()), "--parallel", str(parallel),
                   "-c", str(256 * parallel), "--api-key", KEY]
    process = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, f"http://127.0.0.1:{port}"


def wait_ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            # llama-cpp-python's server has no /health; every server here answers /v1/models or /health.
            if any(httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200
                   for path in ("/health", "/v1/models")):
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.5)


async def load(url: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, float]:
    latencies: list[float] = []
    tokens = errors = 0
    semaphore = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens, errors
        async with semaphore:
            body = {"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], "max_tokens": max_tokens}
            start = time.perf_counter()
            try:
                response = await client.post("/v1/chat/completions", json=body)
                response.raise_for_status()
            except httpx.HTTPError:
                errors += 1
                return
            latencies.append(time.perf_counter() - start)
            tokens += response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(requests)))
        seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"rps": len(latencies) / seconds, "tps": tokens / seconds, "p50": float(np.percentile(ms, 50)),
            "p95": float(np.percentile(ms, 95)), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--llama-python", default=os.environ.get("BENCH_LLAMA_PYTHON"),
                        help="A Python with llama-cpp-python[server] installed (it builds llama.cpp from source).")
    parser.add_argument("--llama-server", default=os.environ.get("BENCH_LLAMA_SERVER"),
                        help="llama.cpp's llama-server binary (cmake --build build --target llama-server).")
    parser.add_argument("--gguf-type", default="f16", choices=["f32", "f16", "q8_0"])
    args = parser.parse_args()
    from qaforge.modeling import resolve_base_model

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    model_dir = resolve_base_model(default_config().model)
    results: dict[str, dict[int, dict[str, float]]] = {}
    peers = {"llama-cpp-python": args.llama_python, "llama-server": args.llama_server}
    kinds = ["qaforge", "naive"] + [kind for kind, program in peers.items() if program]
    work = Path(tempfile.mkdtemp(prefix="qaforge-bench-serve-"))
    if kinds[2:]:
        from qaforge.export import GGUFType, write_gguf

        gguf = write_gguf(Path(model_dir), work / f"model-{args.gguf_type}.gguf", GGUFType(args.gguf_type))
    for kind in kinds:
        if kind in peers:
            process, url = start_llama(kind, peers[kind], gguf, max(args.concurrency))
        else:
            process, url = start(kind, model_dir)
        try:
            wait_ready(url, process)
            asyncio.run(load(url, 1, 2, args.max_tokens))  # warm-up
            results[kind] = {c: asyncio.run(load(url, c, args.requests, args.max_tokens)) for c in args.concurrency}
        finally:
            process.terminate()
            process.wait(timeout=30)
    shutil.rmtree(work, ignore_errors=True)
    print(f"{args.requests} requests per level, max_tokens {args.max_tokens}, base model {Path(model_dir).name}"
          + (f", llama.cpp on a {args.gguf_type} GGUF" if kinds[2:] else ", no llama.cpp (--llama-python, --llama-server)"))
    header = f"{'conc':>4} | {'server':<17}{'req/s':>7}{'tok/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'errors':>7}"
    print(header + f" | {'req/s x naive':>13}")
    for c in args.concurrency:
        for kind in kinds:
            r = results[kind][c]
            naive = results["naive"][c]["rps"]
            ratio = f"{r['rps'] / naive:>13.2f}" if kind != "naive" and naive else ""
            print(f"{c:>4} | {kind:<17}{r['rps']:>7.2f}{r['tps']:>8.1f}{r['p50']:>9.0f}{r['p95']:>9.0f}"
                  f"{r['errors']:>7} | {ratio}")


if __name__ == "__main__":
    main()
