"""The API over real HTTP: uvicorn on a free 127.0.0.1 port serving the base model,
called with the official openai client and with raw requests."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest

from qaforge.config import InferenceOptions, QASource
from qaforge.generation import Completion, Sampling
from qaforge.prompting import encode_prompt
from qaforge.records import ConversationRecord
from qaforge.served import Answering
from qaforge.sources.files import convert_path
from qaforge.sources.qa_files import read_qa_file
from serving.app import create_app
from serving.engine import Engine
from serving.keys import create_key, revoke_key
from serving.models import load_model
from serving.settings import ServeSettings

from fixture_site import free_port, wait_for_health
from helpers import REPO, running

QUESTION = [{"role": "user", "content": "What is a Level 2 charger?"}]


@pytest.fixture(scope="module")
def api(base_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("serve")
    keys_file = root / "keys.yaml"
    keys = {
        "alice": create_key(keys_file, "alice"),
        "slow": create_key(keys_file, "slow", requests_per_minute=2),
        "carol": create_key(keys_file, "carol"),
    }
    settings = ServeSettings(
        model_uri=base_model_dir, keys_file=keys_file, tokens_env="QAFORGE_TEST_UNSET", max_new_tokens=16,
        max_tokens_limit=64, max_prompt_tokens=120, max_messages=4, max_body_bytes=4096, batch_window_ms=200,
        reload_seconds=0, conversation_log=root / "conversations.jsonl", feedback_log=root / "feedback.jsonl",
    )
    with running(create_app(settings), settings) as url:
        yield {"url": url, "keys": keys, "keys_file": keys_file, "root": root, "name": Path(base_model_dir).name}


def auth(api: dict, name: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {api['keys'][name]}"}


def test_openai_client_completions_streaming_and_models(api: dict) -> None:
    client = openai.OpenAI(base_url=f"{api['url']}/v1", api_key=api["keys"]["alice"], max_retries=0)
    assert [m.id for m in client.models.list().data] == [api["name"]]
    reply = client.chat.completions.create(model=api["name"], messages=QUESTION, max_tokens=12)
    text = reply.choices[0].message.content
    assert text.strip() and reply.choices[0].finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 12 and reply.usage.prompt_tokens > 5
    stream = client.chat.completions.create(
        model=api["name"], messages=QUESTION, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1, "streamed in pieces"
    assert "".join(pieces).strip() == text, "greedy stream equals the plain answer"
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    stopped = client.chat.completions.create(model=api["name"], messages=QUESTION, max_tokens=32, stop=[" a "])
    assert " a " not in stopped.choices[0].message.content


def test_todays_openai_request_shapes_are_read_as_the_plain_ones(api: dict) -> None:
    """Newer SDKs and many UIs send `content` as a list of text parts and the system turn
    as `developer`: the model gets exactly the prompt of the plain shapes. A part it
    cannot read is refused by name."""
    client = openai.OpenAI(base_url=f"{api['url']}/v1", api_key=api["keys"]["alice"], max_retries=0)
    plain = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is a Level 2 charger?"}]
    parts = [{"role": "developer", "content": [{"type": "text", "text": "Answer briefly."}]},
             {"role": "user", "content": [{"type": "text", "text": "What is a Level 2"},
                                          {"type": "text", "text": "charger?"}]}]
    joined = [plain[0], {"role": "user", "content": "What is a Level 2\ncharger?"}]
    ask = [client.chat.completions.create(model=api["name"], messages=m, max_tokens=8) for m in (parts, joined)]
    assert ask[0].choices[0].message.content == ask[1].choices[0].message.content
    assert ask[0].usage.prompt_tokens == ask[1].usage.prompt_tokens
    assert client.chat.completions.create(model=api["name"], messages=plain, max_tokens=8).usage.prompt_tokens \
        == client.chat.completions.create(model=api["name"], messages=[parts[0], plain[1]], max_tokens=8).usage.prompt_tokens
    image = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=api["name"], messages=image, max_tokens=8)
    error = refused.value.body
    assert error["param"] == "messages.0.content" and "part 1 is of type 'image_url'" in error["message"], error


ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 60},
                                                  "kilowatts": {"type": "integer"}},
                 "required": ["answer", "kilowatts"], "additionalProperties": False}


def test_response_format_holds_the_answer_to_json_of_the_schema(api: dict) -> None:
    """json_schema and json_object answers parse and match, streamed or not, and share a
    batch with free text; a schema that cannot be compiled is refused by name."""
    client = openai.AsyncOpenAI(base_url=f"{api['url']}/v1", api_key=api["keys"]["carol"], max_retries=0)
    schema_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}}

    async def ask_all() -> list:
        asks = [client.chat.completions.create(model=api["name"], messages=QUESTION, max_tokens=64,
                                               response_format=schema_format),
                client.chat.completions.create(model=api["name"], messages=QUESTION, max_tokens=64,
                                               response_format={"type": "json_object"}),
                client.chat.completions.create(model=api["name"], messages=QUESTION, max_tokens=16)]
        return await asyncio.gather(*asks)

    with_schema, any_object, free = asyncio.run(ask_all())
    answer = json.loads(with_schema.choices[0].message.content)
    assert set(answer) == {"answer", "kilowatts"} and isinstance(answer["kilowatts"], int), answer
    assert len(answer["answer"]) <= 60 and with_schema.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(any_object.choices[0].message.content), dict)
    assert not free.choices[0].message.content.startswith("{"), "the free-text row was not constrained"

    stream = openai.OpenAI(base_url=f"{api['url']}/v1", api_key=api["keys"]["carol"], max_retries=0)
    pieces = stream.chat.completions.create(model=api["name"], messages=QUESTION, max_tokens=64, stream=True,
                                            response_format=schema_format)
    assert json.loads("".join(c.choices[0].delta.content or "" for c in pieces if c.choices)) == answer

    with pytest.raises(openai.BadRequestError) as refused:
        stream.chat.completions.create(model=api["name"], messages=QUESTION, max_tokens=8, response_format={
            "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "object", "properties": {
                "n": {"$ref": "#/$defs/missing"}}}}})
    assert refused.value.body["param"] == "response_format", refused.value.body
    assert "'/$defs/missing' does not exist" in refused.value.body["message"], refused.value.body
    with pytest.raises(openai.BadRequestError) as refused:
        stream.chat.completions.create(model=api["name"], messages=QUESTION, max_tokens=8,
                                       response_format={"type": "json_schema"})
    assert "needs a `json_schema` object" in refused.value.body["message"], refused.value.body


def test_two_authorization_headers_are_refused(api: dict) -> None:
    """Which of two headers wins differs between proxies and frameworks: refuse both."""
    headers = [("Authorization", f"Bearer {api['keys']['alice']}"), ("Authorization", "Bearer qf-nope")]
    response = httpx.post(f"{api['url']}/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 4},
                          headers=headers, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "duplicate_authorization", response.text


def test_requests_are_batched(api: dict) -> None:
    async def ask_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=api["url"], headers=auth(api), timeout=120) as client:
            body = {"messages": [{"role": "user", "content": "What is OCPP?"}], "max_tokens": 8}
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(6)))

    assert all(r.status_code == 200 for r in asyncio.run(ask_all()))
    metrics = httpx.get(f"{api['url']}/metrics", headers=auth(api)).text
    sizes = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line.startswith("qaforge_batch_size_")}
    assert sizes["qaforge_batch_size_sum"] > sizes["qaforge_batch_size_count"], "some generate() calls answered several"


def test_auth_missing_invalid_and_revoked_keys(api: dict) -> None:
    url = f"{api['url']}/v1/chat/completions"
    body = {"messages": QUESTION, "max_tokens": 4}
    assert httpx.get(f"{api['url']}/health").json()["status"] == "ok"
    missing = httpx.post(url, json=body)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer qf-nope"}).status_code == 401
    assert httpx.get(f"{api['url']}/metrics").status_code == 401
    assert httpx.post(url, json=body, headers=auth(api, "carol"), timeout=60).status_code == 200
    revoke_key(api["keys_file"], "carol")
    deadline = time.monotonic() + 10
    while (r := httpx.post(url, json=body, headers=auth(api, "carol"), timeout=60)).status_code == 200:
        assert time.monotonic() < deadline, "revocation not picked up"
        time.sleep(0.3)
    assert r.status_code == 403 and r.json()["error"]["message"] == "API key 'carol' has been revoked"


def test_rate_limit_answers_429_with_retry_after(api: dict) -> None:
    body = {"input_text": "What is CCS?"}
    codes = [httpx.post(f"{api['url']}/predict", json=body, headers=auth(api, "slow"), timeout=60) for _ in range(3)]
    assert [c.status_code for c in codes] == [200, 200, 429]
    assert int(codes[2].headers["retry-after"]) >= 1
    assert codes[2].json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"messages": []}, 400, "messages"),
        ({"messages": QUESTION, "n": 2}, 400, "n"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
        ({"messages": QUESTION, "max_tokens": 1000}, 400, "max_tokens"),
        ({"messages": QUESTION * 5}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "word " * 200}]}, 400, "messages"),
        ({"messages": QUESTION, "model": "gpt-4"}, 404, "model"),
        ({"messages": [{"role": "user", "content": "x" * 5000}]}, 413, None),
    ],
)
def test_bad_requests_get_clear_openai_errors(api: dict, body: dict, status: int, param: str | None) -> None:
    response = httpx.post(f"{api['url']}/v1/chat/completions", json=body, headers=auth(api), timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]


def test_a_chunked_body_is_cut_off_at_the_size_limit(api: dict) -> None:
    """No Content-Length to judge by: the server counts the bytes as they arrive."""
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    chunks = (body[i : i + 1024] for i in range(0, len(body), 1024))
    response = httpx.post(f"{api['url']}/v1/chat/completions", content=chunks, timeout=60,
                          headers=auth(api) | {"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert "content-length" not in response.request.headers
    assert response.json()["error"]["code"] == "body_too_large"
    small = json.dumps({"messages": [{"role": "user", "content": "What is OCPP?"}], "max_tokens": 4}).encode()
    response = httpx.post(f"{api['url']}/v1/chat/completions", content=iter([small[:20], small[20:]]), timeout=60,
                          headers=auth(api) | {"Content-Type": "application/json"})
    assert response.status_code == 200, response.text


def test_metrics_logs_and_conversation_log(api: dict, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="qaforge.requests"):
        answer = httpx.post(
            f"{api['url']}/predict", json={"input_text": "Who maintains public chargers?"},
            headers=auth(api) | {"X-Request-ID": "req-42"}, timeout=60,
        )
        assert answer.status_code == 200 and answer.headers["x-request-id"] == "req-42"
        # The request is logged once the response has been sent, so it may trail the client.
        deadline = time.monotonic() + 10
        while not (records := [r for r in caplog.records if getattr(r, "request_id", None) == "req-42"]):
            assert time.monotonic() < deadline, "request not logged"
            time.sleep(0.05)
    [record] = records
    assert (record.status, record.key, record.path) == (200, "alice", "/predict")
    assert record.completion_tokens > 0 and not hasattr(record, "messages"), "no prompts in logs by default"
    metrics = httpx.get(f"{api['url']}/metrics", headers=auth(api)).text
    assert 'qaforge_requests_total{route="/predict",status="200"}' in metrics
    assert 'qaforge_key_requests_total{key="alice"}' in metrics
    assert f'qaforge_model_info{{model="{api["name"]}",version="local"}} 1.0' in metrics
    assert "qaforge_request_duration_seconds_bucket" in metrics
    log_file = api["root"] / "conversations.jsonl"
    records = [ConversationRecord.model_validate_json(line) for line in log_file.read_text().splitlines()]
    logged = next(r for r in records if r.request_id == "req-42")
    assert logged.key == "alice" and logged.answer == answer.json()["output_text"]
    document = convert_path(log_file, 2**20).export_to_markdown()
    assert "Who maintains public chargers?" in document


def test_logged_conversations_are_scrubbed_rated_and_imported_by_rating(api: dict) -> None:
    """Whole conversations are logged with planted personal data replaced before anything
    is written; people rate answers through /v1/feedback; `sources.qa` imports only the
    answers rated as its `keep` says, each with the turns before it."""
    client = openai.OpenAI(base_url=f"{api['url']}/v1", api_key=api["keys"]["alice"], max_retries=0)
    planted = "Mail jane.doe@example.com, call +1 (555) 123-4567, card 4111 1111 1111 1111, SSN 123-45-6789."
    conversation = [{"role": "user", "content": "What is CCS?"}, {"role": "assistant", "content": "A plug."},
                    {"role": "user", "content": planted}]
    ids = [client.chat.completions.with_raw_response.create(model=api["name"], messages=m, max_tokens=8)
           .headers["x-request-id"] for m in (conversation, QUESTION)]
    for request_id, rating in zip(ids, ("up", "down")):
        rated = httpx.post(f"{api['url']}/v1/feedback", json={"request_id": request_id, "rating": rating},
                           headers=auth(api), timeout=10)
        assert rated.status_code == 200 and rated.json() == {"request_id": request_id, "rating": rating}
    refused = httpx.post(f"{api['url']}/v1/feedback", json={"request_id": ids[0], "rating": "meh"},
                         headers=auth(api), timeout=10)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "rating"

    log_file = api["root"] / "conversations.jsonl"
    text = log_file.read_text()
    for personal in ("jane.doe@example.com", "555) 123-4567", "4111 1111 1111 1111", "123-45-6789"):
        assert personal not in text, personal
    logged = next(ConversationRecord.model_validate_json(line) for line in text.splitlines()
                  if ids[0] in line)
    assert [m["role"] for m in logged.messages] == ["user", "assistant", "user", "assistant"]
    assert logged.messages[1]["weight"] == 0 and logged.messages[-1]["content"] == logged.answer
    assert "[EMAIL_1]" in logged.messages[2]["content"] and "[CREDIT_CARD_1]" in logged.messages[2]["content"]

    feedback = api["root"] / "feedback.jsonl"
    [pair] = read_qa_file(QASource(path=log_file, feedback=feedback))
    assert pair.question == logged.messages[2]["content"] and pair.answer == logged.answer
    assert [t.question for t in pair.history] == ["What is CCS?"]
    not_down = read_qa_file(QASource(path=log_file, feedback=feedback, keep="not_down"))
    unrated = [ConversationRecord.model_validate_json(line) for line in text.splitlines()
               if ids[0] not in line and ids[1] not in line]
    assert len(not_down) == 1 + len(unrated), "every answer but the one rated down"


def cancelled(api: dict) -> float:
    metrics = httpx.get(f"{api['url']}/metrics", headers=auth(api)).text
    return next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith("qaforge_cancelled_requests_total"))


def wait_for_cancel(api: dict, before: float) -> None:
    deadline = time.monotonic() + 60
    while cancelled(api) == before:
        assert time.monotonic() < deadline, "the server kept generating for a client that left"
        time.sleep(0.2)
    # The worker is free again: the next request is answered.
    assert httpx.post(f"{api['url']}/predict", json={"input_text": "What is CCS?"}, headers=auth(api), timeout=60).status_code == 200


def test_a_client_that_disconnects_stops_its_stream(api: dict) -> None:
    before = cancelled(api)
    body = {"messages": [{"role": "user", "content": "Explain EV charging in detail."}], "max_tokens": 64, "stream": True}
    with httpx.stream("POST", f"{api['url']}/v1/chat/completions", json=body, headers=auth(api), timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the first event, then hang up
    wait_for_cancel(api, before)


def test_a_client_that_gives_up_on_a_plain_request_stops_its_generation(api: dict) -> None:
    before = cancelled(api)
    body = {"messages": [{"role": "user", "content": "Explain EV charging in detail."}], "max_tokens": 64}
    with pytest.raises(httpx.ReadTimeout):  # then httpx closes the connection
        httpx.post(f"{api['url']}/v1/chat/completions", json=body, headers=auth(api), timeout=0.3)
    wait_for_cancel(api, before)


def test_a_request_whose_client_left_stops_and_the_others_finish(base_model_dir: str) -> None:
    loaded = load_model(base_model_dir)
    left: list[bool] = []
    engine = Engine(window_seconds=0.2, max_batch_size=2, on_cancel=lambda: left.append(True))
    prompt = encode_prompt(loaded.tokenizer, [{"role": "user", "content": "Explain EV charging in detail."}])

    async def one_leaves() -> Completion:
        kept = asyncio.ensure_future(engine.complete(loaded, prompt, Sampling(24)))
        leaving = asyncio.ensure_future(engine.complete(loaded, prompt, Sampling(24)))
        await asyncio.sleep(0.5)
        leaving.cancel()
        return await kept

    try:
        kept = asyncio.run(one_leaves())
    finally:
        engine.close()
    assert kept.completion_tokens == 24 and kept.text
    assert left == [True], "the engine noticed the client that left, once"


def test_each_request_is_answered_by_the_model_that_built_its_prompt(base_model_dir: str) -> None:
    """Requests of two versions queued together, as during an alias move: a batch takes
    only its own model's requests, so every answer comes from the version that built
    its prompt, and equals what that version answers alone."""
    first = replace(load_model(base_model_dir, InferenceOptions(precision="fp32")), version="1")
    second = replace(first, version="2", answering=Answering("Answer in French."))
    engine = Engine(window_seconds=0.2, max_batch_size=8)
    asked = [(model, model.prompt([{"role": "user", "content": question}])[0])
             for question in ("What is OCPP?", "What is a wallbox?", "Why charge at night?")
             for model in (first, second)]

    async def all_at_once() -> list[Completion]:
        return await asyncio.gather(*(engine.complete(model, prompt, Sampling(12)) for model, prompt in asked))

    try:
        together = asyncio.run(all_at_once())
        alone = [asyncio.run(engine.complete(model, prompt, Sampling(12))) for model, prompt in asked]
    finally:
        engine.close()
    assert [c.version for c in together] == [model.version for model, _ in asked]
    assert [c.text for c in together] == [c.text for c in alone]


@pytest.mark.slow
def test_an_alias_move_never_mixes_versions_within_a_request(base_model_dir: str, sample_chunks,
                                                            tmp_path: Path) -> None:
    """The whole server while @production moves from v1 (closed book) to v2 (answers
    from passages) under a stream of requests: every answer's system_fingerprint, its
    sources and the version the conversation log records are those of one version, the
    one that built its prompt."""
    import mlflow

    from qaforge.mlflow_model import log_qa_model
    from qaforge.retrieval import Retriever

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking)
    try:
        with mlflow.start_run(experiment_id=mlflow.create_experiment("alias-move")):
            closed = log_qa_model(base_model_dir, "Answer briefly.")
            with_passages = log_qa_model(base_model_dir, "Answer briefly.", Retriever.build(sample_chunks), top_k=2)
        versions = [str(mlflow.register_model(uri, "qa-move").version) for uri in (closed, with_passages)]
        client = mlflow.MlflowClient()
        client.set_registered_model_alias("qa-move", "production", versions[0])
    finally:
        mlflow.set_tracking_uri(previous)
    keys_file, log = tmp_path / "keys.yaml", tmp_path / "conversations.jsonl"
    key = create_key(keys_file, "alice", requests_per_minute=10_000, tokens_per_minute=10_000_000)
    settings = ServeSettings(model_uri="models:/qa-move@production", tracking_uri=tracking, keys_file=keys_file,
                             tokens_env="QAFORGE_TEST_UNSET", max_new_tokens=6, reload_seconds=0.5,
                             conversation_log=log)
    answers: list[httpx.Response] = []
    stop = asyncio.Event()

    async def keep_asking(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            body = {"messages": [{"role": "user", "content": "What does OCPP stand for?"}], "max_tokens": 6}
            while not stop.is_set():
                answers.extend(await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(4))))

    async def move_alias(url: str) -> None:
        while len(answers) < 8:
            await asyncio.sleep(0.1)
        client.set_registered_model_alias("qa-move", "production", versions[1])
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while (await http.get("/health")).json()["version"] != versions[1]:
                await asyncio.sleep(0.2)
        count = len(answers)
        while len(answers) < count + 8:
            await asyncio.sleep(0.1)
        stop.set()

    async def both(url: str) -> None:
        await asyncio.gather(keep_asking(url), move_alias(url))

    try:
        with running(create_app(settings), settings) as url:
            asyncio.run(asyncio.wait_for(both(url), timeout=300))
    finally:
        mlflow.set_tracking_uri(previous)  # the app set it process-wide
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    logged = {json.loads(line)["request_id"]: json.loads(line)["version"] for line in log.read_text().splitlines()}
    seen = set()
    for response in answers:
        body = response.json()
        version = body["system_fingerprint"].removeprefix("v")
        seen.add(version)
        assert logged[response.headers["x-request-id"]] == version
        # v1 answers closed book: no passages; v2 from two of them, which its prompt carries.
        assert (body["sources"] is None) == (version == versions[0]), body
        assert (body["usage"]["prompt_tokens"] > 100) == (version == versions[1]), body
    assert seen == set(versions), "requests were answered by both versions"


@pytest.mark.slow
def test_sighup_reloads_the_keys_file(base_model_dir: str, tmp_path: Path) -> None:
    """For keys files whose change the modification time does not show (a restored
    backup, a copy that keeps times): SIGHUP makes the server re-read it at once.
    The signal handler needs the server's main thread, so the app runs as uvicorn does."""
    keys_file = tmp_path / "keys.yaml"
    key = create_key(keys_file, "dave")
    port, log_path = free_port(), tmp_path / "server.log"
    env = os.environ | {"QAFORGE_MODEL_URI": base_model_dir, "QAFORGE_KEYS_FILE": str(keys_file),
                        "QAFORGE_TOKENS_ENV": "QAFORGE_TEST_UNSET", "QAFORGE_RELOAD_SECONDS": "0"}
    with log_path.open("w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "serving.app:create_app", "--port", str(port)],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        wait_for_health(base, server, log_path)
        assert httpx.get(f"{base}/v1/models", headers=headers).status_code == 200
        before = keys_file.stat()
        revoke_key(keys_file, "dave")
        os.utime(keys_file, ns=(before.st_atime_ns, before.st_mtime_ns))
        time.sleep(1.5)  # past the once-a-second modification-time check
        assert httpx.get(f"{base}/v1/models", headers=headers).status_code == 200, "the change is hidden"
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while (r := httpx.get(f"{base}/v1/models", headers=headers)).status_code == 200:
            assert time.monotonic() < deadline, "SIGHUP did not reload the keys"
            time.sleep(0.2)
        assert r.status_code == 403 and "revoked" in r.json()["error"]["message"]
    finally:
        server.terminate()
        server.wait(timeout=30)


# The pipeline extra's packages that no base dependency installs too (tqdm and
# matplotlib come with transformers and mlflow): the serving image has none of them.
PIPELINE_ONLY = ["zenml", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "gguf", "crawl4ai", "docling",
                 "bs4", "datasketch", "langdetect", "tenacity", "rouge_score", "sacrebleu", "httpx"]
SERVE_ONLY = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # as if not installed: importing it fails, find_spec finds nothing
import qaforge.cli, qaforge.mlflow_model
from qaforge.modeling import generate_answers
from serving.app import create_app
from serving.models import load_model
from serving.settings import ServeSettings
create_app(ServeSettings(model_uri={model!r}, tokens_env="QAFORGE_TEST_KEY"))
loaded = load_model({model!r})
print(generate_answers(loaded.model, loaded.tokenizer, [[{{"role": "user", "content": "Hi"}}]], 4).answers[0])
"""


@pytest.mark.slow
def test_serving_needs_nothing_from_the_pipeline_extra(base_model_dir: str) -> None:
    """docker/Dockerfile.serve installs qaforge without the `pipeline` extra."""
    script = SERVE_ONLY.format(blocked=PIPELINE_ONLY, model=base_model_dir)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=os.environ | {"QAFORGE_TEST_KEY": "k"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()
