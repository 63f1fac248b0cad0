"""Benchmark: BEATs backbone forward at iter3 size (random init) on 10 s clips, against the matmul peak.

Variants, interleaved round by round with dense matmuls in the same dtypes (the peak: the best of
several square sizes and the model's own FFN shape): float32; bf16 autocast; a bf16-cast model
(inference); each truncated to 4 blocks, plus the full 12 blocks in float32 and bf16 for the
truncation speed-up. The bf16 variants are skipped on a CPU without native bf16 (asd.device's
check): emulated bf16 is slower than fp32 and nothing ``precision: auto`` would run. Work is counted in model FLOPs
(``forward_flops``: the dense maths of the architecture, position conv as a direct convolution,
~36 GFLOP per clip at 4 blocks), so achieved FLOP/s = model FLOPs / time.

    .venv/bin/python bench/bench_backbone.py [--batch 4] [--rounds 6] [--out results/bench/backbone.json]
"""

from __future__ import annotations

import copy

import torch

from asd.model.beats import ITER3, SAMPLE_RATE, BEATsConfig, load_beats
from asd.data.features import num_frames
from common import (NO_NATIVE_BF16, benchmark_dtypes, fraction_of_peak, interleaved, machine, matmul_peaks, peak_target,
                    peak_workloads, peaks_text, percent_of_peak, standalone, target)

CLIP_SECONDS = 10.0
TRUNCATED, FULL = 4, 12
FP32_TARGET, BF16_TARGET, TRUNCATION_TARGET = 0.60, 0.40, 2.5
BF16_VARIANTS = ("bf16 autocast 4 blocks", "bf16 model 4 blocks", "bf16 model 12 blocks")


def clip_tokens(config: BEATsConfig, *, frames: int) -> int:
    """Patch tokens of one clip of ``frames`` fbank frames (128 mel bins)."""
    return (frames // config.input_patch_size) * (128 // config.input_patch_size)


def ffn_shape(config: BEATsConfig, *, clips: int) -> tuple[int, int, int]:
    """(M, K, N) of the fc1 matmul of a batch of 10 s ``clips``: a peak workload shaped like the model's own."""
    return clips * clip_tokens(config, frames=clip_frames()), config.encoder_embed_dim, config.encoder_ffn_embed_dim


def forward_flops(config: BEATsConfig, *, num_layers: int, frames: int) -> float:
    """Model FLOPs (multiply-add = 2) of one clip's forward; element-wise work is not counted."""
    patch = config.input_patch_size
    tokens = clip_tokens(config, frames=frames)
    width, ffn, embed = config.encoder_embed_dim, config.encoder_ffn_embed_dim, config.embed_dim
    front = tokens * embed * patch * patch * 2  # patch embedding conv
    front += tokens * embed * width * 2 if embed != width else 0  # post_extract_proj
    front += tokens * width * (width // config.conv_pos_groups) * config.conv_pos * 2  # position conv, direct
    head_dim = width // config.encoder_attention_heads
    block = 4 * tokens * width * width * 2  # q, k, v, out projections
    block += 2 * tokens * width * ffn * 2  # fc1, fc2
    block += 2 * tokens * tokens * width * 2  # q·kᵀ and probs·v over all heads
    block += tokens * config.encoder_attention_heads * head_dim * 8 * 2  # gate logits (8 per head and token)
    return float(front + num_layers * block)


def clip_frames() -> int:
    return num_frames(int(CLIP_SECONDS * SAMPLE_RATE), SAMPLE_RATE)


def _deviation(output: torch.Tensor, reference: torch.Tensor) -> dict:
    """How far a bf16 output is from the float32 one: max/mean |diff| and the worst per-token cosine."""
    output, difference = output.float(), (output.float() - reference).abs()
    cosine = torch.nn.functional.cosine_similarity(output, reference, dim=-1)
    return {"max_abs": difference.max().item(), "mean_abs": difference.mean().item(),
            "reference_mean_abs": reference.abs().mean().item(), "min_token_cosine": cosine.min().item()}


def run(*, batch: int = 4, rounds: int = 6) -> dict:
    torch.manual_seed(0)
    dtypes = benchmark_dtypes()
    truncated = load_beats(None, num_layers=TRUNCATED)
    full = load_beats(None, num_layers=FULL)
    fbank = torch.randn(batch, clip_frames(), 128, generator=torch.Generator().manual_seed(1))  # [B, F, 128]
    variants = {"fp32 4 blocks": lambda: truncated(fbank)[0], "fp32 12 blocks": lambda: full(fbank)[0]}
    if torch.bfloat16 in dtypes:
        truncated_bf16, full_bf16 = copy.deepcopy(truncated).to(torch.bfloat16), copy.deepcopy(full).to(torch.bfloat16)
        fbank_bf16 = fbank.bfloat16()

        def autocast_forward():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return truncated(fbank)[0]

        variants |= {"bf16 autocast 4 blocks": autocast_forward,
                     "bf16 model 4 blocks": lambda: truncated_bf16(fbank_bf16)[0],
                     "bf16 model 12 blocks": lambda: full_bf16(fbank_bf16)[0]}
    skipped = {name: NO_NATIVE_BF16 for name in BF16_VARIANTS if name not in variants}
    peak_runs = peak_workloads(dtypes, shapes=(ffn_shape(ITER3, clips=batch),))
    forward_names = list(variants)
    variants.update({name: workload.run for name, workload in peak_runs.items()})
    with torch.inference_mode():
        timings = interleaved(variants, rounds=rounds)
        reference = variants["fp32 4 blocks"]()
        deviations = {name: _deviation(variants[name](), reference)
                      for name in ("bf16 autocast 4 blocks", "bf16 model 4 blocks") if name in variants}

    peaks = matmul_peaks(timings, peak_runs)
    flops = {layers: forward_flops(ITER3, num_layers=layers, frames=clip_frames()) for layers in (TRUNCATED, FULL)}
    forwards = {}
    for name in forward_names:
        layers, dtype = (FULL if "12" in name else TRUNCATED), name.split()[0]
        seconds = timings[name]["best_s"]
        gflops = flops[layers] * batch / seconds / 1e9
        forwards[name] = {"best_s": seconds, "median_s": timings[name]["median_s"], "clips_per_s": batch / seconds,
                          "gflops": gflops, **fraction_of_peak(gflops, peaks[dtype]), "peak_dtype": dtype}
    pairs = {"fp32": ("fp32 4 blocks", "fp32 12 blocks"), "bf16": ("bf16 model 4 blocks", "bf16 model 12 blocks")}
    speedups = {dtype: timings[full_name]["best_s"] / timings[short]["best_s"]
                for dtype, (short, full_name) in pairs.items() if full_name not in skipped}

    def of_peak(what: str, name: str, goal: float) -> dict:
        if name in skipped:
            return target(what, None, goal * 100, unit="%", no_verdict=skipped[name])
        return peak_target(what, forwards[name], goal)

    def truncation(what: str, dtype: str) -> dict:
        full_name = pairs[dtype][1]
        if full_name in skipped:
            return target(what, None, TRUNCATION_TARGET, unit="x", no_verdict=skipped[full_name])
        return target(what, speedups[dtype], TRUNCATION_TARGET, unit="x")

    targets = [
        of_peak("forward fp32 / fp32 matmul peak", "fp32 4 blocks", FP32_TARGET),
        of_peak("forward bf16 autocast / bf16 matmul peak", "bf16 autocast 4 blocks", BF16_TARGET),
        of_peak("forward bf16 model / bf16 matmul peak", "bf16 model 4 blocks", BF16_TARGET),
        truncation("12-block / 4-block forward time (fp32)", "fp32"),
        truncation("12-block / 4-block forward time (bf16 model)", "bf16"),
    ]
    return {
        "machine": machine(),
        "setup": {"batch": batch, "rounds": rounds, "clip_seconds": CLIP_SECONDS, "frames": clip_frames(),
                  "model_gflops_per_clip": {str(k): v / 1e9 for k, v in flops.items()}},
        "matmul_peak": peaks,
        "forward": forwards,
        "skipped": skipped,
        "truncation_speedup": speedups,
        "bf16_deviation_from_fp32": deviations,
        "timings": timings,
        "targets": targets,
    }


def markdown(result: dict) -> str:
    batch, forwards = result["setup"]["batch"], result["forward"]
    speedups, deviations, flops = result["truncation_speedup"], result["bf16_deviation_from_fp32"], result["setup"]["model_gflops_per_clip"]
    lines = [
        f"### Backbone forward (iter3 random init, 10 s clips, batch {batch})",
        "",
        f"Matmul peak measured in the same run, the best dense matmul: {peaks_text(result['matmul_peak'])}. "
        f"Model FLOPs per clip: {flops[str(TRUNCATED)]:.1f} G (4 blocks), {flops[str(FULL)]:.1f} G (12 blocks).",
        "",
        "| variant | best s / batch | clips/s | GFLOP/s | % of peak (same dtype) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in forwards.items():
        lines.append(f"| {name} | {row['best_s']:.3f} | {row['clips_per_s']:.2f} | {row['gflops']:.0f} | {percent_of_peak(row)} |")
    lines += [f"| {name} | {reason} | | | |" for name, reason in result["skipped"].items()]
    lines += ["", "Truncation speed-up (12-block time / 4-block time): "
              + ", ".join(f"{dtype} {speedup:.2f}x" for dtype, speedup in speedups.items()) + "."]
    if deviations:
        lines += ["", "bf16 deviation from the fp32 output (4 blocks): " + "; ".join(
            f"{name}: max |diff| {d['max_abs']:.3g}, mean |diff| {d['mean_abs']:.3g} (mean |fp32| "
            f"{d['reference_mean_abs']:.3g}), min token cosine {d['min_token_cosine']:.5f}"
            for name, d in deviations.items()) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    standalone(name="backbone", doc=__doc__, run=run, markdown=markdown, options={"batch": 4, "rounds": 6})
