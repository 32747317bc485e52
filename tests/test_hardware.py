"""The one decision of device and precision, from machine facts; and `qaforge doctor`."""

from __future__ import annotations

import pytest

from qaforge.hardware import (
    Device,
    HardwareError,
    Machine,
    Precision,
    Quantization,
    decide,
    decide_training,
    warnings,
)


def machine(capability: str = "AVX2", bf16_instructions: bool = False, gpu: str | None = None,
            gpu_bf16: bool = False, threads: int = 2, cores: int = 2) -> Machine:
    return Machine(capability, bf16_instructions, gpu, gpu_bf16, threads, cores)


@pytest.mark.parametrize(
    ("facts", "device", "precision"),
    [
        # AVX2-only laptops and cloud VMs: bf16 would take the slow path.
        (machine("AVX2"), Device.CPU, Precision.FP32),
        (machine("DEFAULT"), Device.CPU, Precision.FP32),
        # AVX-512 without the bf16 extension (Skylake-SP, Zen 4 without it enabled).
        (machine("AVX512", bf16_instructions=False), Device.CPU, Precision.FP32),
        # AVX512_BF16 or AMX: native.
        (machine("AVX512", bf16_instructions=True), Device.CPU, Precision.BF16),
        # The instructions exist but ATen was told to use its AVX2 kernels.
        (machine("AVX2", bf16_instructions=True), Device.CPU, Precision.FP32),
        # GPUs: bf16 where supported (Ampere and newer), else fp16 (T4, V100).
        (machine("AVX2", gpu="NVIDIA A100", gpu_bf16=True), Device.CUDA, Precision.BF16),
        (machine("AVX512", True, gpu="Tesla T4", gpu_bf16=False), Device.CUDA, Precision.FP16),
    ],
)
def test_auto_picks_bf16_only_where_native(facts: Machine, device: Device, precision: Precision) -> None:
    compute = decide(facts)
    assert (compute.device, compute.precision) == (device, precision)
    assert compute.reason


def test_explicit_choices_are_kept_and_slow_ones_warned() -> None:
    avx2 = machine("AVX2")
    forced = decide(avx2, Device.CPU, Precision.BF16)
    assert forced.precision is Precision.BF16
    assert any("slower than fp32" in w for w in warnings(avx2, forced))
    assert not warnings(avx2, decide(avx2))
    # On a GPU machine the CPU can still be asked for; auto precision then follows the CPU.
    gpu_box = machine("AVX2", gpu="Tesla T4")
    assert decide(gpu_box, Device.CPU).precision is Precision.FP32
    assert any("fp16 on a CPU" in w for w in warnings(avx2, decide(avx2, precision=Precision.FP16)))
    assert any("4bit" in w for w in warnings(avx2, decide(avx2), Quantization.NF4))


def test_a_missing_gpu_is_an_error_that_says_so() -> None:
    with pytest.raises(HardwareError, match="torch sees no CUDA GPU"):
        decide(machine(), Device.CUDA)
    with pytest.raises(HardwareError, match="fp16' trains only on a CUDA GPU"):
        decide_training(machine(), precision=Precision.FP16)
    assert decide_training(machine("AVX2", gpu="Tesla T4")).precision is Precision.FP16


def test_the_config_takes_the_same_enums_and_names_a_bad_value() -> None:
    from qaforge.config import ConfigError, validate_config

    cfg = validate_config({
        "sources": {"files": ["x"]},
        "training": {"precision": "fp32"},
        "evaluation": {"device": "cpu", "quantization": "4bit"},
    })
    assert cfg.training.precision is Precision.FP32 and cfg.evaluation.quantization is Quantization.NF4
    assert cfg.serving.precision is Precision.AUTO
    with pytest.raises(ConfigError, match=r"parameters\.config\.training\.precision: Input should be 'auto', "):
        validate_config({"sources": {"files": ["x"]}, "training": {"precision": "float8"}})


def test_this_machine_is_detected_consistently() -> None:
    import torch

    here = Machine.detect()
    assert here.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert here.threads == torch.get_num_threads() and here.cores >= 1
    assert decide(here).device is (Device.CUDA if torch.cuda.is_available() else Device.CPU)


@pytest.mark.parametrize(("precision", "quantization"), [("fp32", "none"), ("bf16", "none"), ("auto", "4bit")])
def test_inference_loads_and_answers_as_asked(base_model_dir, precision, quantization) -> None:
    import torch

    from qaforge.config import InferenceOptions
    from qaforge.modeling import generate_answers, load_for_inference

    options = InferenceOptions(precision=precision, quantization=quantization)
    model, tokenizer = load_for_inference(base_model_dir, options)
    expected = decide(Machine.detect(), options.device, options.precision)
    assert model.device.type == expected.device.value
    if quantization == "4bit":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    else:
        assert model.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    answer = generate_answers(model, tokenizer, [[{"role": "user", "content": "What is the capital of France?"}]], 12)
    assert "Paris" in answer.answers[0]


@pytest.mark.slow
def test_the_registered_model_and_the_server_take_the_same_options(base_model_dir, tmp_path, monkeypatch) -> None:
    """A logged model loads in the precision its loader asks for (how evaluation and the
    server override it); the server reads those options from QAFORGE_* variables."""
    import mlflow
    import torch

    from qaforge.config import InferenceOptions
    from qaforge.mlflow_model import QAModel, inference_options
    from serving.settings import ServeSettings

    path = tmp_path / "model"
    mlflow.pyfunc.save_model(
        path, python_model=QAModel(), artifacts={"model_dir": base_model_dir},
        model_config={"system_prompt": None} | inference_options(InferenceOptions()),
    )
    monkeypatch.setenv("QAFORGE_PRECISION", "bf16")
    monkeypatch.setenv("QAFORGE_DEVICE", "cpu")
    settings = ServeSettings(model_uri=str(path))
    assert (settings.precision, settings.device) == (Precision.BF16, Device.CPU)
    loaded = mlflow.pyfunc.load_model(str(path), model_config=inference_options(settings)).unwrap_python_model()
    assert loaded.model.dtype == torch.bfloat16
    default = mlflow.pyfunc.load_model(str(path)).unwrap_python_model()
    assert default.model.dtype == decide(Machine.detect()).dtype


def test_doctor_names_each_stage_and_warns_about_slow_choices(tmp_path) -> None:
    from qaforge.config import validate_config
    from qaforge.doctor import check

    cfg = validate_config({
        "sources": {"files": ["x"]},
        "training": {"precision": "bf16", "output_dir": str(tmp_path / "train")},
        "serving": {"device": "cuda"},
    })
    up = check(cfg, machine("AVX2", threads=1))
    facts = dict(up.facts)
    assert facts["CPU capability"] == "AVX2" and facts["native bf16 on CPU"] == "no"
    assert facts["training"].startswith("cpu/bf16") and facts["evaluation"].startswith("cpu/fp32")
    assert facts["serving"] == "cannot run"
    assert facts["torch threads"] == "1 of 2 cores"
    text = up.render()
    assert "WARNING: training: bf16 on a CPU without native bf16" in text
    assert "WARNING: serving: device 'cuda' was asked for" in text
    assert "WARNING: torch uses 1 of 2 cores" in text
    fp16 = validate_config({"sources": {"files": ["x"]}, "training": {"precision": "fp16"}})
    assert dict(check(fp16, machine("AVX2")).facts)["training"] == "cannot run", "as training itself refuses"
    assert f"GB at {tmp_path / 'train'}" in facts["free disk for checkpoints"]


def test_doctor_command_runs_on_this_machine() -> None:
    from click.testing import CliRunner

    from qaforge.cli import main

    from helpers import REPO

    result = CliRunner().invoke(main, ["doctor", "-c", str(REPO / "configs" / "default.yaml")])
    assert result.exit_code == 0, result.output
    here = decide(Machine.detect())
    assert f"training:                  {here.device.value}/{here.precision.value}" in result.output
    assert "ZenML stack:" in result.output
