from pathlib import Path

import pytest
import yaml

from qaforge.config import ConfigError, QAForgeConfig, load_config, validate_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["default.yaml", "smoke.yaml", "teacher.yaml", "faq.yaml"])
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
        validate_config(_raw(training={"eval_steps": 10, "save_steps": 15}))
    assert "parameters.config.training: Value error, save_steps (15) must be a multiple of eval_steps (10)" in str(
        err.value
    )
