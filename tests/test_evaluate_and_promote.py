"""The gate and what it decides on: the question set with enough documents (or groups)
for its interval to mean anything, production scored as it is served, a registry that
answers with an error stopping the promotion, and the answer cache keyed by what
decides the answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qaforge.config import EvaluationConfig, GoldSet, PromptConfig, RegistryConfig
from qaforge.evaluation import (
    AnswerCache,
    ModelRef,
    Questions,
    System,
    evaluate,
    gate_set,
    min_units,
    systems,
)
from qaforge.evaluation.answers import as_asked, messages_of, model_fingerprint
from qaforge.evaluation.sets import by_document, gold_questions
from qaforge.generation import Sampling, generate
from qaforge.hardware import Machine
from qaforge.hardware import decide as decide_compute
from qaforge.promotion import decide_promotion, gate
from qaforge.records import (
    UNANSWERABLE,
    EvalReport,
    Interval,
    ModelLabel,
    PromotionDecision,
    QAPair,
    RegisteredModel,
    Resampling,
    SetReport,
    TrainedModel,
)
from qaforge.registry import move_aliases, production_model
from qaforge.served import Answering, load_model, logged_answering
from qaforge.tracking import RegistryError, version_by_alias_from

from fixture_site import serve_error
from helpers import REPO


def interval(low: float, high: float, a: float = 0.40, b: float = 0.30, **kwargs: object) -> Interval:
    return Interval(metric="rougeL", a="candidate", b="base", value_a=a, value_b=b, gain=a - b,
                    low=low, high=high, confidence=0.95, **kwargs)


@pytest.mark.parametrize(
    ("base", "production", "margin", "drop", "promoted", "reason"),
    [
        (interval(0.05, 0.15), None, 0.0, None, True, "gain over base 95% CI [+0.0500, +0.1500] above 0.0"),
        (interval(-0.01, 0.2), None, 0.0, None, False, "gain over base +0.1000 (95% CI [-0.0100, +0.2000])"),
        (interval(0.03, 0.15), None, 0.05, None, False, "has a lower bound not above 0.05"),
        (interval(0.05, 0.15), interval(-0.02, 0.04, 0.40, 0.39), 0.0, None, False, "over production v3 +0.0100"),
        (interval(0.05, 0.15), interval(0.01, 0.04, 0.40, 0.38), 0.0, None, True, "over production [+0.0100"),
        (interval(0.05, 0.15), None, 0.0, 0.2, False, "general-QA accuracy dropped by 0.2000, more than 0.1"),
        (interval(0.05, 0.15), None, 0.0, 0.05, True, "general-QA accuracy change -0.0500"),
    ],
)
def test_gate_decisions(base, production, margin, drop, promoted, reason) -> None:
    decision = decide_promotion(base, production, margin, "4", "3", general_drop=drop, max_general_drop=0.1)
    assert decision.promoted is promoted
    assert reason in decision.reason
    assert decision.reason.startswith("rougeL 0.4000 vs base 0.3000")
    assert "on the test set" in decision.reason


def set_report(name: str, comparisons: list[Interval], units: int = 10) -> SetReport:
    return SetReport(name=name, unit=Resampling.DOCUMENTS, units=units, comparisons=comparisons, rows=[],
                     metrics={"candidate": {"rougeL": 0.4}, "base": {"rougeL": 0.3}})


def test_the_gate_decides_on_the_set_the_report_names_over_its_documents() -> None:
    narrow = interval(0.02, 0.10)
    wide = interval(-0.05, 0.20, resampled=Resampling.DOCUMENTS, clusters=6)
    good = interval(0.05, 0.15, resampled=Resampling.DOCUMENTS, clusters=9)
    report = EvalReport(sets={"test": set_report("test", [narrow, wide]), "knowledge": set_report("knowledge", [good])},
                        gate_set="test")
    decision = gate(report, "4", "rougeL", RegistryConfig())
    assert not decision.promoted and decision.versus_base == wide, "the document-level interval decides"
    assert "over 6 documents" in decision.reason and decision.question_set == "test"
    elsewhere = gate(report.model_copy(update={"gate_set": "knowledge"}), "4", "rougeL", RegistryConfig())
    assert elsewhere.promoted and elsewhere.question_set == "knowledge"
    over_production = interval(0.01, 0.03, 0.40, 0.38, resampled=Resampling.DOCUMENTS).model_copy(
        update={"b": "production"})
    with_production = EvalReport(sets={"test": set_report("test", [good, over_production])}, gate_set="test",
                                 models={"production": "models:/qaforge-ev/3"})
    decision = gate(with_production, "4", "rougeL", RegistryConfig())
    assert decision.promoted and decision.production_version == "3" and decision.versus_production == over_production


def pairs(documents: int, per_document: int = 3, name: str = "d") -> list[QAPair]:
    return [QAPair(question=f"q{d}-{i}?", answer="a", chunk_id=f"c{d}", doc_id=f"{name}{d}", source=f"s{d}",
                   kind="fact", grounding=1.0) for d in range(documents) for i in range(per_document)]


def test_a_set_of_too_few_documents_never_decides() -> None:
    """A site whose hash split put one page in test: the interval over one document has no
    width, and a sign test over fewer than six cannot show anything at 95%. The gate reads
    the knowledge set instead, or nothing, and says why and what to do."""
    assert min_units(0.95) == 6 and min_units(0.99) == 8
    tiny = by_document("test", pairs(1, per_document=6))
    knowledge = by_document("knowledge", pairs(8))
    decided, note = gate_set({"test": tiny, "knowledge": knowledge}, "test", 0.95)
    assert decided == "knowledge"
    assert "The test set has 6 questions, 1 documents: too few" in note and "it takes 6" in note
    assert "decides on the knowledge set instead (24 questions, 8 documents)" in note
    decided, note = gate_set({"test": tiny, "knowledge": by_document("knowledge", pairs(3))}, "test", 0.95)
    assert decided is None and "nothing can be promoted" in note and "evaluation.gold" in note
    report = EvalReport(sets={"test": set_report("test", [interval(0.02, 0.02)], units=1)}, gate_set=None,
                        gate_note=note)
    decision = gate(report, "2", "rougeL", RegistryConfig())
    assert not decision.promoted and decision.reason == note and decision.question_set is None
    # Out-of-scope questions are pseudo-documents of one each: together they are one unit,
    # or five of them would lift a one-document test split to six.
    unanswerable = [p.model_copy(update={"kind": UNANSWERABLE, "doc_id": f"unanswerable-{i}"})
                    for i, p in enumerate(pairs(5, per_document=1))]
    with_them = by_document("test", tiny.pairs + unanswerable)
    assert with_them.units == 2 and gate_set({"test": with_them, "knowledge": knowledge}, "test", 0.95)[0] == "knowledge"
    memorisation = by_document("memorisation", pairs(20))
    assert gate_set({"test": tiny, "memorisation": memorisation}, "test", 0.95)[0] is None, (
        "memorisation never decides"
    )


def test_gold_sets_resample_their_groups_or_categories_and_say_which(tmp_path: Path) -> None:
    def gold(lines: list[dict]) -> Questions:
        path = tmp_path / "gold.jsonl"
        path.write_text("".join(json.dumps({"question": "q?", "answer": "a."} | line) + "\n" for line in lines))
        return gold_questions(GoldSet(name="users", path=path), 0.95)

    grouped = gold([{"group": "fees"}, {"group": "fees"}, {"group": "hours"}, {}])
    assert (grouped.unit, grouped.units) == (Resampling.GROUPS, 3), "a line without a group is its own group"
    many = gold([{"category": f"c{i % 7}"} for i in range(14)])
    assert (many.unit, many.units) == (Resampling.CATEGORIES, 7)
    few = gold([{"category": f"c{i % 4}"} for i in range(40)])
    assert (few.unit, few.units) == (Resampling.QUESTIONS, 40) and "4 categories are too few" in few.note


def test_a_gold_follow_up_is_asked_and_searched_with_its_conversation() -> None:
    """The default's follow-up set: each line's question is asked after its earlier turn,
    and retrieval reads that turn too, as the server does."""
    from qaforge.prompting import conversation_query

    questions = gold_questions(GoldSet(name="follow-ups", path=REPO / "data" / "sample" / "follow-ups.jsonl"), 0.95)
    assert questions.unit == Resampling.GROUPS and questions.units >= 6 and all(p.history for p in questions.pairs)
    home = next(p for p in questions.pairs if p.question == "And what about at home?")
    messages = messages_of(home)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "DC fast charger" in conversation_query(messages) and "at home" in conversation_query(messages)


@pytest.mark.parametrize(("status", "code", "said"), [(403, "PERMISSION_DENIED", "the registry says no"),
                                                      (500, "INTERNAL_ERROR", "too many 500 error responses")])
def test_a_registry_that_answers_with_an_error_stops_the_gate(status: int, code: str, said: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A tracking server that refuses (403) or fails (500): the production lookup and the
    alias move stop with an error naming it, instead of deciding as if there were no
    production version."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    trained = TrainedModel(method="full", base_model="b", model_uri="models:/m-1", mlflow_run_id="r",
                           train_loss=1.0, steps=1, seconds=1.0)
    decision = PromotionDecision(promoted=True, reason="", metric="rougeL", version="2")
    with serve_error(status, {"error_code": code, "message": "the registry says no"}) as url:
        client = MlflowClient(tracking_uri=url, registry_uri=url)
        with pytest.raises(RegistryError, match=f"cannot read model 'qa' from the model registry: .*{said}"):
            production_model(RegistryConfig(model_name="qa"), trained, client)
        with pytest.raises(RegistryError):
            move_aliases(decision, RegisteredModel(name="qa", version="2", model_uri="models:/qa/2"), RegistryConfig(),
                  client)


def test_no_model_or_no_alias_means_no_production_and_a_moved_alias_stops_promotion(tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                          registry_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert version_by_alias_from(client, "qa", "production") is None, "no such model"
    client.create_registered_model("qa")
    assert version_by_alias_from(client, "qa", "production") is None, "no such alias"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run(experiment_id=mlflow.create_experiment("registry")) as run:
            mlflow.log_text("x", "weights/x.txt")
    finally:
        mlflow.set_tracking_uri(previous)
    for _ in range(3):
        client.create_model_version("qa", f"runs:/{run.info.run_id}/weights", run_id=run.info.run_id)
    client.set_registered_model_alias("qa", "production", "1")
    assert str(version_by_alias_from(client, "qa", "production").version) == "1"
    registered = RegisteredModel(name="qa", version="3", model_uri="models:/qa/3")
    decision = PromotionDecision(promoted=True, reason="", metric="rougeL", version="3", production_version="1")
    client.set_registered_model_alias("qa", "production", "2")  # another run promoted v2 meanwhile
    with pytest.raises(RegistryError, match="moved to v2 since the evaluation compared the candidate with v1"):
        move_aliases(decision, registered, RegistryConfig(model_name="qa"), client)
    assert str(client.get_model_version_by_alias("qa", "production").version) == "2", "nothing moved"
    move_aliases(decision.model_copy(update={"production_version": "2"}), registered, RegistryConfig(model_name="qa"),
          client)
    assert str(client.get_model_version_by_alias("qa", "production").version) == "3"
    assert str(client.get_model_version_by_alias("qa", "previous").version) == "2"


def test_the_answer_cache_is_keyed_by_resolved_compute_libraries_and_weights(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights one")
    (folder / "config.json").write_text("{}")
    ref = ModelRef(str(folder), identity=str(folder))
    auto, fp32 = EvaluationConfig(), EvaluationConfig(precision="fp32")
    found = model_fingerprint(ref, auto)
    resolved = decide_compute(Machine.detect(), auto.device, auto.precision)
    assert (found["device"], found["precision"]) == (resolved.device.value, resolved.precision.value), (
        "what 'auto' means on this machine, not 'auto'"
    )
    assert (model_fingerprint(ref, fp32) == found) is (resolved.precision.value == "fp32")
    assert {"torch", "transformers"} <= set(found["libraries"])
    (folder / "model.safetensors").write_bytes(b"weights two, same name")
    assert model_fingerprint(ref, auto)["weights"] != found["weights"], "new weights under the same name"
    assert model_fingerprint(ModelRef("HuggingFaceTB/SmolLM2-135M-Instruct", identity="hub"), auto) is None, (
        "a hub name without a revision could be other weights tomorrow: never cached"
    )
    assert model_fingerprint(ModelRef("models:/qa@production", identity="x"), auto) is None
    assert model_fingerprint(ModelRef("models:/qa/3", identity="models:/m-1"), auto)["weights"] is None, (
        "a registered version never changes"
    )


QUESTIONS = [("What is OCPP?", "OCPP is a charging protocol."), ("What is CCS?", "CCS is a plug."),
             ("What is Level 2?", "240 V charging."), ("What is a charging network?", "A set of chargers.")]


def small_config(**kwargs: object) -> EvaluationConfig:
    return EvaluationConfig(**{"max_new_tokens": 6, "latency_samples": 1, "general_qa": None, "bootstrap_samples": 100,
                               "precision": "fp32"} | kwargs)


@pytest.mark.slow
def test_production_is_scored_as_it_is_served(base_model_dir: str, sample_chunks, tmp_path: Path) -> None:
    """Production was logged with another system prompt, top_k and index than the current
    config's. Evaluation asks it with its own, exactly as the server does (the server's
    loader, prompt and engine), while the candidate and the base get the current ones."""
    import mlflow

    from qaforge.mlflow_model import log_qa_model
    from qaforge.retrieval import Retriever

    index = Retriever.build(sample_chunks)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run(experiment_id=mlflow.create_experiment("production")):
            logged = log_qa_model(base_model_dir, "You were trained long ago.", index, top_k=1)
        version = mlflow.register_model(logged, "qa-prod").version
        uri = f"models:/qa-prod/{version}"
        served = logged_answering(uri)
        assert (served.system_prompt, served.top_k, len(served.retriever)) == ("You were trained long ago.", 1,
                                                                               len(index))
        questions = [QAPair(question=q, answer=a, chunk_id=f"c{i}", doc_id=f"d{i}", source=f"s{i}", kind="fact",
                            grounding=1.0) for i, (q, a) in enumerate(QUESTIONS)]
        chosen, gated, baseline = systems(
            ModelRef(base_model_dir), ModelRef(base_model_dir, identity=base_model_dir),
            System(ModelRef(uri, identity=logged), served), closed=Answering("Answer in one word."),
            retrieving=Answering("Answer in one word.", index, 2), serve_retrieval=False, compare_modes=False)
        conversation = as_asked(questions[:1], chosen[ModelLabel.PRODUCTION].answering)[0]
        assert conversation[0] == {"role": "system", "content": "You were trained long ago."}
        assert conversation[1]["content"].endswith("Question: What is OCPP?") and "[2]" not in conversation[1]["content"]
        report = evaluate(chosen, {"test": by_document("test", questions)}, small_config(), gated=gated,
                          baseline=baseline, cache=AnswerCache(tmp_path / "answers"))
        server_side = load_model(uri, small_config())
        for pair, row in zip(questions, report.sets["test"].rows):
            prompt, passages = server_side.prompt(messages_of(pair))
            assert len(passages) == 1
            assert row.answers["production"] == generate(server_side, [prompt], Sampling(6))[0].text
        assert report.sets["test"].gain("rougeL", "production") is not None
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_evaluation_of_a_logged_model_by_uri_with_the_cache(base_model_dir: str, tmp_path: Path) -> None:
    """The candidate exists only as an MLflow model (as the train step leaves it); the
    base has an identity (weights that never change), so its answers come from the
    cache the second time, and any change of settings asks again."""
    import mlflow

    from qaforge.mlflow_model import log_qa_model

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run(experiment_id=mlflow.create_experiment("eval-by-uri")):
            uri = log_qa_model(base_model_dir, "Be brief.")
        questions = [QAPair(question=q, answer=a, chunk_id=f"c{i}", doc_id=f"d{i % 2}", source=f"s{i % 2}",
                            kind="fact", grounding=1.0) for i, (q, a) in enumerate(QUESTIONS)]
        prompt = PromptConfig(system_prompt="Be brief.")
        chosen, gated, baseline = systems(ModelRef(uri), ModelRef(base_model_dir, identity=base_model_dir), None,
                                          Answering(prompt.system_prompt), Answering(prompt.system_prompt), False,
                                          False)
        sets = {"test": by_document("test", questions)}
        cache = AnswerCache(tmp_path / "answers")
        first = evaluate(chosen, sets, small_config(), gated=gated, baseline=baseline, cache=cache)
        rows = first.sets["test"].rows
        assert first.reused == [] and first.models["candidate"] == uri
        assert [r.answers["candidate"] for r in rows] == [r.answers["base"] for r in rows], "the same weights"
        assert {(c.b, c.resampled) for c in first.sets["test"].comparisons} == {("base", "questions"),
                                                                                ("base", "documents")}
        assert first.gate_set is None and "2 documents" in first.gate_note, "two documents decide nothing"
        assert first.speed["candidate"]["latency_p50_ms"] > 0 and first.seconds["test"]["base"] > 0
        again = evaluate(chosen, sets, small_config(), gated=gated, baseline=baseline, cache=cache)
        assert again.reused == ["base"], "a model without an identity is never cached"
        assert again.sets["test"].rows == rows and again.seconds["test"]["base"] == 0
        other = evaluate(chosen, sets, small_config().model_copy(update={"max_new_tokens": 7}), gated=gated,
                         baseline=baseline, cache=cache)
        assert other.reused == []
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_evaluation_answers_what_the_server_answers(base_model_dir: str, sample_chunks, sample_dataset,
                                                    tmp_path: Path) -> None:
    """The same questions, sent at once to a running server (which batches them as they
    come) and scored by evaluation: in fp32 every answer is the same text."""
    import asyncio

    import httpx
    import mlflow

    from qaforge.mlflow_model import log_qa_model
    from qaforge.retrieval import Retriever
    from serving.app import create_app
    from serving.settings import ServeSettings

    from helpers import running

    index = Retriever.build(sample_chunks)
    previous = mlflow.get_tracking_uri()
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    try:
        with mlflow.start_run(experiment_id=mlflow.create_experiment("same-answers")):
            logged = log_qa_model(base_model_dir, "Answer in one or two sentences.", index, top_k=2)
        version = mlflow.register_model(logged, "qa-same").version
        uri = f"models:/qa-same/{version}"
        questions = sample_dataset.test[:10]
        cfg = small_config(max_new_tokens=24, latency_samples=0)
        served = System(ModelRef(uri, identity=logged), logged_answering(uri))
        chosen, gated, baseline = systems(ModelRef(base_model_dir), ModelRef(base_model_dir), served,
                                          Answering(None), Answering(None), False, False)
        report = evaluate(chosen, {"test": by_document("test", questions)}, cfg, gated=gated, baseline=baseline)
        settings = ServeSettings(model_uri=uri, tracking_uri=tracking, tokens_env="QAFORGE_TEST_SAME",
                                 precision="fp32", reload_seconds=0, max_batch_size=4)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("QAFORGE_TEST_SAME", "same-key")
            with running(create_app(settings), settings) as url:
                async def ask_all() -> list[str]:
                    async with httpx.AsyncClient(timeout=300) as client:
                        replies = await asyncio.gather(*(client.post(
                            f"{url}/v1/chat/completions", headers={"Authorization": "Bearer same-key"},
                            json={"messages": messages_of(pair), "max_tokens": 24, "temperature": 0})
                            for pair in questions))
                    return [r.json()["choices"][0]["message"]["content"] for r in replies]

                answers = asyncio.run(ask_all())
    finally:
        mlflow.set_tracking_uri(previous)
    assert answers == [row.answers["production"] for row in report.sets["test"].rows]


def test_the_gate_and_the_registry_checks_import_nothing_heavy() -> None:
    """`qaforge sources-changed`, `info` and `rollback` load the registry helpers and the
    change check: none of torch, transformers, docling or ZenML may come with them (they
    cost seconds of start-up); the gate itself needs no MLflow either."""
    heavy = ("torch", "transformers", "docling", "zenml", "datasketch")
    code = ("import sys; import qaforge.promotion; light = [m for m in ('mlflow', *HEAVY) if m in sys.modules]; "
            "import qaforge.cli, qaforge.registry, qaforge.ingest, qaforge.basemodel; "
            "print(light, [m for m in HEAVY if m in sys.modules])").replace("HEAVY", repr(heavy))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []", out
