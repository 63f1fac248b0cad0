"""The benchmarks' pure helpers (bench/common.py): the matmul peak, fractions of it, skipped bf16 rows."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import common  # noqa: E402
from asd import device as devices  # noqa: E402


def test_the_peak_is_the_best_shape_and_beating_it_is_flagged_not_reported():
    workloads = {f"peak fp32 {shape}": common.PeakWorkload(lambda: None, 2e9, "fp32", shape) for shape in ("1024", "2048")}
    timings = {"peak fp32 1024": {"best_s": 0.02}, "peak fp32 2048": {"best_s": 0.01}}  # 100 and 200 GFLOP/s
    peak = common.matmul_peaks(timings, workloads)["fp32"]
    assert (peak["shape"], peak["gflops"]) == ("2048", 200.0) and peak["by_shape"]["1024"] == 100.0

    within = common.fraction_of_peak(150.0, peak)
    assert within == {"fraction_of_peak": 0.75, "peak_underestimated": False}
    assert common.peak_target("forward", within, 0.6)["met"] is True
    beyond = common.fraction_of_peak(250.0, peak)
    assert beyond["peak_underestimated"] and common.percent_of_peak(beyond) == "peak underestimated"
    row = common.peak_target("forward", beyond, 0.6)
    assert row["met"] is None and row["no_verdict"] == common.PEAK_UNDERESTIMATED


def test_bf16_is_benchmarked_only_where_asd_device_calls_it_native(monkeypatch):
    for native, dtypes in ((True, (torch.float32, torch.bfloat16)), (False, (torch.float32,))):
        monkeypatch.setattr(devices, "_cpu_has_native_bf16", lambda: native)
        assert common.cpu_has_native_bf16() is native and common.benchmark_dtypes() == dtypes
    skipped = common.target("bf16 step", None, 30, unit="%", no_verdict=common.NO_NATIVE_BF16)
    assert skipped == {"what": "bf16 step", "measured": "—", "target": "≥ 30 %", "met": None,
                       "no_verdict": common.NO_NATIVE_BF16}
