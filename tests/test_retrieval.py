"""Retrieval: the BM25 index over the sample chunks, the one prompt that carries its
passages in training, evaluation and serving, RAFT's training examples, the four
systems on several question sets, and the server returning sources over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pytest

from qaforge.config import ContextTraining, EvaluationConfig, GoldSet, ServingConfig, load_config
from qaforge.evaluation import AnswerCache, ModelRef, evaluate, question_sets, systems
from qaforge.evaluation.sets import gold_questions
from qaforge.prompting import (
    CONTEXT_INTRO,
    build_messages,
    passage_header,
    retrieval_query,
    with_retrieved,
    with_system_prompt,
)
from qaforge.records import Chunk, ChunkSet, EvalMetric, Interval, ModelLabel, QAPair, Turn
from qaforge.retrieval import Retriever
from qaforge.served import Answering
from qaforge.training import Example, examples, with_passages

from helpers import REPO, running

SYSTEM = "Answer briefly."


@pytest.fixture(scope="module")
def retriever(sample_chunks) -> Retriever:
    return Retriever.build(sample_chunks)


def test_retrieval_finds_the_source_chunk_of_a_known_question(retriever: Retriever, sample_dataset) -> None:
    pair = next(p for p in sample_dataset.test if p.question == "What is a charging network?")
    top = retriever.search(pair.question, 3)
    assert pair.chunk_id in [p.chunk_id for p in top]
    assert [p.score for p in top] == sorted((p.score for p in top), reverse=True) and top[-1].score > 0
    # Over the whole test split (the questions the offline generator wrote from these chunks).
    recall = retriever.recall([p.question for p in sample_dataset.test], [p.chunk_id for p in sample_dataset.test], 3)
    assert recall is not None and recall >= 0.7, recall


def test_a_follow_up_retrieves_in_the_context_of_the_question_before_it() -> None:
    """"How much does it cost?" names no subject: alone it matches every page about
    costs; after "Can I charge my car at work?" it finds the workplace page, in serving
    and evaluation (`Answering`) and in RAFT's training examples alike."""
    def chunk(name: str, text: str) -> Chunk:
        return Chunk(chunk_id=name, doc_id=name, source=f"{name}.html", title=name.title(), headings=[], text=text,
                     token_count=len(text.split()), doc_content_hash=name, fetched_at=datetime.now(UTC),
                     converter="test")

    index = Retriever.build(ChunkSet(chunks=[
        chunk("workplace", "Employers install Level 2 chargers in office car parks, so staff can charge at work. "
                           "Charging at work typically costs 0.20 per kWh."),
        chunk("public", "Public DC fast charging costs about 0.50 per kWh on most networks."),
        chunk("home", "The cost of home charging depends on the electricity tariff; off-peak rates cost less."),
        chunk("tyres", "Check the tyre pressure of the car once a month."),
    ]))
    first, follow_up = "Can I charge my car at work?", "How much does it cost?"
    assert index.search(follow_up, 1)[0].chunk_id != "workplace", "the follow-up alone must not find it"
    conversation = [{"role": "user", "content": first}, {"role": "assistant", "content": "Yes, at many offices."},
                    {"role": "user", "content": follow_up}]
    assert Answering(None, index, 1).retrieve(conversation)[0].chunk_id == "workplace"
    [raft] = with_passages([Example(follow_up, "About 0.20 per kWh.", (Turn(question=first, answer="Yes."),),
                                    source_id="tyres")], index, 2, ContextTraining(with_source=0.0), seed=0)
    assert raft.context[0].chunk_id == "workplace", [p.chunk_id for p in raft.context]


def test_the_plainest_question_of_the_sample_finds_its_page(retriever: Retriever) -> None:
    """"How long does it take ...?" is answered in minutes: without the frame's answer
    words, "long" and "take" found the guide's overview ("how long charging takes") first
    and the DC fast charging page fourth."""
    question = "How long does it take to charge an electric car at a DC fast charger?"
    top = retriever.search(retrieval_query([question]), 2)
    assert top[0].source.endswith("levels-dc-fast-charging.html"), [p.source for p in top]
    assert "18 to 45 minutes" in top[0].text
    # Its follow-up asks about home: the "how long" of the turn before must not pull the
    # DC fast charging page's "minutes" ahead of every page about home.
    found = retriever.search(retrieval_query([question, "And what about at home?"]), 2)
    assert any("home-charging" in p.source for p in found), [p.source for p in found]


def test_an_off_topic_question_gets_no_passages(retriever: Retriever) -> None:
    assert retriever.search("zqxj wvvb", 3) == []
    assert retriever.search("the and of", 3) == [], "stop words alone match nothing"


def test_the_index_saves_and_loads_unchanged(retriever: Retriever, tmp_path: Path) -> None:
    loaded = Retriever.load(retriever.save(tmp_path / "index"))
    question = "How long does DC fast charging take?"
    assert loaded.search(question, 4) == retriever.search(question, 4)
    assert len(loaded) == len(retriever)


def test_served_prompt_carries_the_passages_as_training_and_evaluation_do(retriever: Retriever) -> None:
    """One prompt format: the server puts the passages into the newest question exactly
    where build_messages (training, evaluation) does."""
    question = "What is OCPP?"
    passages = retriever.search(question, 2)
    served = with_retrieved(with_system_prompt([{"role": "user", "content": question}], SYSTEM), passages)
    assert served == build_messages(question, SYSTEM, context=passages)
    content = served[-1]["content"]
    assert content.startswith(CONTEXT_INTRO) and content.endswith(f"Question: {question}")
    assert f"[1] {passage_header(passages[0])}\n{passages[0].text}" in content and passages[1].text in content
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
               {"role": "user", "content": question}]
    assert with_retrieved(history, passages)[:2] == history[:2], "only the newest question gets passages"


def test_raft_examples_mix_the_source_with_distractors(retriever: Retriever, sample_dataset) -> None:
    found = examples(sample_dataset.train[:40])
    always = with_passages(found, retriever, 3, ContextTraining(with_source=1.0), seed=1)
    for before, after in zip(found, always):
        ids = [p.chunk_id for p in after.context]
        assert before.source_id in ids and len(set(ids)) == len(ids) <= 3
        assert after.answer == before.answer
    never = with_passages(found, retriever, 3, ContextTraining(with_source=0.0, without_source_answer="Not said."),
                          seed=1)
    assert all(e.source_id not in [p.chunk_id for p in e.context] and e.answer == "Not said." for e in never)
    general = with_passages([Example("Who wrote Hamlet?", "Shakespeare.")], retriever, 3,
                            ContextTraining(with_source=0.0, without_source_answer="Not said."), seed=1)
    assert general[0].answer == "Shakespeare.", "a question without a source keeps its answer"
    mixed = with_passages(found, retriever, 3, ContextTraining(with_source=0.5), seed=1)
    with_source = sum(e.source_id in [p.chunk_id for p in e.context] for e in mixed)
    assert 10 <= with_source <= 30


def test_config_checks_that_training_prompts_fit_the_passages() -> None:
    from qaforge.config import ConfigError, validate_config

    raw = {"sources": {"files": ["x"]}, "training": {"context": {}, "max_length": 256},
           "retrieval": {"top_k": 3, "serve": True}}
    with pytest.raises(ConfigError, match=r"training.max_length is 256.*needs at least 768"):
        validate_config(raw)
    with pytest.raises(ConfigError, match=r"evaluation.gate_on is 'users'"):
        validate_config({"sources": {"files": ["x"]}, "evaluation": {"gate_on": "users"}})
    ok = validate_config({"sources": {"files": ["x"]}, "evaluation": {"gate_on": "users", "gold": [
        {"name": "users", "path": "gold.jsonl"}]}})
    assert ok.evaluation.gate_on == "users"


@pytest.mark.slow
def test_four_systems_on_every_question_set(retriever: Retriever, sample_dataset, base_model_dir: str,
                                            tmp_path: Path) -> None:
    """Base and 'fine-tuned' (here the base model again, under another name), closed book
    and with retrieval, on the test split, the knowledge and memorisation sets and a gold
    set with categories: the served pair on every set, the other mode on the gate's set;
    the gate's set is the gold one; the base's answers come from the cache the second time."""
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(g) + "\n" for g in [
        {"question": f"What is {name}?", "answer": f"{name} is a charging term.", "group": f"g{i}"}
        for i, name in enumerate(["OCPP", "CHAdeMO", "CCS", "Level 2", "a wallbox", "a charging network"])
    ]))
    cfg = EvaluationConfig(max_new_tokens=6, latency_samples=0, general_qa=None, bootstrap_samples=100,
                           precision="fp32", max_examples=4, knowledge=3, memorisation=3,
                           gold=[GoldSet(name="users", path=gold)])
    sets = question_sets(sample_dataset, cfg)
    assert list(sets) == ["test", "knowledge", "memorisation", "users"]
    assert [len(q.pairs) for q in sets.values()] == [4, 3, 3, 6]
    chosen, gated, baseline = systems(ModelRef(base_model_dir), ModelRef(base_model_dir, identity=base_model_dir),
                                      None, Answering(SYSTEM), Answering(SYSTEM, retriever, 2), serve_retrieval=True,
                                      compare_modes=True)
    assert (gated, baseline) == (ModelLabel.CANDIDATE_RETRIEVAL, ModelLabel.BASE_RETRIEVAL)
    assert set(chosen) == {ModelLabel.CANDIDATE, ModelLabel.BASE, ModelLabel.CANDIDATE_RETRIEVAL,
                           ModelLabel.BASE_RETRIEVAL}

    def run() -> object:
        return evaluate(chosen, sets, cfg, gated=gated, baseline=baseline, gate_on="users",
                        cache=AnswerCache(tmp_path / "answers"))

    report = run()
    assert report.gate_set == "users" and report.gate_note == ""
    users = report.sets["users"]
    assert (users.unit, users.units) == ("groups", 6)
    assert users.retrieval_recall is None, "a gold question has no source chunk"
    assert report.sets["test"].retrieval_recall is not None
    assert set(users.by_source) == {"users/uncategorized"}
    assert set(users.metrics) == {label.value for label in chosen}, "every system on the gate's set"
    for name in ("test", "knowledge", "memorisation"):
        assert set(report.sets[name].metrics) == {"candidate_retrieval", "base_retrieval"}, name
    for scores in report.sets.values():
        assert {c.a for c in scores.comparisons} == {"candidate_retrieval"}
        rows = scores.rows
        assert [row.answers["candidate_retrieval"] for row in rows] == [row.answers["base_retrieval"]
                                                                        for row in rows], "the same weights"
    assert {c.b for c in users.comparisons} == {"candidate", "base", "base_retrieval"}
    assert "perplexity" in users.metrics["base_retrieval"] and "perplexity" not in users.metrics["base"]
    again = run()
    assert again.reused == ["base", "base_retrieval"], "the base's answers, in both modes, come from the cache"
    assert again.sets["users"].metrics["base_retrieval"] == users.metrics["base_retrieval"]


@pytest.fixture(scope="module")
def served_with_sources(base_model_dir: str, retriever: Retriever,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The base model logged with the sample index and top_k 2, as the train step logs a
    model trained to answer from passages, registered, and served by alias."""
    import mlflow

    from qaforge.mlflow_model import log_qa_model
    from serving.app import create_app
    from serving.keys import create_key
    from serving.settings import ServeSettings

    root = tmp_path_factory.mktemp("sources")
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking)
    try:
        with mlflow.start_run(experiment_id=mlflow.create_experiment("sources")):
            uri = log_qa_model(base_model_dir, SYSTEM, retriever, top_k=2)
        version = mlflow.register_model(uri, "qa-sources").version
        mlflow.MlflowClient().set_registered_model_alias("qa-sources", "production", version)
    finally:
        mlflow.set_tracking_uri(previous)
    keys_file = root / "keys.yaml"
    key = create_key(keys_file, "alice")
    settings = ServeSettings(model_uri="models:/qa-sources@production", tracking_uri=tracking, keys_file=keys_file,
                             tokens_env="QAFORGE_TEST_UNSET", max_new_tokens=12, reload_seconds=0,
                             max_prompt_tokens=ServingConfig().max_prompt_tokens)
    try:
        with running(create_app(settings), settings) as url:
            yield {"url": url, "key": key, "root": root}
    finally:
        mlflow.set_tracking_uri(previous)  # the app set it process-wide


@pytest.mark.slow
def test_server_returns_sources_over_http_and_through_the_openai_client(served_with_sources: dict,
                                                                         retriever: Retriever) -> None:
    url, key = served_with_sources["url"], served_with_sources["key"]
    question = "What does OCPP stand for?"
    expected = [p.chunk_id for p in retriever.search(question, 2)]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(model="qa-sources", messages=[{"role": "user", "content": question}],
                                           max_tokens=12)
    assert reply.choices[0].message.content.strip(), "an OpenAI client reads the answer as usual"
    sources = reply.to_dict()["sources"]
    assert [s["chunk_id"] for s in sources] == expected
    assert all(s["title"] and s["source"].endswith((".html", ".md", ".pdf", ".docx")) for s in sources)
    assert reply.usage.prompt_tokens > 100, "the passages are in the prompt"

    stream = client.chat.completions.create(model="qa-sources", messages=[{"role": "user", "content": question}],
                                            max_tokens=12, stream=True)
    chunks = list(stream)
    assert [s["chunk_id"] for s in chunks[0].to_dict()["sources"]] == expected, "the first event names the sources"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.strip() == reply.choices[0].message.content.strip()

    raw = httpx.post(f"{url}/predict", json={"input_text": question}, headers={"Authorization": f"Bearer {key}"},
                     timeout=60)
    assert raw.status_code == 200 and [s["chunk_id"] for s in raw.json()["sources"]] == expected
    off_topic = client.chat.completions.create(model="qa-sources", messages=[{"role": "user", "content": "zqxj?"}],
                                               max_tokens=4)
    assert off_topic.to_dict()["sources"] == [], "nothing matched: no passages, and the list says so"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium (.ci/run installs it)")
def test_chat_page_streams_an_answer_with_its_sources_in_chromium(served_with_sources: dict) -> None:
    """The page is served by the API, loads nothing from anywhere else, asks for the key,
    streams the answer and lists its sources; the screenshot is kept in the test's folder."""
    from playwright.sync_api import sync_playwright

    url, key = served_with_sources["url"], served_with_sources["key"]
    page_response = httpx.get(f"{url}/chat", timeout=10)
    assert page_response.status_code == 200 and "default-src 'none'" in page_response.headers["content-security-policy"]
    elsewhere: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 900})
            page.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith(url) else None)
            page.goto(f"{url}/chat")
            page.fill("#key", "wrong-key")
            page.click("#save-key")
            page.wait_for_selector("#key-error:has-text('401')")  # selectors: the page's CSP forbids eval
            page.fill("#key", key)
            page.click("#save-key")
            page.wait_for_selector("#model:has-text('qa-sources')")
            page.fill("#question", "What does OCPP stand for?")
            page.press("#question", "Enter")
            page.wait_for_selector(".sources li", timeout=60_000)
            page.wait_for_selector("#send:enabled", timeout=60_000)
            answer = page.inner_text(".answer")
            titles = page.locator(".sources li").all_inner_texts()
            shot = served_with_sources["root"] / "chat.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert answer.strip() and len(titles) == 2
    assert shot.stat().st_size > 10_000
    assert elsewhere == [], f"the page loaded something from elsewhere: {elsewhere}"
    # Kept where a person can look at it after the run.
    kept = REPO / "reports" / "chat-page.png"
    kept.parent.mkdir(exist_ok=True)
    kept.write_bytes(shot.read_bytes())


def test_gold_set_rows_name_the_line_of_a_bad_entry(tmp_path: Path) -> None:
    from qaforge.evaluation.sets import gold_questions

    path = tmp_path / "gold.jsonl"
    path.write_text('{"question": "q?", "answer": "a."}\n{"question": "q2?"}\n')
    with pytest.raises(ValueError, match=r"gold.jsonl:2: answer: Field required"):
        gold_questions(GoldSet(name="users", path=path), 0.95)
    path.write_text('{"question": "q?", "answer": "a.", "category": "fees"}\n')
    [pair] = gold_questions(GoldSet(name="users", path=path), 0.95).pairs
    assert isinstance(pair, QAPair) and (pair.source, pair.kind) == ("users/fees", "fees")


@pytest.mark.parametrize("name", ["faq", "manual"])
def test_the_other_corpora_configs_validate_and_name_their_gold_sets(name: str) -> None:
    config = load_config(REPO / "configs" / f"{name}.yaml")
    assert [g.name for g in config.evaluation.gold] == ["users"]
    gold = gold_questions(config.evaluation.gold[0].model_copy(update={"path": REPO / config.evaluation.gold[0].path}),
                          config.evaluation.confidence)
    assert len(gold.pairs) == 40 and gold.units >= 6, gold.describe()


def test_every_metric_name_is_valid_for_mlflow_and_reads_back() -> None:
    """eval/<set>/<system>/<metric> is written and read by EvalMetric only; MLflow refuses
    names with '+', and every system label and unit makes a valid one."""
    from mlflow.utils.validation import _validate_metric_name

    for label in ModelLabel:
        name = str(EvalMetric("knowledge", label.value, "rougeL"))
        _validate_metric_name(name)
        assert EvalMetric.parse(name) == ("knowledge", label.value, "rougeL")
        for unit in ("questions", "documents", "groups", "categories"):
            gain = Interval(metric="rougeL", a="candidate", b=label.value, value_a=0.5, value_b=0.4, gain=0.1,
                            low=0.0, high=0.2, confidence=0.95, resampled=unit)
            for written in EvalMetric.gains("users", gain):
                _validate_metric_name(written)
                assert EvalMetric.parse(written).system == f"gain_over_{label.value}"
    assert EvalMetric.parse("train/loss") is None and EvalMetric.parse("eval/x/y") is None
