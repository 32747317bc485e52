"""The teacher and the judge against a real model: the base model served over HTTP by
qaforge's own server, as a user would point them at any OpenAI-compatible endpoint.
The stub tests (test_teacher_and_exports.py, test_judge.py) keep the failure shapes a
real model rarely produces."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from qaforge.config import Generator, JudgeConfig, ResponseFormat, SynthesisConfig, TeacherConfig
from qaforge.evaluation.judge import rubric_scores
from qaforge.records import ChunkSet
from qaforge.synthesis import generate_pairs
from qaforge.synthesis.teacher import teacher_pairs
from serving.app import create_app
from serving.keys import create_key
from serving.settings import ServeSettings

from helpers import REPO, running

KEY_ENV = "QAFORGE_REAL_MODEL_KEY"


@pytest.fixture(scope="module")
def endpoint(base_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`qaforge serve` of the base model: the teacher and the judge talk to it over HTTP."""
    root = tmp_path_factory.mktemp("real-model")
    key = create_key(root / "keys.yaml", "teacher")
    settings = ServeSettings(model_uri=base_model_dir, keys_file=root / "keys.yaml", tokens_env="QAFORGE_TEST_UNSET",
                             max_tokens_limit=512, max_prompt_tokens=1024, reload_seconds=0)
    with running(create_app(settings), settings) as url:
        yield {"base_url": f"{url}/v1", "model": Path(base_model_dir).name, "key": key}


def teacher(endpoint: dict[str, str], **options: object) -> TeacherConfig:
    """configs/teacher.yaml's prompts, pointed at the endpoint."""
    shipped = yaml.safe_load((REPO / "configs" / "teacher.yaml").read_text())["parameters"]["config"]
    prompts = {k: shipped["synthesis"]["teacher"][k] for k in ("system_prompt", "user_prompt")}
    return TeacherConfig(base_url=endpoint["base_url"], model=endpoint["model"], api_key_env=KEY_ENV,
                         pairs_per_chunk=2, styles={"factual": 1.0}, max_tokens=400, temperature=0.0, repairs=0,
                         **prompts, **options)


def test_the_teacher_writes_usable_pairs_with_a_real_model(endpoint: dict[str, str], sample_chunks: ChunkSet,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked for JSON of the reply's schema, the served model's replies all parse (its
    server decodes them under the schema's grammar), every chunk gets pairs, and the
    synthesis filters count what they could not use."""
    monkeypatch.setenv(KEY_ENV, endpoint["key"])
    chunks = ChunkSet(chunks=sample_chunks.chunks[:3])
    cfg = SynthesisConfig(generator=Generator.TEACHER, teacher=teacher(endpoint), cache_dir=tmp_path)
    pairs, dropped, stats = generate_pairs(chunks, cfg)
    assert stats["requests"] == 3 and stats["unparseable"] == 0 and stats["failed_chunks"] == 0, stats
    by_chunk, _ = teacher_pairs(chunks.chunks, cfg.teacher, tmp_path / "teacher")  # now from the cache
    assert all(1 <= len(by_chunk[c.chunk_id]) <= 2 for c in chunks.chunks), by_chunk
    # Each pair, and each follow-up a pair carries, is a candidate the filters keep or count.
    written = sum(1 + bool(p.follow_up_question and p.follow_up_answer) for found in by_chunk.values() for p in found)
    assert len(pairs) + sum(dropped.values()) == written, (len(pairs), dropped, written)
    for pair in pairs:
        assert pair.question.strip() and pair.answer.strip() and pair.kind == "factual"


def test_without_structured_outputs_a_teacher_that_yields_nothing_stops_the_run(
        endpoint: dict[str, str], sample_chunks: ChunkSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same model asked without `response_format` and with a prompt that invites
    prose: nothing parses, and the run stops showing what came back."""
    monkeypatch.setenv(KEY_ENV, endpoint["key"])
    cfg = teacher(endpoint, response_format=ResponseFormat.NONE).model_copy(update={
        "system_prompt": "You are a friendly teacher.", "user_prompt": "Tell me about this text: {chunk}"})
    with pytest.raises(RuntimeError) as caught:
        teacher_pairs(sample_chunks.chunks[:2], cfg, tmp_path)
    message = str(caught.value)
    assert "gave nothing usable for any of the 2 chunks asked: 2 of 2 replies were not the JSON" in message
    shown = message.partition("Replies such as: ")[2]
    assert shown[:1] in "'\"" and len(shown) > 100, message  # the replies themselves, quoted


def test_the_judge_scores_real_answers(endpoint: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, endpoint["key"])
    judge = JudgeConfig(base_url=endpoint["base_url"], model=endpoint["model"], api_key_env=KEY_ENV, max_tokens=200,
                        temperature=0.0, repairs=0)
    questions = ["How long does a DC fast charge from 10% to 80% take?", "What is an idle fee?"]
    references = ["About 18 to 45 minutes on a high-power charger.",
                  "A per-minute charge for staying plugged in after charging ends."]
    answers = ["Typically 18 to 45 minutes.", "A fee for parking in a hotel."]
    scores = rubric_scores(questions, references, answers, judge)
    assert [set(s) for s in scores] == [set(judge.criteria)] * 2
    assert all(1 <= v <= 5 for s in scores for v in s.values()), scores
