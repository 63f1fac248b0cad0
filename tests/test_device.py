"""Device and precision choice: no silent CPU fallback, no emulated bf16."""

from __future__ import annotations

import pytest
import torch

from asd import device as devices
from asd.errors import AsdError


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda_names_the_fix():
    with pytest.raises(AsdError) as error:
        devices.resolve_device("cuda")
    message = str(error.value)
    assert message.startswith("train.device is 'cuda' but no usable CUDA GPU is visible (this torch ")
    assert "torch.cuda.is_available() is False" in message and "set train.device: cpu" in message
    assert devices.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cpu_never_picks_emulated_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(devices, "_cpu_has_native_bf16", lambda: native)
    assert devices.resolve_precision("auto", torch.device("cpu")) == expected
    assert devices.resolve_precision("fp32", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("capability, expected", [((7, 0), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_on_gpus_by_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert devices.resolve_precision("auto", torch.device("cuda")) == expected


def test_fp16_is_for_gpus_only():
    with pytest.raises(AsdError, match="train.precision is 'fp16', which is for CUDA GPUs only"):
        devices.resolve_precision("fp16", torch.device("cpu"))

