"""Where models run and in what precision: one decision, from the machine, for
training, evaluation and serving.

bf16 pays only where the hardware does it natively: a CUDA GPU that supports it, or
a CPU with AVX512_BF16 or AMX. On the many CPUs with AVX2 and no more (most laptops,
many cloud VMs) a bf16 matmul takes a slow path, measured at 1-2 GFLOP/s against
80-90 in fp32, so a bf16 default there makes training 20 times slower.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Precision(StrEnum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class Quantization(StrEnum):
    """Weights loaded quantized with bitsandbytes, for models too big for the device."""

    NONE = "none"
    INT8 = "8bit"
    NF4 = "4bit"


class HardwareError(ValueError):
    """A device or precision this machine cannot run."""


@dataclass(frozen=True)
class Machine:
    """What torch sees of this machine."""

    cpu_capability: str  # torch's ATen kernel level: DEFAULT, AVX2, AVX512, ...
    cpu_bf16_instructions: bool  # AVX512_BF16 or AMX in the CPU
    gpu: str | None  # name of CUDA device 0
    gpu_bf16: bool
    threads: int
    cores: int

    @classmethod
    def detect(cls) -> Machine:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        return cls(
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            cpu_bf16_instructions=torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported(),
            gpu=gpu,
            gpu_bf16=bool(gpu) and torch.cuda.is_bf16_supported(),
            threads=torch.get_num_threads(),
            cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        )

    @property
    def native_cpu_bf16(self) -> bool:
        # ATen must run its AVX-512 kernels too: on such a CPU ATEN_CPU_CAPABILITY=avx2
        # makes bf16 as slow as on an AVX2-only one.
        return self.cpu_bf16_instructions and self.cpu_capability.startswith("AVX512")


@dataclass(frozen=True)
class Compute:
    """A concrete choice: never `auto`."""

    device: Device
    precision: Precision
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}[
            self.precision
        ]

    def __str__(self) -> str:
        return f"{self.device.value}/{self.precision.value} ({self.reason})"


def decide(machine: Machine, device: Device = Device.AUTO, precision: Precision = Precision.AUTO) -> Compute:
    """`auto` device: CUDA when there is one. `auto` precision: bf16 where it is native,
    fp16 on a GPU without bf16, fp32 on any other CPU. An explicit choice is kept (see
    `warnings` for the slow ones), except a GPU that is not there."""
    device, precision = Device(device), Precision(precision)
    if device is Device.CUDA and not machine.gpu:
        raise HardwareError("device 'cuda' was asked for, but torch sees no CUDA GPU (use 'auto' or 'cpu')")
    if device is Device.AUTO:
        device = Device.CUDA if machine.gpu else Device.CPU
    if precision is not Precision.AUTO:
        return Compute(device, precision, "as configured")
    if device is Device.CUDA:
        if machine.gpu_bf16:
            return Compute(device, Precision.BF16, f"{machine.gpu} supports bf16")
        return Compute(device, Precision.FP16, f"{machine.gpu} has no bf16")
    if machine.native_cpu_bf16:
        return Compute(device, Precision.BF16, f"CPU has native bf16 ({machine.cpu_capability} with AVX512_BF16/AMX)")
    return Compute(device, Precision.FP32, f"CPU has no native bf16 (capability {machine.cpu_capability})")


def decide_training(machine: Machine, device: Device = Device.AUTO, precision: Precision = Precision.AUTO) -> Compute:
    """`decide`, less what cannot train: fp16 mixed precision needs a GPU."""
    compute = decide(machine, device, precision)
    if compute.device is Device.CPU and compute.precision is Precision.FP16:
        raise HardwareError("precision 'fp16' trains only on a CUDA GPU; on a CPU use auto, fp32 or bf16")
    return compute


def warnings(machine: Machine, compute: Compute, quantization: Quantization = Quantization.NONE) -> list[str]:
    """Choices that will run but slowly, or that are likely to fail."""
    found = []
    if compute.device is Device.CPU:
        if compute.precision is Precision.BF16 and not machine.native_cpu_bf16:
            found.append(
                f"bf16 on a CPU without native bf16 (capability {machine.cpu_capability}) is about 20-70x "
                "slower than fp32: use precision auto or fp32"
            )
        if compute.precision is Precision.FP16:
            found.append("fp16 on a CPU has no fast kernels: use precision auto or fp32")
        if quantization is not Quantization.NONE:
            found.append(f"{quantization.value} weights on a CPU save memory but run slower than unquantized ones")
    if compute.device is Device.CUDA and compute.precision is Precision.BF16 and not machine.gpu_bf16:
        found.append(f"{machine.gpu} has no bf16: use precision auto or fp16")
    return found


def quantization_config(quantization: Quantization, compute: Compute) -> Any:
    """The bitsandbytes loading config for `quantization` (None for unquantized)."""
    if quantization is Quantization.NONE:
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise HardwareError(
            f"quantization '{quantization.value}' needs bitsandbytes: pip install bitsandbytes"
        ) from None
    if quantization is Quantization.INT8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute.dtype,
    )
