"""`qaforge doctor`: what this machine is, what each stage will run on, and every
choice that will be slow or fail, before a run spends an hour finding out."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from qaforge.config import ComputeOptions, QAForgeConfig
from qaforge.hardware import HardwareError, Machine, Quantization, decide, decide_training, warnings

# The default run's full fine-tuning keeps two checkpoints with optimizer state (~3.6 GB)
# until it finishes.
MIN_FREE_GB = 5.0


@dataclass
class Checkup:
    facts: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def render(self) -> str:
        width = max(len(name) for name, _ in self.facts)
        lines = [f"{name + ':':<{width + 1}} {value}" for name, value in self.facts]
        lines += [f"WARNING: {w}" for w in self.warnings] or ["No warnings."]
        return "\n".join(lines)


def free_gb(path: Path) -> float:
    """Free disk space where `path` is (or would be created)."""
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / 1e9


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check(cfg: QAForgeConfig, machine: Machine | None = None) -> Checkup:
    machine = machine or Machine.detect()
    up = Checkup()
    up.facts += [
        ("CPU", f"{cpu_name()}, {machine.cores} cores"),
        ("CPU capability", machine.cpu_capability),
        ("native bf16 on CPU", "yes" if machine.native_cpu_bf16 else "no"),
        ("GPU", machine.gpu or "none (torch sees no CUDA device)"),
        ("torch threads", f"{machine.threads} of {machine.cores} cores"),
    ]
    stages: list[tuple[str, ComputeOptions]] = [
        ("training", cfg.training), ("evaluation", cfg.evaluation), ("serving", cfg.serving),
    ]
    for stage, options in stages:
        quantization = getattr(options, "quantization", Quantization.NONE)
        try:
            choose = decide_training if stage == "training" else decide
            compute = choose(machine, options.device, options.precision)
        except HardwareError as exc:
            up.facts.append((stage, "cannot run"))
            up.warnings.append(f"{stage}: {exc}")
            continue
        weights = f", {quantization.value} weights" if quantization is not Quantization.NONE else ""
        up.facts.append((stage, f"{compute}{weights}"))
        up.warnings += [f"{stage}: {w}" for w in warnings(machine, compute, quantization)]
    if machine.threads < machine.cores:
        up.warnings.append(
            f"torch uses {machine.threads} of {machine.cores} cores: is OMP_NUM_THREADS set lower?"
        )
    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false"):
        up.warnings.append("TOKENIZERS_PARALLELISM is off: tokenizing uses one core")
    output = cfg.training.output_dir
    free = free_gb(output)
    up.facts.append(("free disk for checkpoints", f"{free:.1f} GB at {output.resolve()}"))
    if free < MIN_FREE_GB:
        up.warnings.append(f"only {free:.1f} GB free at {output}: training checkpoints may fill the disk")
    up.facts += stack_facts(up.warnings)
    return up


def stack_facts(found: list[str]) -> list[tuple[str, str]]:
    """The active ZenML stack and its MLflow URI (absent on a serving-only install)."""
    try:
        from zenml.client import Client
    except ImportError:
        return [("ZenML", "not installed (serving-only install; `pip install '.[pipeline]'` to run pipelines)")]
    from qaforge.tracking import StackError, tracking_uri

    uri = None
    try:
        uri = tracking_uri()  # first: it activates the qaforge stack if the checkout lost it
    except StackError as exc:
        found.append(str(exc))
    facts = [("ZenML stack", Client().active_stack_model.name)]
    return facts + [("MLflow tracking URI", uri)] if uri else facts
