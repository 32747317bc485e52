import re
import shutil
from pathlib import Path

import pytest
import yaml

from qaforge.config import ConfigError, QAForgeConfig, load_config, validate_config

from helpers import REPO, run_cli


@pytest.mark.parametrize("name", ["default.yaml", "smoke.yaml", "teacher.yaml", "faq.yaml", "manual.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert isinstance(cfg, QAForgeConfig)
    assert (REPO / cfg.sources.web[0].serve_dir / "index.html").exists(), "a served folder inside the repository"


def _raw(**overrides: dict) -> dict:
    raw = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["parameters"]["config"]
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return raw


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"parameters\.config\.training\.lerning_rate: Extra inputs"):
        validate_config(_raw(training={"lerning_rate": 0.1}))


def test_bad_value_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(_raw(training={"method": "adapter", "max_steps": 0}))
    message = str(info.value)
    assert "parameters.config.training.method" in message
    assert "parameters.config.training.max_steps" in message


def test_split_must_sum_to_one() -> None:
    with pytest.raises(ConfigError, match="synthesis.split"):
        validate_config(_raw(synthesis={"split": {"train": 0.5, "val": 0.1, "test": 0.2}}))


def test_web_start_must_be_url_without_serve_dir() -> None:
    with pytest.raises(ConfigError, match=r"sources\.web\.0"):
        validate_config({"sources": {"web": [{"start": "index.html"}]}})


def test_browser_mode_needs_a_browser() -> None:
    """Without either, the crawl launched a program called "None" and failed per page."""
    with pytest.raises(ConfigError, match=r"sources\.web\.0.*needs cdp_url .* or chromium_path"):
        validate_config({"sources": {"web": [{"start": "http://127.0.0.1/", "browser": True}]}})


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("parameters:\n  config:\n    sources: {files: [x]}\n    modle: {}\n")
    with pytest.raises(ConfigError, match=rf"{path}: parameters\.config\.modle"):
        load_config(path)
    path.write_text("enable_cache: true\n")
    with pytest.raises(ConfigError, match="missing parameters.config"):
        load_config(path)


def test_pipeline_rejects_bad_config_before_any_step_runs() -> None:
    from pipelines.domain_qa import domain_qa_pipeline

    with pytest.raises(ConfigError, match=r"training\.lerning_rate"):
        domain_qa_pipeline.prepare(config=_raw(training={"lerning_rate": 0.1}))


def test_early_stopping_needs_checkpoints_at_evaluations() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(_raw(training={"eval_steps": 10, "save_steps": 15, "early_stopping_patience": 3}))
    assert "parameters.config.training: Value error, save_steps (15) must be a multiple of eval_steps (10)" in str(
        err.value
    )


def test_trainable_layers_belong_to_full_fine_tuning() -> None:
    with pytest.raises(ConfigError, match=r"training: Value error, trainable_layers chooses the layers full "
                                          r"fine-tuning trains; method lora trains LoRA adapters"):
        validate_config(_raw(training={"method": "lora", "trainable_layers": 4}))


@pytest.mark.parametrize("judge", [None, {"base_url": "http://127.0.0.1:9/v1", "model": "j", "modes": ["pairwise"]},
                                   {"base_url": "http://127.0.0.1:9/v1", "model": "j", "max_examples": 10}])
def test_gating_on_the_judge_needs_its_rubric_on_every_question(judge: dict | None) -> None:
    with pytest.raises(ConfigError, match=r"evaluation: Value error, primary_metric 'judge' gates on the LLM "
                                          r"judge's rubric score of every question"):
        validate_config(_raw(evaluation={"primary_metric": "judge", "judge": judge}))


@pytest.mark.parametrize(("overrides", "message"), [
    # Passages that do not fit the served prompt: nearly every request would get 400.
    ({"retrieval": {"serve": True, "top_k": 6}, "chunking": {"max_tokens": 512},
      "serving": {"max_prompt_tokens": 1024}, "training": {"max_length": 3264}},
     r"retrieval.top_k=6 passages of up to chunking.max_tokens=512 tokens into every served prompt, 3072 tokens "
     r"plus about 192 .* over serving.max_prompt_tokens=1024"),
    # A default answer length that the request limit refuses.
    ({"serving": {"max_new_tokens": 600, "max_tokens_limit": 512}},
     r"serving: Value error, max_new_tokens \(600\) is over max_tokens_limit \(512\)"),
    # A model trained on passages, served and gated without them.
    ({"training": {"context": {}, "max_length": 576}, "retrieval": {"serve": False}},
     r"training.context trains the model to answer from retrieved passages, but retrieval.serve is false"),
])
def test_budgets_that_contradict_each_other_are_refused_with_keys_and_numbers(overrides: dict, message: str,
                                                                              tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(_raw(**overrides))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"parameters": {"config": _raw(**overrides)}}))
    assert re.search(message, run_cli("qaforge", "check-config", "-c", str(path), cwd=REPO, ok=(2,)))


@pytest.mark.parametrize("name", ["test", "knowledge", "memorisation", "paraphrase"])
def test_a_gold_set_may_not_take_the_name_of_a_set_qaforge_makes(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"evaluation.gold.0.name: Value error, '{name}' is the name of one of "
                                          "qaforge's own question sets"):
        validate_config(_raw(evaluation={"gold": [{"name": name, "path": "gold.jsonl"}]}))


def test_gate_on_names_a_set_that_will_exist_for_the_generator() -> None:
    teacher = yaml.safe_load((REPO / "configs" / "teacher.yaml").read_text())["parameters"]["config"]
    teacher["evaluation"] = {"gate_on": "memorisation"}
    with pytest.raises(ConfigError, match="only the offline generator writes the rephrasings"):
        validate_config(teacher)
    with pytest.raises(ConfigError, match="'memorisation', which measures recall of trained answers"):
        validate_config(_raw(evaluation={"gate_on": "memorisation"}))
    with pytest.raises(ConfigError, match="synthesis.split.knowledge and evaluation.knowledge must both be above 0"):
        validate_config(_raw(evaluation={"gate_on": "knowledge", "knowledge": 0}))
    assert validate_config(_raw(evaluation={"gate_on": "knowledge"})).question_sets() == [
        "test", "knowledge", "memorisation", "follow-ups"]


def test_a_gold_set_that_cannot_be_read_stops_the_run_before_any_step(tmp_path: Path) -> None:
    from pipelines.domain_qa import domain_qa_pipeline

    missing = tmp_path / "missing.jsonl"
    with pytest.raises(ValueError, match=f"cannot read {missing}"):
        domain_qa_pipeline.prepare(config=_raw(evaluation={"gold": [{"name": "users", "path": str(missing)}]}))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"parameters": {"config": _raw(evaluation={"gold": [
        {"name": "users", "path": str(missing)}]})}}))
    assert f"cannot read {missing}" in run_cli("qaforge", "check-config", "-c", str(path), cwd=REPO, ok=(2,))


def test_the_config_digest_is_the_same_from_any_checkout_and_follows_what_it_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two checkouts of the project at different paths (a laptop and a CI runner) agree,
    so a scheduled run does not retrain for nothing; an edited gold set, replay or
    general-QA file, or other base weights under the same name, change it."""
    from qaforge.basemodel import base_identity
    from qaforge.config import ModelConfig, config_digest

    def digest(checkout: Path, base: str = "base", **edits: str) -> str:
        monkeypatch.chdir(checkout)
        run_config = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
        cfg = run_config["parameters"]["config"]
        cfg["training"]["replay"]["path"] = "replay.jsonl"
        cfg["evaluation"]["general_qa"] = "general.jsonl"
        for name, text in edits.items():
            (checkout / name).write_text(text)
        (checkout / "run.yaml").write_text(yaml.safe_dump(run_config))
        return config_digest(load_config("run.yaml"), base)

    checkouts = [tmp_path / "laptop", tmp_path / "runner" / "work" / "project"]
    for checkout in checkouts:
        shutil.copytree(REPO / "data" / "sample", checkout / "data" / "sample")
        shutil.copy(REPO / "qaforge" / "data" / "replay.jsonl", checkout / "replay.jsonl")
        shutil.copy(REPO / "qaforge" / "data" / "general_qa.jsonl", checkout / "general.jsonl")
    first = digest(checkouts[0])
    assert digest(checkouts[1]) == first, "the same project elsewhere"
    line = '{"question": "What is 2 + 2?", "answer": "4"}\n'
    gold = checkouts[1] / "data" / "sample" / "follow-ups.jsonl"
    for edit in ({"replay.jsonl": line}, {"general.jsonl": '{"question": "Q?", "answers": ["A"]}\n'},
                 {gold.relative_to(checkouts[1]).as_posix(): gold.read_text() + gold.read_text()}):
        assert digest(checkouts[0], **edit) != first, edit
    assert digest(checkouts[0], base="other weights") != digest(checkouts[0])

    # Base weights in a folder are known by their content, not their path.
    weights = tmp_path / "model"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"weights v1")
    before = base_identity(ModelConfig(name_or_path=str(weights), gguf_file=None))
    (weights / "model.safetensors").write_bytes(b"weights v2")
    assert base_identity(ModelConfig(name_or_path=str(weights), gguf_file=None)) != before
    assert base_identity(ModelConfig()).startswith("gguf sha256:"), "the shipped GGUF, by its content"
