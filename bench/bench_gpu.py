"""GPU benchmark and on-device checks: bf16 matmul peak, training step, embedding throughput, correctness.

    make bench-gpu    # .venv/bin/python bench/bench_gpu.py -> results/bench/gpu.{json,md}; < 5 min on one H100/H200

At the paper's sizes (random-init iter3 backbone truncated to 4 blocks, LoRA r=64 on q/v of blocks 0-3, the
model / train / embed / features settings of config.yaml, 10 s clips = 998 frames x 128 mel bins):

1. the bf16 dense matmul peak: the best of several squares and the model's own fc1 shape;
2. train.py's step at batch 32 (SpecAugment on the CPU, pinned copy, bf16 autocast forward, the loss check,
   backward through the LoRA adapters, fused AdamW): clips/s, its forward + backward FLOPs as
   FlopCounterMode counts them against the peak, and peak GPU memory;
3. embedding throughput of asd.model.embed.extract_epoch_embeddings end to end, as the 'embed' rule runs it: an
   epoch checkpoint loaded with its LoRA merged, every clip of a synthetic HDF5 feature cache read, embedded
   in bf16 and written;
4. correctness on the device: scaled_dot_product_attention (the CUDA training path, the mask needing a
   gradient) against the blockwise attention CPUs run (asd.model.gated_attention), in bf16 and fp32 on the
   q/k/v/gate block 0 of the model builds, and SDPA's output without gradients (the embedding path, where CUDA
   may choose another kernel); bf16 against fp32 embeddings of the same clips; a short training run whose
   loss must fall.

Without a usable CUDA GPU it stops with one error message: it never falls back to the CPU. ``--device cpu
--tiny`` (the demo-size backbone, a few 2 s clips) runs the same code on the CPU only to test it, and writes
results/bench/gpu_tiny.{json,md}. A failed correctness check makes the exit status 1 after the results are written.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import asd.model.beats
from asd.model.beats import DEMO, ITER3, SAMPLE_RATE
from asd.model.gated_attention import fused_gated_attention, gated_attention, reference_gated_attention
from asd.config import load_config
from asd.device import autocast
from asd.model.embed import _embed_all, extract_epoch_embeddings, mean_spectrum
from asd.data.features import FLUSH_EVERY, NUM_MEL_BINS, load_features, num_frames
from asd.io import write_json, write_text
from asd.model.asd_model import ASDModel, HeadConfig, build_backbone, checkpoint_dict, load_epoch_checkpoint
from asd.store import load_embeddings, write_manifest_group
from asd.model.train import optimisation_step, prepare_batch
from bench_backbone import clip_tokens
from bench_train import NUM_LAYERS, SUBCENTERS
from common import (REPO, RESULTS, PeakWorkload, fraction_of_peak, machine, matmul_peaks, peak_target, peaks_text,
                    percent_of_peak, target)

TRAIN_TARGET = 0.35  # fraction of the bf16 matmul peak
EMBED_TARGET = 3000.0  # clips/s, features read from HDF5 included
WALL_TARGET_MIN = 5.0
EMBED_ROUNDS = 2  # timed end-to-end embedding runs, after one warm-up run
CONVERGENCE_STEPS = 30
LOSS_DROP = 0.5  # the convergence run passes when its last loss is below this fraction of its first
# Attention: SDPA passes when its error against a float64 reference, relative to the largest reference value,
# is within this or at most twice the blockwise path's own error (bf16 rounds to 2^-9 relative).
ATTENTION_TOLERANCE = {"bf16": 1e-2, "fp32": 1e-4}
MIN_EMBEDDING_COSINE = 0.99  # bf16 against fp32 embedding of the same clip, the worst clip
NO_CUDA = ("bench-gpu needs a usable CUDA GPU: {reason}. Run it on a GPU node (`make gpu-check` shows what torch "
           "sees); `--device cpu --tiny` only tests the code path.")


@dataclass(frozen=True)
class Sizes:
    random_init_size: str  # build_backbone's random-init architecture: "iter3" (the paper's) or "demo"
    batch: int
    clip_seconds: float
    peak_squares: tuple[int, ...]
    peak_run_flops: float  # one peak run repeats its matmul for about this much work: long enough to time alone
    embed_clips: int
    warmup: int
    rounds: int

    @property
    def frames(self) -> int:
        return num_frames(int(self.clip_seconds * SAMPLE_RATE), SAMPLE_RATE)

    @property
    def backbone_settings(self) -> dict:
        return {"checkpoint": None, "random_init_size": self.random_init_size, "num_layers": NUM_LAYERS}


FULL = Sizes("iter3", batch=32, clip_seconds=10.0, peak_squares=(4096, 8192, 16384), peak_run_flops=2e13,
             embed_clips=2048, warmup=3, rounds=5)
TINY = Sizes("demo", batch=4, clip_seconds=2.0, peak_squares=(256, 512), peak_run_flops=2e8,
             embed_clips=16, warmup=1, rounds=2)


def require_cuda() -> torch.device:
    """The GPU, or SystemExit with the reason: missing, unusable (a kernel launch fails) or without bf16."""
    if not torch.cuda.is_available():
        build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        reason = f"torch.cuda.is_available() is False (torch {torch.__version__}, {build})"
        raise SystemExit(NO_CUDA.format(reason=reason))
    device = torch.device("cuda")
    try:
        torch.ones(1, device=device).add_(1).item()  # a driver / architecture mismatch only shows at the first kernel
    except RuntimeError as err:
        reason = f"CUDA is visible but a kernel launch fails ({str(err).splitlines()[0]})"
        raise SystemExit(NO_CUDA.format(reason=reason))
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        reason = f"{torch.cuda.get_device_name(device)} has no native bf16 (Ampere or newer needed)"
        raise SystemExit(NO_CUDA.format(reason=reason))
    return device


def device_facts(device: torch.device) -> dict:
    facts = {"device": str(device), "torch": torch.__version__, "cuda_build": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts |= {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                  "memory_gib": props.total_memory / 2**30, "multiprocessors": props.multi_processor_count,
                  "cudnn": torch.backends.cudnn.version()}
    return facts


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(run: Callable[[], object], *, device: torch.device, warmup: int, rounds: int) -> dict:
    """Wall seconds of ``run`` per round after ``warmup`` calls, the device synchronised before and after each
    round (GPU work is asynchronous); the best and the median."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"best_s": min(times), "median_s": float(np.median(times)), "times_s": times}


def measure_matmul_peak(sizes: Sizes, device: torch.device) -> dict:
    """bf16 GFLOP/s of each square of ``sizes.peak_squares`` and of the model's fc1 matmul
    ([clips·tokens x 768] @ [768 x 3072] at iter3); the best is the peak (common.matmul_peaks)."""
    config = {"iter3": ITER3, "demo": DEMO}[sizes.random_init_size]
    tokens = sizes.batch * clip_tokens(config, frames=sizes.frames)
    fc1 = (tokens, config.encoder_embed_dim, config.encoder_ffn_embed_dim)
    shapes = {str(size): (size, size, size) for size in sizes.peak_squares} | {"x".join(map(str, fc1)): fc1}
    generator = torch.Generator(device).manual_seed(0)
    workloads, timings = {}, {}
    for label, (m, k, n) in shapes.items():
        a = torch.randn(m, k, device=device, dtype=torch.bfloat16, generator=generator)
        b = torch.randn(k, n, device=device, dtype=torch.bfloat16, generator=generator)
        product = torch.empty(m, n, device=device, dtype=torch.bfloat16)  # one output buffer: no allocation timed
        repeats = max(1, round(sizes.peak_run_flops / (2.0 * m * k * n)))
        run = lambda a=a, b=b, product=product, repeats=repeats: [torch.mm(a, b, out=product) for _ in range(repeats)]
        workloads[label] = PeakWorkload(run, 2.0 * m * k * n * repeats, "bf16", label)
        timings[label] = time_rounds(run, device=device, warmup=sizes.warmup, rounds=sizes.rounds)
    return matmul_peaks(timings, workloads)["bf16"]


class TrainingStep:
    """train.py's inner step on a fixed batch (asd.model.train.prepare_batch and optimisation_step): SpecAugment on the
    CPU and a pinned copy to the device, prepared while the device runs the previous step; the forward under bf16
    autocast, backward through the LoRA adapters, fused AdamW; the loss read back (a sync, as in train.py)."""

    def __init__(self, sizes: Sizes, device: torch.device, settings: dict, *, fbank: torch.Tensor,
                 labels: torch.Tensor, subcenters: list[int]) -> None:
        torch.manual_seed(settings["train"]["seed"])
        backbone, self.identity = build_backbone(sizes.backbone_settings)
        self.head, self.subcenters = HeadConfig.from_dict(settings["model"]), subcenters
        self.model = ASDModel(backbone, head=self.head, subcenters=subcenters).to(device).train()
        train = settings["train"]
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=train["learning_rate"], weight_decay=train["weight_decay"],
                                           fused=True)
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling
        self.masks = {"time_mask": train["time_mask"], "freq_mask": train["freq_mask"]}
        self.fbank, self.labels, self.device = fbank, labels, device  # fbank in the feature cache's dtype, on the CPU
        self.frame_mask = torch.zeros(fbank.shape[:2], dtype=torch.bool)  # full-length clips: nothing padded
        self.generator = torch.Generator().manual_seed(train["seed"])
        self.next_batch: tuple[torch.Tensor, ...] | None = None

    def device_batch(self) -> tuple[torch.Tensor, ...]:
        return prepare_batch(self.fbank, self.frame_mask, self.labels, generator=self.generator, device=self.device,
                             **self.masks)

    def __call__(self) -> float:
        batch = self.next_batch or self.device_batch()
        loss, _ = optimisation_step(self.model, self.optimizer, self.scaler, batch, device=self.device,
                                    precision="bf16")
        self.next_batch = self.device_batch()
        if not torch.isfinite(loss):
            raise RuntimeError(f"the training loss became {loss.item()}")
        return loss.item()

    def counted_flops(self) -> float:
        """FLOPs of one forward + backward as FlopCounterMode counts them (matmuls, convolutions, attention;
        not the FFT position convolution nor element-wise work)."""
        x, mask, labels = self.device_batch()
        with FlopCounterMode(display=False) as counter, autocast(self.device, "bf16"):
            loss, _ = self.model(x, mask, labels)
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    def save_checkpoint(self, path: Path) -> None:
        """The model as an epoch checkpoint, exactly as train.py writes one."""
        classes = [f"class_{index}" for index in range(len(self.subcenters))]
        torch.save(checkpoint_dict(self.model, epoch=1, head=self.head, backbone=self.identity, classes=classes,
                                   subcenters=self.subcenters, metrics={}), path)


def feature_dtype(settings: dict) -> torch.dtype:
    return getattr(torch, settings["features"]["dtype"])


def measure_training_step(sizes: Sizes, device: torch.device, settings: dict, peak: dict) -> dict:
    """train.py's step on random clips of a DCASE-like label map (bench_train's 40 classes): time, FLOPs, memory."""
    generator = torch.Generator().manual_seed(1)
    fbank = torch.randn(sizes.batch, sizes.frames, NUM_MEL_BINS, generator=generator).to(feature_dtype(settings))
    labels = torch.randint(len(SUBCENTERS), (sizes.batch,), generator=generator)
    step = TrainingStep(sizes, device, settings, fbank=fbank, labels=labels, subcenters=SUBCENTERS)
    flops = step.counted_flops()
    host = time_rounds(step.device_batch, device=device, warmup=1, rounds=sizes.rounds)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = time_rounds(step, device=device, warmup=sizes.warmup, rounds=sizes.rounds)
    gflops = flops / timing["best_s"] / 1e9
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"batch": sizes.batch, "frames": sizes.frames, "classes": len(SUBCENTERS), "counted_flops": flops,
            **timing, "clips_per_s": sizes.batch / timing["best_s"], "gflops": gflops, **fraction_of_peak(gflops, peak),
            "host_batch_s": host["best_s"], "peak_memory_gib": memory}


def check_training_converges(sizes: Sizes, device: torch.device, settings: dict) -> tuple[dict, TrainingStep]:
    """CONVERGENCE_STEPS steps on one batch of two classes, one with its lower mel half raised (wider than
    SpecAugment's frequency mask): the loss must fall. Returns the trained step for the embedding checks."""
    generator = torch.Generator().manual_seed(2)
    labels = torch.arange(sizes.batch) % 2
    fbank = 0.5 * torch.randn(sizes.batch, sizes.frames, NUM_MEL_BINS, generator=generator)
    fbank[labels == 1, :, :NUM_MEL_BINS // 2] += 1.0
    step = TrainingStep(sizes, device, settings, fbank=fbank.to(feature_dtype(settings)), labels=labels,
                        subcenters=[1, 1])
    losses = [step() for _ in range(CONVERGENCE_STEPS)]
    passed = bool(np.isfinite(losses).all() and losses[-1] < LOSS_DROP * losses[0])
    return {"steps": CONVERGENCE_STEPS, "batch": sizes.batch, "first_loss": losses[0], "last_loss": losses[-1],
            "losses": losses, "passed": passed}, step


def write_feature_cache(path: Path, *, clips: int, frames: int, dtype: str, clip_seconds: float) -> None:
    """A synthetic feature file in the layout asd.data.features.cache_features writes and load_features reads:
    full-length clips of random fbank (one block repeated: only its size matters here)."""
    block = np.random.default_rng(3).standard_normal((FLUSH_EVERY, frames, NUM_MEL_BINS)).astype(dtype)
    manifest = pd.DataFrame({"machine": "synthetic", "section": "00", "split": "test", "domain": "source",
                             "label": "normal", "attributes": "noAttribute",
                             "file": [f"section_00_source_test_normal_{i:04d}_noAttribute.wav" for i in range(clips)]})
    with h5py.File(path, "w") as h5:
        fbank = h5.create_dataset("fbank", shape=(clips, frames, NUM_MEL_BINS), dtype=dtype,
                                  chunks=(1, frames, NUM_MEL_BINS), fletcher32=True)
        for start in range(0, clips, FLUSH_EVERY):
            stop = min(start + FLUSH_EVERY, clips)
            fbank[start:stop] = block[:stop - start]
        h5.create_dataset("num_samples", data=np.full(clips, int(clip_seconds * SAMPLE_RATE), dtype=np.int64))
        write_manifest_group(h5.create_group("manifest"), manifest)
        h5.attrs.update(sample_rate=SAMPLE_RATE, clip_seconds=clip_seconds, complete=True)


class EmbeddingJob:
    """asd.model.embed.extract_epoch_embeddings as the 'embed' rule runs it: one epoch checkpoint, one feature file."""

    def __init__(self, workdir: Path, sizes: Sizes, device: torch.device, settings: dict, step: TrainingStep) -> None:
        self.workdir, self.sizes, self.device, self.settings = workdir, sizes, device, settings
        self.checkpoint, self.features = workdir / "epoch_1.pt", workdir / "features.h5"
        step.save_checkpoint(self.checkpoint)
        write_feature_cache(self.features, clips=sizes.embed_clips, frames=sizes.frames,
                            dtype=settings["features"]["dtype"], clip_seconds=sizes.clip_seconds)

    def output(self, precision: str) -> Path:
        return self.workdir / f"embeddings_{precision}.h5"

    def __call__(self, precision: str) -> Path:
        out = self.output(precision)
        extract_epoch_embeddings(checkpoint_paths=[str(self.checkpoint)], features_path=str(self.features),
                                 out_paths=[str(out)], backbone_settings=self.sizes.backbone_settings,
                                 batch_size=self.settings["embed"]["batch_size"], device=str(self.device),
                                 precision=precision)
        return out


def measure_embedding(job: EmbeddingJob) -> dict:
    """Clips/s of the whole bf16 embedding job, and the seconds of its main parts, each timed alone: reading the
    feature file (load_features), the clips' mean spectra (mean_spectrum, on the CPU) and the model on clips
    already in memory (_embed_all)."""
    clips, device, batch = job.sizes.embed_clips, job.device, job.settings["embed"]["batch_size"]
    end_to_end = time_rounds(lambda: job("bf16"), device=device, warmup=1, rounds=EMBED_ROUNDS)
    features = load_features(job.features)
    fbank, frame_mask = torch.from_numpy(features.fbank), features.frame_padding_mask()
    model, _ = load_epoch_checkpoint(job.checkpoint, backbone_settings=job.sizes.backbone_settings, device=device)
    parts = {"load_features": lambda: load_features(job.features),
             "mean_spectrum": lambda: mean_spectrum(features.fbank, frame_mask.numpy()),
             "model": lambda: _embed_all(fbank, frame_mask, model.embed, dev=device, precision="bf16", batch_size=batch,
                                         desc="embed (model only)")}
    with torch.no_grad():
        parts_s = {name: time_rounds(part, device=device, warmup=0, rounds=EMBED_ROUNDS)["best_s"]
                   for name, part in parts.items()}
    return {"clips": clips, "frames": job.sizes.frames, "batch": batch,
            "feature_dtype": job.settings["features"]["dtype"], "feature_file_mib": job.features.stat().st_size / 2**20,
            **end_to_end, "clips_per_s": clips / end_to_end["best_s"], "parts_s": parts_s,
            "model_clips_per_s": clips / parts_s["model"]}


def check_bf16_embeddings(job: EmbeddingJob) -> dict:
    """Cosine of each clip's bf16 embedding (written by ``measure_embedding``'s runs) with its fp32 one."""
    bf16, fp32 = (torch.from_numpy(load_embeddings(path)[0]) for path in (job.output("bf16"), job("fp32")))
    cosine = F.cosine_similarity(bf16.double(), fp32.double(), dim=1)
    return {"clips": len(cosine), "mean_cosine": cosine.mean().item(), "min_cosine": cosine.min().item(),
            "passed": cosine.min().item() >= MIN_EMBEDDING_COSINE}


class _FirstAttentionInputs:
    """Records the arguments of block 0's attention call (q, k, v, gate, position bias, key padding), whichever
    path the device takes (asd.model.beats calls gated_attention on CPUs, fused_gated_attention on GPUs)."""

    PATHS = ("gated_attention", "fused_gated_attention")

    def __init__(self) -> None:
        self.inputs: tuple[torch.Tensor | None, ...] | None = None
        self._originals = {name: getattr(asd.model.beats, name) for name in self.PATHS}

    def _recorder(self, name: str) -> Callable:
        def record(*args, **kwargs):
            if self.inputs is None:
                self.inputs = tuple(args[:6])
            return self._originals[name](*args, **kwargs)
        return record

    def __enter__(self):
        for name in self.PATHS:
            setattr(asd.model.beats, name, self._recorder(name))
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._originals.items():
            setattr(asd.model.beats, name, original)


def attention_inputs(sizes: Sizes, device: torch.device, precision: str) -> tuple[torch.Tensor, ...]:
    """q, k, v [B, H, N, D], gate [B, H, N, 1], position bias [H, N, N] and key padding [B, N] as block 0 of
    the backbone builds them under ``precision``, on random clips, every other one with its last quarter padded."""
    backbone, _ = build_backbone(sizes.backbone_settings)
    backbone = backbone.to(device).eval()
    fbank = torch.randn(sizes.batch, sizes.frames, NUM_MEL_BINS, device=device,
                        generator=torch.Generator(device).manual_seed(4))
    frame_mask = torch.zeros(sizes.batch, sizes.frames, dtype=torch.bool, device=device)
    frame_mask[1::2, -sizes.frames // 4:] = True
    capture = _FirstAttentionInputs()
    with torch.no_grad(), autocast(device, precision), capture:
        backbone.forward_fbank(fbank, frame_mask)
    return capture.inputs


def attention_and_gradients(attend: Callable, inputs: tuple[torch.Tensor, ...], dtype: torch.dtype,
                            grad_output: torch.Tensor) -> dict[str, torch.Tensor]:
    """The attention output and the gradients of q, k, v and the gate for the upstream gradient ``grad_output``."""
    *trained, position_bias, padding = inputs
    leaves = [tensor.detach().to(dtype, copy=True).requires_grad_() for tensor in trained]
    output = attend(*leaves, position_bias.to(dtype), padding)
    gradients = torch.autograd.grad(output, leaves, grad_output.to(dtype))
    return dict(zip(("output", "grad q", "grad k", "grad v", "grad gate"), (output.detach(), *gradients)))


def check_attention_paths(sizes: Sizes, device: torch.device) -> dict:
    """SDPA (the CUDA training path) against asd.model.gated_attention (the CPU training path), in bf16 and fp32:
    their difference, and each one's error against the plain maths in float64. Also SDPA's output without
    gradients (embedding: nothing requires a gradient, so CUDA may pick another kernel, e.g. cuDNN's)."""
    results = {}
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        inputs = attention_inputs(sizes, device, precision)
        grad_output = torch.randn(inputs[2].shape, device=device, generator=torch.Generator(device).manual_seed(5))
        fused_out, blockwise_out, reference = (
            attention_and_gradients(attend, inputs, as_dtype, grad_output)
            for attend, as_dtype in ((fused_gated_attention, dtype), (gated_attention, dtype),
                                     (reference_gated_attention, torch.float64)))
        with torch.no_grad():
            *trained, position_bias, padding = inputs
            fused_out["output, no grad"] = fused_gated_attention(*(t.to(dtype) for t in trained),
                                                                 position_bias.to(dtype), padding)
        blockwise_out["output, no grad"], reference["output, no grad"] = blockwise_out["output"], reference["output"]
        tensors = {}
        for name, expected in reference.items():
            scale = expected.abs().max().item()
            difference = (fused_out[name].double() - blockwise_out[name].double()).abs().max().item()
            fused_error = (fused_out[name].double() - expected).abs().max().item() / scale
            blockwise_error = (blockwise_out[name].double() - expected).abs().max().item() / scale
            tensors[name] = {"max_abs_difference": difference,
                             "max_rel_difference": difference / blockwise_out[name].double().abs().max().item(),
                             "sdpa_error": fused_error, "blockwise_error": blockwise_error,
                             "passed": fused_error <= max(ATTENTION_TOLERANCE[precision], 2 * blockwise_error)}
        q, _, _, _, position_bias, _ = inputs
        results[precision] = {"q_shape": list(q.shape), "mask_shape": [q.shape[0], *position_bias.shape],
                              "tensors": tensors, "passed": all(row["passed"] for row in tensors.values())}
    return results


def run(sizes: Sizes, device: torch.device, *, tiny: bool, started: float, result: dict) -> None:
    """Every measurement and check, each stored into ``result`` as soon as it is done (an error keeps the ones
    before it); ``started``: the perf_counter reading the wall time counts from."""
    settings = load_config(REPO / "config.yaml")
    result |= {"mode": "tiny" if tiny else "full", "device": device_facts(device), "host": machine(),
               "sizes": asdict(sizes),
               "settings": {section: settings[section] for section in ("model", "train", "embed", "features")}}
    result["matmul_peak"] = peak = measure_matmul_peak(sizes, device)
    result["training_step"] = step = measure_training_step(sizes, device, settings, peak)
    result["correctness"] = correctness = {}
    correctness["training_run"], trained = check_training_converges(sizes, device, settings)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as workdir:
        job = EmbeddingJob(Path(workdir), sizes, device, settings, trained)
        result["embedding"] = embedding = measure_embedding(job)
        correctness["bf16_embeddings"] = check_bf16_embeddings(job)
    correctness["attention"] = check_attention_paths(sizes, device)
    correctness["passed"] = (all(check["passed"] for check in correctness["attention"].values())
                             and correctness["bf16_embeddings"]["passed"] and correctness["training_run"]["passed"])
    result["wall_s"] = wall = time.perf_counter() - started
    targets = [
        peak_target(f"training step (train.py's, bf16 autocast, batch {sizes.batch}) / bf16 matmul peak", step,
                    TRAIN_TARGET),
        target("embedding, features from HDF5 included", embedding["clips_per_s"], EMBED_TARGET, unit="clips/s"),
        target("bench-gpu wall time", wall / 60, WALL_TARGET_MIN, unit="min", higher_is_better=False),
    ]
    if tiny:
        targets = [row | {"met": None, "no_verdict": f"tiny sizes on {device}: a code-path test, not judged"}
                   for row in targets]
    result["targets"] = targets


def verdict(row: dict) -> str:
    return row["no_verdict"] if row["met"] is None else ("met" if row["met"] else "**not met**")


def markdown(result: dict) -> str:
    device, sizes, step, embedding = result["device"], result["sizes"], result["training_step"], result["embedding"]
    correctness = result["correctness"]
    gpu = (f"{device['gpu']} (compute capability {device['capability']}, {device['memory_gib']:.0f} GiB, "
           f"{device['multiprocessors']} SMs), cuDNN {device['cudnn']}" if "gpu" in device else device["device"])
    parts = embedding["parts_s"]
    memory = "—" if step["peak_memory_gib"] is None else f"{step['peak_memory_gib']:.1f} GiB"
    training_run, embeddings = correctness["training_run"], correctness["bf16_embeddings"]
    model = result["settings"]["model"]
    lines = [
        f"# GPU benchmark ({result['mode']} sizes)",
        "",
        f"Device: {gpu}; torch {device['torch']} built for CUDA {device['cuda_build']}; host {result['host']['cpu']}. "
        f"Backbone: random-init {sizes['random_init_size']}, {NUM_LAYERS} blocks, LoRA r={model['lora_rank']} "
        f"on q/v of blocks {model['lora_blocks']}; {sizes['clip_seconds']:g} s clips "
        f"({step['frames']} frames x {NUM_MEL_BINS} mel bins). Wall time {result['wall_s']:.0f} s "
        "(CUDA start-up included, Python imports not).",
        "",
        "| target | measured | goal | met |",
        "| --- | ---: | ---: | --- |",
        *[f"| {row['what']} | {row['measured']} | {row['target']} | {verdict(row)} |" for row in result["targets"]],
        "",
        f"**bf16 matmul peak**: {peaks_text({'bf16': result['matmul_peak']})}.",
        "",
        f"**Training step** (train.py's: SpecAugment on the CPU, pinned copy, bf16 autocast, loss check, backward, "
        f"fused AdamW; batch {step['batch']}, {step['classes']} classes): {step['best_s'] * 1e3:.1f} ms best "
        f"(median {step['median_s'] * 1e3:.1f}), {step['clips_per_s']:.0f} clips/s, "
        f"{step['counted_flops'] / 1e9:,.1f} GFLOP per step (forward + backward, FlopCounterMode) = "
        f"{step['gflops']:,.0f} GFLOP/s, {percent_of_peak(step)} of the bf16 peak; peak memory {memory}. "
        f"Of each step, {step['host_batch_s'] * 1e3:.1f} ms is the batch's SpecAugment and copy.",
        "",
        f"**Embedding** (asd.model.embed.extract_epoch_embeddings end to end: checkpoint loaded and merged, "
        f"{embedding['clips']} clips read from a {embedding['feature_file_mib']:.0f} MiB {embedding['feature_dtype']} "
        f"HDF5 feature cache, embedded in bf16 in batches of {embedding['batch']}, written): "
        f"{embedding['best_s']:.2f} s best of {EMBED_ROUNDS} after a warm-up, {embedding['clips_per_s']:.0f} clips/s. "
        f"Its parts, each timed alone: load_features {parts['load_features']:.2f} s (file in the page cache), "
        f"mean_spectrum {parts['mean_spectrum']:.2f} s, the model on clips in memory {parts['model']:.2f} s "
        f"({embedding['model_clips_per_s']:.0f} clips/s).",
        "",
        f"**Correctness on the device**: {'all pass' if correctness['passed'] else '**FAILED**'}.",
        "",
        f"- bf16 vs fp32 embeddings of the same {embeddings['clips']} clips: 1 − cosine mean "
        f"{1 - embeddings['mean_cosine']:.2g}, max {1 - embeddings['min_cosine']:.2g} (pass: min cosine ≥ "
        f"{MIN_EMBEDDING_COSINE}): {pass_fail(embeddings)}.",
        f"- training run, {training_run['steps']} steps on one batch of {training_run['batch']} clips of 2 classes: "
        f"loss {training_run['first_loss']:.3f} -> {training_run['last_loss']:.3f} (pass: below {LOSS_DROP:g}x the "
        f"first): {pass_fail(training_run)}.",
        "- attention, scaled_dot_product_attention (CUDA's training path) vs the blockwise gated attention (the CPU's), "
        "on block 0's q/k/v/gate, every other clip a quarter padded. Differences are max |SDPA − blockwise|, relative to "
        "the blockwise path's largest value; errors are each path's max deviation from the plain maths in float64, "
        "relative to its largest value. Pass: SDPA error ≤ "
        + " / ".join(f"{tolerance:g} ({precision})" for precision, tolerance in ATTENTION_TOLERANCE.items())
        + " or ≤ 2x the blockwise path's.",
        "",
        "| precision | tensor | max abs diff | max rel diff | SDPA error | blockwise error | pass |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for precision, attention in correctness["attention"].items():
        lines += [f"| {precision} {attention['q_shape']} | {name} | {row['max_abs_difference']:.3g} | "
                  f"{row['max_rel_difference']:.3g} | {row['sdpa_error']:.3g} | {row['blockwise_error']:.3g} | "
                  f"{pass_fail(row)} |" for name, row in attention["tensors"].items()]
    return "\n".join(lines) + "\n"


def pass_fail(check: dict) -> str:
    return "pass" if check["passed"] else "**FAIL**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="demo-size backbone, a few 2 s clips: tests the code path")
    parser.add_argument("--out", type=Path, help="JSON path, the Markdown beside it (default results/bench/gpu.json, "
                                                  "with --tiny gpu_tiny.json)")
    args = parser.parse_args()
    started = time.perf_counter()  # the wall time includes CUDA's start-up, not Python's imports
    if args.device == "cpu" and not args.tiny:
        parser.error("--device cpu only tests the code path: use it with --tiny (the benchmark itself needs CUDA)")
    device = require_cuda() if args.device == "cuda" else torch.device("cpu")
    out = args.out or RESULTS / ("gpu_tiny.json" if args.tiny else "gpu.json")
    result: dict = {}
    try:
        run(TINY if args.tiny else FULL, device, tiny=args.tiny, started=started, result=result)
    except Exception as err:  # one run on a GPU node is precious: keep what was measured before the error
        write_json(out, result | {"error": f"{type(err).__name__}: {err}"})
        print(f"bench-gpu: stopped by the error below; the results before it are in {out}", file=sys.stderr)
        raise
    text = markdown(result)
    print(text)
    write_json(out, result)
    write_text(out.with_suffix(".md"), text)
    print(f"wrote {out} and {out.with_suffix('.md').name}")
    if not result["correctness"]["passed"]:
        raise SystemExit(f"bench-gpu: a correctness check failed on {device} (see {out.with_suffix('.md')})")


if __name__ == "__main__":
    main()
