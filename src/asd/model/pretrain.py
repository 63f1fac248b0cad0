"""Pre-training the demo backbone: the project's BEATs architecture at the small ``beats.DEMO`` size,
all weights, on the synthetic machine-sound corpus of ``asd.model.corpus``.

What it is, and what every output calls it: ``LABEL`` ("demo backbone pre-trained on synthetic
machine sounds — not BEATs"). It is not a BEATs checkpoint from microsoft/unilm and has never seen
real audio; it exists so that the demo and the tests run on a backbone whose weights mean
something, at a size that trains on two CPU cores in minutes.

Objective: supervised classification of (machine type, condition) of corpus clips from the
mean-pooled final-layer tokens through a linear head (dropped from the checkpoint), with
SpecAugment-style time and frequency masks. Every weight of the backbone trains (patch
embedding, convolutional position embedding, relative position bias, all blocks).

Deterministic: corpus, initialisation, batch order and masks all derive from the seed; torch runs
in float32 with deterministic algorithms and a fixed intra-op thread count (``threads``, default 1:
on a shared 2-core machine one thread is as fast as two and its result does not depend on how
work is split between threads). The same settings, code, torch build and kind of CPU give the same
checkpoint bytes.

The checkpoint is in the official format ``{'cfg', 'model'}`` (``asd.model.beats.load_beats`` loads it
with ``strict=True``); its cfg carries two extra keys that ``BEATsConfig.from_dict`` ignores:
``MARKER_KEY`` (= ``LABEL``) and ``DETAILS_KEY`` (settings and measured accuracies).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asd.model import corpus
from asd.model.beats import DEMO, BEATs
from asd.errors import AsdError
from asd.io import atomic_path, write_json, write_text

log = logging.getLogger("asd.model.pretrain")

LABEL = "demo backbone pre-trained on synthetic machine sounds — not BEATs"
MARKER_KEY = "asd_backbone"  # cfg key holding LABEL
DETAILS_KEY = "asd_pretrain"  # cfg key holding settings and accuracies
FORMAT = "asd-demo-backbone-v1"
SHIPPED = Path(__file__).resolve().parents[3] / "models" / "demo_backbone.pt"
RANDOM_INIT_SEED = 0  # asd.model.asd_model's seed for the demo's random-init backbone: the baseline compared against


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    seed: int = 0
    machine_types: int = 64  # trained machine types (corpus indices 0 .. machine_types-1)
    conditions: int = 3  # operating conditions per machine type
    clips_per_condition: int = 24  # training clips per (type, condition)
    heldout_clips_per_condition: int = 4  # held-out clips of the trained types (accuracy of the head)
    probe_types: int = 16  # unseen machine types (the next corpus indices): nearest-neighbour probe
    probe_clips_per_condition: int = 6
    clip_seconds: float = 2.0
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    time_mask_frames: int = 30  # SpecAugment: one time mask of up to this many frames per clip (0: off)
    freq_mask_bins: int = 20  # and one frequency mask of up to this many mel bins (0: off)
    threads: int = 1
    log_every: int = 50


# ----------------------------------------------------------------------------- pieces


@contextlib.contextmanager
def _deterministic(threads: int):
    """Fixed thread count and deterministic algorithms for the block; previous settings restored."""
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def pooled_features(model: BEATs, fbank: Tensor, *, batch_size: int = 64) -> Tensor:
    """Mean of the final-layer tokens of each clip: [N, F, 128] -> [N, E] (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(fbank[i:i + batch_size])[0].mean(1) for i in range(0, len(fbank), batch_size)])
    model.train(was_training)
    return out


def nearest_neighbour_accuracy(features: Tensor, labels: np.ndarray) -> float:
    """Leave-one-out 1-NN accuracy under cosine similarity (features centred on their mean first)."""
    x = F.normalize(features - features.mean(0), dim=1)
    similarity = x @ x.T
    similarity.fill_diagonal_(-math.inf)
    nearest = similarity.argmax(1).numpy()
    return float(np.mean(labels[nearest] == labels))


def _spec_augment(batch: Tensor, generator: torch.Generator, *, time_frames: int, freq_bins: int) -> Tensor:
    """One time and one frequency mask (set to 0, the normalised fbank's centre) per clip."""
    count, frames, bins = batch.shape
    keep = torch.ones_like(batch)
    for axis, limit, size in ((1, time_frames, frames), (2, freq_bins, bins)):
        if limit <= 0:
            continue
        widths = torch.randint(0, limit + 1, (count,), generator=generator)
        starts = (torch.rand(count, generator=generator) * (size - widths + 1)).long()
        positions = torch.arange(size)
        masked = (positions[None] >= starts[:, None]) & (positions[None] < (starts + widths)[:, None])  # [B, size]
        keep = keep * (~masked).float().unsqueeze(3 - axis)
    return batch * keep


def _learning_rate(step: int, settings: PretrainSettings) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def _accuracy(model: BEATs, head: nn.Linear, data: corpus.CorpusSet) -> dict[str, float]:
    """Head accuracy on (type, condition) and on the machine type alone, and the mean cross-entropy."""
    with torch.no_grad():
        logits = head(pooled_features(model, data.fbank))
    labels = torch.from_numpy(data.label)
    predicted = logits.argmax(1).numpy()
    conditions = len(data.types[0].conditions)
    return {
        "class_accuracy": float(np.mean(predicted == data.label)),
        "machine_accuracy": float(np.mean(predicted // conditions == data.machine)),
        "loss": F.cross_entropy(logits, labels).item(),
    }


def _probe(model: BEATs, data: corpus.CorpusSet) -> dict[str, float]:
    features = pooled_features(model, data.fbank)
    return {"machine_nn_accuracy": nearest_neighbour_accuracy(features, data.machine),
            "class_nn_accuracy": nearest_neighbour_accuracy(features, data.label)}


# ----------------------------------------------------------------------------- training


def pretrain(settings: PretrainSettings = PretrainSettings(), *, workers: int = 1) -> tuple[dict, dict]:
    """Generate the corpus (``workers`` processes; same clips for any count), train, evaluate.

    Returns (checkpoint dict, report dict).
    """
    started = time.perf_counter()
    cpu_started = time.process_time()
    with _deterministic(settings.threads), torch.random.fork_rng(devices=[]):  # the caller's RNG state is left alone
        torch.manual_seed(settings.seed)
        trained = range(settings.machine_types)
        unseen = range(settings.machine_types, settings.machine_types + settings.probe_types)
        common = dict(seed=settings.seed, seconds=settings.clip_seconds, conditions=settings.conditions,
                      workers=workers)
        log.info("generating the corpus: %d machine types x %d conditions x %d clips of %.1f s (+ held-out, probe)",
                 settings.machine_types, settings.conditions, settings.clips_per_condition, settings.clip_seconds)
        train_set = corpus.build_set(trained, clips_per_condition=settings.clips_per_condition, split="train", **common)
        heldout_set = corpus.build_set(trained, clips_per_condition=settings.heldout_clips_per_condition,
                                       split="heldout", **common)
        probe_set = corpus.build_set(unseen, clips_per_condition=settings.probe_clips_per_condition,
                                     split="heldout", **common)
        corpus_seconds = time.perf_counter() - started
        log.info("corpus: %d training, %d held-out, %d probe clips in %.0f s",
                 len(train_set.label), len(heldout_set.label), len(probe_set.label), corpus_seconds)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            random_init = BEATs(DEMO)
        torch.manual_seed(settings.seed)
        model = BEATs(DEMO)  # with seed 0 the same start as the random-init baseline
        head = nn.Linear(DEMO.encoder_embed_dim, settings.machine_types * settings.conditions)
        parameters = list(model.parameters()) + list(head.parameters())
        optimiser = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        generator = torch.Generator().manual_seed(settings.seed)
        order_rng = np.random.default_rng([corpus.CORPUS_TAG, settings.seed, 2])
        labels = torch.from_numpy(train_set.label)
        order: list[int] = []
        history = []
        model.train()
        train_started = time.perf_counter()
        running_loss = running_correct = running_count = 0.0
        for step in range(settings.steps):
            if len(order) < settings.batch_size:
                order += order_rng.permutation(len(labels)).tolist()
            batch, order = order[:settings.batch_size], order[settings.batch_size:]
            inputs = _spec_augment(train_set.fbank[batch], generator, time_frames=settings.time_mask_frames,
                                   freq_bins=settings.freq_mask_bins)
            for group in optimiser.param_groups:
                group["lr"] = _learning_rate(step, settings)
            logits = head(model(inputs)[0].mean(1))
            loss = F.cross_entropy(logits, labels[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
            optimiser.step()
            running_loss += loss.item() * len(batch)
            running_correct += float((logits.argmax(1) == labels[batch]).sum())
            running_count += len(batch)
            if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
                history.append({"step": step + 1, "loss": running_loss / running_count,
                                "accuracy": running_correct / running_count})
                log.info("step %d/%d: loss %.3f, batch accuracy %.3f, lr %.2e, %.0f s", step + 1, settings.steps,
                         history[-1]["loss"], history[-1]["accuracy"], _learning_rate(step, settings),
                         time.perf_counter() - train_started)
                running_loss = running_correct = running_count = 0.0
        train_seconds = time.perf_counter() - train_started

        metrics = {"train": _accuracy(model, head, train_set), "heldout": _accuracy(model, head, heldout_set),
                   "probe_unseen_types": _probe(model, probe_set),
                   "probe_unseen_types_random_init": _probe(random_init, probe_set)}
    log.info("training accuracy %.3f (machine type %.3f); held-out clips %.3f (machine type %.3f)",
             metrics["train"]["class_accuracy"], metrics["train"]["machine_accuracy"],
             metrics["heldout"]["class_accuracy"], metrics["heldout"]["machine_accuracy"])
    log.info("unseen machine types, 1-NN machine-type accuracy: pre-trained %.3f, random-init %.3f",
             metrics["probe_unseen_types"]["machine_nn_accuracy"],
             metrics["probe_unseen_types_random_init"]["machine_nn_accuracy"])

    cfg = DEMO.to_dict()
    cfg[MARKER_KEY] = LABEL
    cfg[DETAILS_KEY] = {
        "format": FORMAT,
        "corpus": "asd.corpus (synthetic machine sounds, disjoint from the demo's machine types and clips)",
        "settings": dataclasses.asdict(settings),
        "metrics": metrics,
        "torch": str(torch.__version__),
    }
    state = {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}
    _share_position_bias(state)
    checkpoint = {"cfg": cfg, "model": state}
    report = {
        "label": LABEL,
        "parameters": sum(p.numel() for p in model.parameters()),
        "metrics": metrics,
        "history": history,
        "seconds": {"corpus": round(corpus_seconds, 1), "training": round(train_seconds, 1),
                    "total": round(time.perf_counter() - started, 1),
                    "main_process_cpu": round(time.process_time() - cpu_started, 1)},
        "settings": dataclasses.asdict(settings),
        "torch": str(torch.__version__),
        "cpu": _cpu_model(),
        "corpus_workers": workers,
    }
    return checkpoint, report


def _cpu_model() -> str:
    """The CPU's model name (what "the same kind of CPU" refers to), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _share_position_bias(state: dict[str, Tensor]) -> None:
    """One tensor for the relative position bias table every block refers to (saved once, as the model holds it)."""
    keys = sorted(key for key in state if key.endswith("self_attn.relative_attention_bias.weight"))
    for key in keys:
        state[key] = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]


# ----------------------------------------------------------------------------- files


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(checkpoint: dict, out: str | os.PathLike) -> str:
    """Write the checkpoint atomically, then ``<out>.sha256`` (``sha256sum -c`` format); return the digest."""
    out = Path(out)
    with atomic_path(out, suffix=".pt") as tmp, open(tmp, "wb") as handle:
        # A file object, not a path: torch names the archive's top folder after a path's file name, and
        # the temporary name is random; with a file object it is always "archive" (same bytes every time).
        torch.save(checkpoint, handle)
    digest = sha256_of(out)
    write_text(f"{out}.sha256", f"{digest}  {out.name}\n")
    return digest


def run(out: str | os.PathLike, settings: PretrainSettings = PretrainSettings(), *, workers: int = 1) -> dict:
    """``asd pretrain``: train, write ``out``, ``out.sha256`` and the report ``out.json``; return the report."""
    checkpoint, report = pretrain(settings, workers=workers)
    digest = save_checkpoint(checkpoint, out)
    report.update(checkpoint=str(out), sha256=digest, bytes=Path(out).stat().st_size)
    write_json(f"{out}.json", report)
    log.info("wrote %s (%d bytes, sha256 %s): %s", out, report["bytes"], digest, LABEL)
    return report


def read_marker(path: str | os.PathLike) -> str | None:
    """LABEL if ``path`` is a checkpoint this module wrote, else None (e.g. an official BEATs checkpoint)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable files are load_beats' business, with its own message
        return None
    cfg = state.get("cfg") if isinstance(state, dict) else None
    marker = cfg.get(MARKER_KEY) if isinstance(cfg, dict) else None
    return marker if isinstance(marker, str) else None


def verify_sha256(path: str | os.PathLike = SHIPPED) -> str:
    """The file's digest, after checking it against ``<path>.sha256``; AsdError on a mismatch."""
    path = Path(path)
    recorded = Path(f"{path}.sha256")
    if not path.is_file() or not recorded.is_file():
        raise AsdError(f"{path} or its .sha256 is missing; rebuild it with `make pretrain`.")
    expected = recorded.read_text().split()[0]
    actual = sha256_of(path)
    if actual != expected:
        raise AsdError(f"{path}: sha256 {actual} does not match {recorded} ({expected}); rebuild it with "
                       "`make pretrain` or restore the file from the repository.")
    return actual


def summary(report: dict) -> str:
    """The report as a few human-readable lines."""
    metrics, seconds = report["metrics"], report["seconds"]
    return "\n".join([
        f"{report.get('checkpoint', '(not written)')}: {report['label']}",
        f"  {report['parameters']} parameters, {report.get('bytes', 0)} bytes, sha256 {report.get('sha256', '-')}",
        f"  training accuracy (type x condition) {metrics['train']['class_accuracy']:.3f}, "
        f"held-out clips {metrics['heldout']['class_accuracy']:.3f} "
        f"(machine type {metrics['heldout']['machine_accuracy']:.3f})",
        f"  unseen machine types, 1-NN machine-type accuracy: pre-trained "
        f"{metrics['probe_unseen_types']['machine_nn_accuracy']:.3f}, random-init "
        f"{metrics['probe_unseen_types_random_init']['machine_nn_accuracy']:.3f}",
        f"  time: corpus {seconds['corpus']} s, training {seconds['training']} s, total {seconds['total']} s",
    ])


def settings_from(values: dict[str, Any]) -> PretrainSettings:
    """PretrainSettings from a dict, refusing unknown keys."""
    known = {field.name for field in dataclasses.fields(PretrainSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise AsdError(f"unknown pretrain setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    return PretrainSettings(**values)
