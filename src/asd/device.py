"""Device and precision choice, shared by training and embedding.

A GPU job must never fall back to the CPU silently (hours of training on a GPU node's CPU), and
``precision: auto`` must never pick a bf16 that the hardware only emulates.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from asd.errors import AsdError

NO_CUDA_FIX = ("run the job on a node with a GPU (the rule requests gpu=1: check the GPU partition in your "
               "profile), install a torch build that matches the node's CUDA driver (README: 'A torch build for "
               "your CUDA driver'), or set train.device: cpu to run on the CPU on purpose")


def resolve_device(name: str = "cuda") -> torch.device:
    """``cuda[:N]`` (refused with the fix when no usable CUDA device exists) or ``cpu``."""
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        built = f"this torch {torch.__version__} is built for CUDA {torch.version.cuda}" if torch.version.cuda \
            else f"this torch {torch.__version__} is a CPU-only build"
        raise AsdError(f"train.device is '{name}' but no usable CUDA GPU is visible ({built}; "
                       f"torch.cuda.is_available() is False); {NO_CUDA_FIX}.")
    return torch.device(name)


def _cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run natively; without them oneDNN only emulates bf16 (slower than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': bf16 autocast where the hardware has native bf16 (Ampere+ GPUs, CPUs with AVX512-BF16/AMX);
    fp16 autocast (with a gradient scaler in training) on older GPUs; fp32 on other CPUs."""
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise AsdError("train.precision is 'fp16', which is for CUDA GPUs only; use auto, bf16 or fp32 on the CPU.")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    return "bf16" if _cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision in ("bf16", "fp16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()
