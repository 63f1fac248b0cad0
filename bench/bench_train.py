"""Benchmark: one training step of asd.model.asd_model.ASDModel (LoRA on the iter3-size random-init backbone, 4 blocks).

The step is train.py's: forward under the configured precision, backward through the LoRA adapters,
AdamW step. It runs in bf16 autocast (what ``train.precision: auto`` picks on a CPU with AVX512-BF16
or AMX; skipped on a CPU that would only emulate bf16) and in float32, interleaved round by round with
the matmul peaks (bench_backbone's: several square sizes and the model's FFN shape). Work = model FLOPs of the forward
(bench_backbone.forward_flops) + the backward's matmul FLOPs as torch.utils.flop_counter counts them
(frozen weights get no weight gradient, so a step is ~2x, not 3x, the forward). The demo backbone's
step (batch 16, as config/demo.yaml trains it) is timed in the same rounds, in clips/s.

    .venv/bin/python bench/bench_train.py [--batch 8] [--rounds 5] [--out results/bench/train.json]
"""

from __future__ import annotations


import torch
from torch.utils.flop_counter import FlopCounterMode

from asd.model.beats import ITER3
from asd.device import autocast
from asd.model.asd_model import ASDModel, HeadConfig, build_backbone
from asd.model.train import optimisation_step
from bench_backbone import clip_frames, ffn_shape, forward_flops
from common import (NO_NATIVE_BF16, benchmark_dtypes, dtype_name, fraction_of_peak, interleaved, machine, matmul_peaks,
                    peak_target, peak_workloads, peaks_text, percent_of_peak, standalone, target)

NUM_LAYERS = 4
# A DCASE-like label map: 40 classes, 10 of them hidden-attribute classes with sub-centres.
SUBCENTERS = [HeadConfig().arcface_subcenters] * 10 + [1] * 30
BF16_TARGET = 0.30
FP32_TARGET = 0.40  # the step every CPU without native bf16 trains with
DEMO_BATCH = 16  # config/demo.yaml's
DEMO_FP32_TARGET = 30.0  # clips/s: the demo backbone's training step in float32 (the demo's train jobs)


class TrainStep:
    """train.py's inner step on a fixed random batch (data loading is benchmarked in bench_features)."""

    def __init__(self, *, batch: int, precision: str, size: str = "iter3") -> None:
        torch.manual_seed(0)
        backbone, _ = build_backbone({"checkpoint": None, "random_init_size": size, "num_layers": NUM_LAYERS})
        self.model = ASDModel(backbone, head=HeadConfig(), subcenters=SUBCENTERS).train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01, fused=True)  # as train.py
        generator = torch.Generator().manual_seed(1)
        self.fbank = torch.randn(batch, clip_frames(), 128, generator=generator)  # [B, F, 128]
        self.mask = torch.zeros(batch, clip_frames(), dtype=torch.bool)  # 10 s clips: nothing padded
        self.labels = torch.randint(len(SUBCENTERS), (batch,), generator=generator)
        self.precision, self.device = precision, torch.device("cpu")
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)  # fp32 / bf16: no loss scaling

    def forward(self) -> torch.Tensor:
        with autocast(self.device, self.precision):
            loss, _ = self.model(self.fbank, self.mask, self.labels)
        return loss

    def __call__(self) -> float:
        loss, _ = optimisation_step(self.model, self.optimizer, self.scaler, (self.fbank, self.mask, self.labels),
                                    device=self.device, precision=self.precision)
        return loss.item()

    def backward_flops(self) -> float:
        """Matmul FLOPs of one backward pass, counted."""
        with FlopCounterMode(display=False) as counter:
            loss = self.forward()
            forward_counted = counter.get_total_flops()
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return float(counter.get_total_flops() - forward_counted)


def run(*, batch: int = 8, rounds: int = 5) -> dict:
    dtypes = benchmark_dtypes()
    steps = {dtype_name(dtype): TrainStep(batch=batch, precision=dtype_name(dtype)) for dtype in dtypes}
    backward = steps["fp32"].backward_flops() / batch
    forward = forward_flops(ITER3, num_layers=NUM_LAYERS, frames=clip_frames())
    step_flops = forward + backward  # per clip
    peak_runs = peak_workloads(dtypes, shapes=(ffn_shape(ITER3, clips=batch),))
    demo_steps = {dtype_name(dtype): TrainStep(batch=DEMO_BATCH, precision=dtype_name(dtype), size="demo")
                  for dtype in dtypes}
    timings = interleaved({**{f"step {p}": s for p, s in steps.items()}, **{n: w.run for n, w in peak_runs.items()},
                           **{f"demo step {p}": s for p, s in demo_steps.items()}}, rounds=rounds)
    peaks = matmul_peaks(timings, peak_runs)
    results = {}
    for precision in steps:
        seconds = timings[f"step {precision}"]["best_s"]
        gflops = step_flops * batch / seconds / 1e9
        results[precision] = {"best_s": seconds, "median_s": timings[f"step {precision}"]["median_s"],
                              "clips_per_s": batch / seconds, "gflops": gflops, **fraction_of_peak(gflops, peaks[precision])}
    demo = {precision: {"best_s": timings[f"demo step {precision}"]["best_s"],
                        "clips_per_s": DEMO_BATCH / timings[f"demo step {precision}"]["best_s"],
                        "median_clips_per_s": DEMO_BATCH / timings[f"demo step {precision}"]["median_s"]}
            for precision in demo_steps}
    what = "training step (bf16 autocast) / bf16 matmul peak"
    return {
        "machine": machine(),
        "setup": {"batch": batch, "rounds": rounds, "num_layers": NUM_LAYERS, "head": HeadConfig().__dict__,
                  "classes": len(SUBCENTERS), "optimizer": "AdamW"},
        "gflops_per_clip": {"forward_model": forward / 1e9, "backward_counted": backward / 1e9, "step": step_flops / 1e9,
                            "step_if_3x_forward": 3 * forward / 1e9},
        "matmul_peak": peaks,
        "step": results,
        "skipped": {} if "bf16" in steps else {"bf16": NO_NATIVE_BF16},
        "demo_step": demo,
        "timings": timings,
        "targets": [peak_target("training step (fp32) / fp32 matmul peak", results["fp32"], FP32_TARGET),
                    target(f"demo backbone training step (fp32, batch {DEMO_BATCH}, 10 s clips)",
                           demo["fp32"]["clips_per_s"], DEMO_FP32_TARGET, unit="clips/s"),
                    peak_target(what, results["bf16"], BF16_TARGET) if "bf16" in results else
                    target(what, None, BF16_TARGET * 100, unit="%", no_verdict=NO_NATIVE_BF16)],
    }


def markdown(result: dict) -> str:
    setup, flops = result["setup"], result["gflops_per_clip"]
    lines = [
        f"### Training step (ASDModel, LoRA r={setup['head']['lora_rank']} on blocks {setup['head']['lora_blocks']}, "
        f"iter3 random init, {setup['num_layers']} blocks, batch {setup['batch']}, AdamW)",
        "",
        f"FLOPs per clip: forward {flops['forward_model']:.1f} G (model FLOPs) + backward {flops['backward_counted']:.1f} G "
        f"(counted) = {flops['step']:.1f} G (the 3x-forward rule would say {flops['step_if_3x_forward']:.1f} G). "
        f"Matmul peak in the same run, the best dense matmul: {peaks_text(result['matmul_peak'])}.",
        "",
        "| precision | best s / step | clips/s | GFLOP/s | % of peak (same dtype) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for precision, row in result["step"].items():
        lines.append(f"| {precision} | {row['best_s']:.3f} | {row['clips_per_s']:.2f} | {row['gflops']:.0f} | {percent_of_peak(row)} |")
    lines += [f"| {precision} | {reason} | | | |" for precision, reason in result["skipped"].items()]
    lines += ["", f"Demo backbone (asd.model.beats.DEMO: 96 wide, 4 heads, 4 blocks, LoRA r={setup['head']['lora_rank']}), "
              f"batch {DEMO_BATCH}, 10 s clips: " + ", ".join(
                  f"{precision} {row['clips_per_s']:.1f} clips/s (median {row['median_clips_per_s']:.1f})"
                  for precision, row in result["demo_step"].items()) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    standalone(name="train", doc=__doc__, run=run, markdown=markdown, options={"batch": 8, "rounds": 5})
