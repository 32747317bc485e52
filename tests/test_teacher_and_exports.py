"""The teacher generator against a real OpenAI-compatible HTTP server on 127.0.0.1
that misbehaves like real ones do, and the dataset exports read back by `datasets`."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from datasets import load_dataset

from qaforge.chat_client import EndpointError
from qaforge.config import SynthesisConfig, TeacherConfig
from qaforge.records import Chunk, ChunkSet
from qaforge.synthesis import USER_QUESTION, generate_pairs, synthesize
from qaforge.synthesis.exports import dataset_card, write_exports
from qaforge.synthesis.teacher import teacher_pairs

from fixture_site import chat_completion, serve_chat

TOPICS = {
    "plain": "A Level 2 charger delivers up to 19.2 kW from a 240 V supply.",
    "RATE": "Idle fees start when a car stays plugged in after charging has ended.",
    "MALFORMED": "OCPP is the protocol between a charging station and its back office.",
    "SLOW": "Preconditioning warms the battery before a DC fast charging session.",
    "REFUSE": "CHAdeMO is a DC fast charging connector standard developed in Japan.",
}


def chunk(tag: str, doc: str) -> Chunk:
    return Chunk(
        chunk_id=f"{doc}-{tag}", doc_id=doc, source=f"https://example.test/{doc}", title="Charging guide",
        headings=["Basics"], text=f"{tag}. {TOPICS[tag]}", token_count=20,
        doc_content_hash="0" * 64, fetched_at=datetime.now(UTC), converter="docling-html",
    )


class TeacherServer:
    """Answers /v1/chat/completions with pairs grounded in the chunk it is sent."""

    def __init__(self, refuses: tuple[str, ...] = ()) -> None:
        self.hits: Counter[str] = Counter()
        self.status = 200
        self.refuses = refuses  # response_format types it answers 400 to, as servers without them do
        self.formats: list[str] = []

    def reply(self, body: dict) -> tuple[int, dict]:
        shape = (body.get("response_format") or {"type": "none"})["type"]
        self.formats.append(shape)
        if shape in self.refuses:
            return 400, {"error": {"message": f"response_format type '{shape}' is not supported",
                                   "param": "response_format"}}
        user = body["messages"][0]["content"]
        if user.startswith("JUDGE"):
            self.hits["judge"] += 1
            verdict = {"faithfulness": 2 if "OCPP" in user else 5, "relevance": 5}
            return 200, chat_completion(body, json.dumps(verdict))
        user = body["messages"][1]["content"]  # the chunk prompt, also on a repair turn
        tag = next(t for t in TOPICS if f"{t}. " in user)
        self.hits[tag] += 1
        if self.status != 200:
            return self.status, {"error": {"message": "invalid api key"}}
        first = self.hits[tag] == 1
        if tag == "RATE" and first:
            return 429, {"error": {"message": "rate limited"}}
        if tag == "SLOW" and first:
            time.sleep(2)
        sentence = TOPICS[tag]
        pairs = [{"question": f"What does the guide say about {tag.lower()}?", "answer": sentence, "style": "factual"}]
        if tag == "REFUSE":
            pairs = [{"question": "What is CHAdeMO?", "answer": "I don't know.", "style": "factual"}]
        if tag == "plain":
            pairs[0] |= {"follow_up_question": "From what supply?", "follow_up_answer": "It delivers up to 19.2 kW from a 240 V supply."}
        content = json.dumps({"pairs": pairs})
        if tag == "MALFORMED" and first:
            content = "Sure! Here are some questions: 1. What is OCPP?"
        return 200, chat_completion(body, content)

    def serve(self):
        return serve_chat(self.reply)


def teacher_config(base_url: str) -> TeacherConfig:
    return TeacherConfig(
        base_url=base_url, model="teacher-test", api_key_env=None,
        system_prompt="You write question/answer pairs as JSON.",
        user_prompt="Document: {title} ({headings})\n{chunk}\nWrite {n} pairs: {styles}.",
        pairs_per_chunk=1, timeout_seconds=1, retries=2, repairs=1, concurrency=2,
    )


def test_teacher_retries_repairs_counts_and_caches(tmp_path: Path) -> None:
    teacher = TeacherServer()
    chunks = [chunk(tag, f"doc{i}") for i, tag in enumerate(TOPICS)]
    with teacher.serve() as url:
        cfg = teacher_config(url)
        pairs, usage = teacher_pairs(chunks, cfg, tmp_path)
        assert {c: len(p) for c, p in pairs.items()} == {c.chunk_id: 1 for c in chunks}
        assert dict(teacher.hits) == {"plain": 1, "RATE": 2, "MALFORMED": 2, "SLOW": 2, "REFUSE": 1}
        assert usage.repairs == 1 and usage.requests == 8 and not usage.failed_chunks
        answered = 6  # 8 requests less the 429 and the timed-out one, which carried no usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (100 * answered, 20 * answered)

        again, usage = teacher_pairs(chunks, cfg, tmp_path)
        assert again == pairs and usage.cached_chunks == len(chunks) and usage.requests == 0
        assert sum(teacher.hits.values()) == 8, "a rerun asks the teacher nothing"


def test_teacher_pairs_are_filtered_and_split(tmp_path: Path) -> None:
    teacher = TeacherServer()
    chunks = ChunkSet(chunks=[chunk(tag, f"doc{i}") for i, tag in enumerate(TOPICS)])
    with teacher.serve() as url:
        cfg = SynthesisConfig(
            generator="teacher", teacher=teacher_config(url), cache_dir=tmp_path,
            split={"train": 0.6, "val": 0.0, "test": 0.4},
        )
        data = synthesize(chunks, cfg)
    assert data.dropped == {"refusal": 1}
    assert len(data.train) + len(data.test) == 5
    assert data.generator == "teacher" and data.generator_stats["requests"] == 8
    assert {p.kind for p in data.train + data.test} == {"factual", "follow-up"}
    follow_up = next(p for p in data.train + data.test if p.kind == "follow-up")
    assert follow_up.question == "From what supply?"
    assert [t.question for t in follow_up.history] == ["What does the guide say about plain?"]


def test_judge_drops_unfaithful_pairs(tmp_path: Path) -> None:
    teacher = TeacherServer()
    chunks = ChunkSet(chunks=[chunk(tag, f"doc{i}") for i, tag in enumerate(["plain", "MALFORMED", "RATE"])])
    with teacher.serve() as url:
        judge = teacher_config(url).model_copy(
            update={"judge_prompt": "JUDGE the pair against the text.\n{chunk}\nQ: {question}\nA: {answer}"}
        )
        # Seed 1 hashes doc0 into test and doc1 and doc2 into train.
        cfg = SynthesisConfig(generator="teacher", teacher=judge, cache_dir=tmp_path, seed=1,
                              split={"train": 0.6, "val": 0.0, "test": 0.4})
        data = synthesize(chunks, cfg)
    assert teacher.hits["judge"] == 3
    assert data.dropped == {"judge": 1}
    assert all("OCPP" not in p.answer for p in data.train + data.test)


def test_an_endpoint_without_structured_outputs_is_asked_as_it_can_answer(tmp_path: Path) -> None:
    """A 400 about `response_format` steps down to json_object, then to none, once: the
    client remembers, and the pairs arrive all the same."""
    chunks = [chunk(tag, f"doc{i}") for i, tag in enumerate(["plain", "REFUSE"])]
    for refuses, used in ((("json_schema",), "json_object"), (("json_schema", "json_object"), "none")):
        teacher = TeacherServer(refuses)
        with teacher.serve() as url:
            cfg = teacher_config(url).model_copy(update={"concurrency": 1})
            pairs, usage = teacher_pairs(chunks, cfg, tmp_path / used)
        assert {c: len(p) for c, p in pairs.items()} == {c.chunk_id: 1 for c in chunks}
        assert teacher.formats == ["json_schema", *refuses[1:], used, used], teacher.formats


def two_teachers(grounded: bool) -> Callable[[dict], tuple[int, dict]]:
    """A teacher whose pairs and answers quote the text (grounded), or one that adds words
    of its own; both ask the same question of a chunk, and the second answers the user
    questions vaguely, calling one unsupported by its passages."""
    def reply(body: dict) -> tuple[int, dict]:
        user = body["messages"][1]["content"]
        if user.startswith("Passages:"):
            question = user.partition("Question: ")[2].partition("\n")[0]
            topic = "CHAdeMO" if "CHAdeMO" in question else "Level 2"
            sentence = next(t for t in TOPICS.values() if topic in t)
            answer = {"answer": sentence if grounded else "It depends on many things in general.",
                      "supported": grounded or topic == "Level 2"}
            return 200, chat_completion(body, json.dumps(answer))
        tag = next(t for t in TOPICS if f"{t}. " in user)
        answer = TOPICS[tag] if grounded else f"{TOPICS[tag][:-1]}, usually."  # still grounded enough to pass
        pair = {"question": f"What does the guide say about {tag.lower()}?", "answer": answer, "style": "factual"}
        return 200, chat_completion(body, json.dumps({"pairs": [pair]}))
    return reply


def test_several_teachers_and_users_questions(tmp_path: Path) -> None:
    """Two teachers write the same questions: the pair grounded in its chunk is kept. Users'
    questions are answered by both from the passages retrieved for them: the grounded,
    supported answer is kept, on the passage that holds it. The counts say whose won."""
    questions = tmp_path / "questions.txt"
    questions.write_text("How much power does a Level 2 charger deliver?\n# asked at the front desk\n\n"
                         "Who developed the CHAdeMO connector?\n")
    chunks = ChunkSet(chunks=[chunk(tag, f"doc{i}") for i, tag in enumerate(["plain", "REFUSE", "MALFORMED"])])
    with serve_chat(two_teachers(grounded=False)) as vague, serve_chat(two_teachers(grounded=True)) as good:
        # The vague teacher comes first: ties and order would favour it.
        cfg = SynthesisConfig(
            generator="teacher", cache_dir=tmp_path / "cache", questions=questions,
            teacher=teacher_config(vague).model_copy(update={"name": "vague"}),
            teachers=[teacher_config(good).model_copy(update={"name": "good"})],
        )
        pairs, dropped, stats = generate_pairs(chunks, cfg)
    users = {p.question: p for p in pairs if p.kind == USER_QUESTION}
    assert set(users) == {"How much power does a Level 2 charger deliver?", "Who developed the CHAdeMO connector?"}
    assert users["Who developed the CHAdeMO connector?"].answer == TOPICS["REFUSE"]
    assert users["How much power does a Level 2 charger deliver?"].chunk_id == "doc0-plain"
    written = [p for p in pairs if p.kind == "factual"]
    assert sorted(p.answer for p in written) == sorted(TOPICS[t] for t in ("plain", "REFUSE", "MALFORMED")), \
        "of each pair of near-duplicate questions, the grounded one"
    assert stats["kept/good"] == len(pairs) and "kept/vague" not in stats, stats
    assert stats["questions"] == 2 and stats["questions_unsupported"] == 0
    assert stats["requests"] == 2 * (len(chunks.chunks) + 2) and dropped["duplicate_question"] == 3


def test_teacher_auth_error_is_clear(tmp_path: Path) -> None:
    teacher = TeacherServer()
    teacher.status = 401
    with teacher.serve() as url, pytest.raises(EndpointError, match="HTTP 401: .*invalid api key"):
        teacher_pairs([chunk("plain", "doc")], teacher_config(url), tmp_path)


def test_bad_prompt_placeholder_is_named() -> None:
    from qaforge.config import ConfigError, validate_config

    raw = {
        "sources": {"files": ["x"]},
        "synthesis": {"generator": "teacher", "teacher": {
            "base_url": "http://127.0.0.1:1/v1", "model": "m", "system_prompt": "s", "user_prompt": "{chunk} {text}",
        }},
    }
    with pytest.raises(ConfigError, match=r"synthesis\.teacher: Value error, user_prompt uses an unknown placeholder 'text'"):
        validate_config(raw)
    raw["synthesis"].pop("teacher")
    with pytest.raises(ConfigError, match="generator 'teacher' and questions need a teacher \(or teachers\) section"):
        validate_config(raw)


def test_exports_load_with_datasets(sample_dataset, tmp_path: Path) -> None:
    files = write_exports(sample_dataset, "Answer briefly.", tmp_path)
    assert len(files) == 9
    for split in ("train", "val", "test"):
        expected = len(getattr(sample_dataset, split))
        messages = load_dataset("json", data_files=str(tmp_path / f"{split}.messages.jsonl"), split="train")
        assert messages.num_rows == expected
        assert {"messages", "chunk_id", "source"} <= set(messages.column_names)
        assert [m["role"] for m in messages[0]["messages"]] == ["system", "user", "assistant"]
        openai = load_dataset("json", data_files=str(tmp_path / f"{split}.openai.jsonl"), split="train")
        assert openai.column_names == ["messages"] and openai.num_rows == expected
        alpaca = load_dataset("json", data_files=str(tmp_path / f"{split}.alpaca.json"), split="train")
        assert {"instruction", "input", "output", "system", "source"} <= set(alpaca.column_names)
        assert alpaca[0]["output"] == getattr(sample_dataset, split)[0].answer
        for row, pair in zip(alpaca, getattr(sample_dataset, split)):
            assert row["history"] == [[t.question, t.answer] for t in pair.history]
    assert any(p.history for p in sample_dataset.train), "follow-ups are exported with their earlier turns"
    card = dataset_card(sample_dataset)
    assert f"| train | {len(sample_dataset.train)} |" in card and "## Source coverage" in card
