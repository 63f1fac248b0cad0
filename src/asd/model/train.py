"""Train one fold: LoRA-BEATs + attentive pooling + ArcFace on all its machine types' training clips.

Writes one small checkpoint per epoch (trained tensors + config, see ``asd.model.asd_model.checkpoint_dict``)
and a per-epoch log. Resumable: after every epoch the full training state (optimizer included)
is saved under ``<model dir>/.state/``; a rerun of an interrupted run with identical inputs (same
settings, backbone weights and feature-file contents: the run key) continues after the last finished
epoch and ends with the same checkpoints as an uninterrupted run, because every random draw of an
epoch comes from generators seeded by (seed, epoch) rather than from state carried across epochs.
A completed run removes its state, so any later run trains from scratch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from asd.device import autocast, resolve_device, resolve_precision
from asd.errors import AsdError
from asd.data.features import feature_fingerprint, load_features
from asd.io import atomic_path, write_csv
from asd.model.asd_model import (ASDModel, HeadConfig, backbone_label, build_backbone, checkpoint_dict, count_parameters,
                                 class_names, label_map)

log = logging.getLogger(__name__)
STATE_DIR = ".state"
# Fault injection for the resume tests: a hard kill at a known point (after that epoch's state is saved).
CRASH_AFTER_EPOCH = "ASD_TEST_CRASH_AFTER_EPOCH"


def spec_augment(fbank: torch.Tensor, valid_frames: torch.Tensor, *, time_mask: int, freq_mask: int,
                 generator: torch.Generator) -> torch.Tensor:
    """One time mask (≤ time_mask frames, inside the real frames) and one frequency mask (≤ freq_mask bins) per clip.

    fbank: [B, T, F]; masked values are set to 0, the mean of the normalised fbank.
    """
    batch, frames, bins = fbank.shape
    def band(max_width: int, extent: torch.Tensor, size: int) -> torch.Tensor:  # -> [B, size] bool
        width = (torch.rand(batch, generator=generator) * (max_width + 1)).long().clamp(max=extent)
        start = (torch.rand(batch, generator=generator) * (extent - width + 1)).long()
        pos = torch.arange(size)[None, :]
        return (pos >= start[:, None]) & (pos < (start + width)[:, None])
    time = band(time_mask, valid_frames, frames)  # [B, T]
    freq = band(freq_mask, torch.full((batch,), bins), bins)  # [B, F]
    return fbank.masked_fill(time[:, :, None] | freq[:, None, :], 0.0)


def learning_rate(step: int, *, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """Linear warm-up to ``peak`` then cosine decay to ``floor`` * peak (0: to zero)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def prepare_batch(fbank: torch.Tensor, frame_mask: torch.Tensor, labels: torch.Tensor, *, time_mask: int,
                  freq_mask: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, ...]:
    """SpecAugment one gathered batch on the CPU and copy it (asynchronously to a GPU, from pinned memory).

    fbank [B, frames, 128] in the feature cache's dtype, frame_mask [B, frames] (True = padding), labels [B]
    -> (x float32, frame_mask, labels) on ``device``.
    """
    x = spec_augment(fbank.float(), (~frame_mask).sum(dim=1), time_mask=time_mask, freq_mask=freq_mask,
                     generator=generator)
    pin = device.type == "cuda"
    return tuple(t.pin_memory().to(device, non_blocking=True) if pin else t for t in (x, frame_mask, labels))


def optimisation_step(model: ASDModel, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                      batch: tuple[torch.Tensor, ...], *, device: torch.device,
                      precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward under ``precision``, backward, optimiser step -> (loss, logits), still on the device: nothing
    here waits for a GPU, so the caller can prepare the next batch meanwhile."""
    x, mask, labels = batch
    with autocast(device, precision):
        loss, logits = model(x, mask, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, logits


def _fold_data(feature_paths: list[str]):
    sets = [load_features(p, splits=["train"]) for p in feature_paths]
    manifest = pd.concat([s.manifest for s in sets], ignore_index=True)
    fbank = torch.from_numpy(np.concatenate([s.fbank for s in sets]))  # [N, frames, 128], storage dtype
    frame_mask = torch.cat([s.frame_padding_mask() for s in sets])  # [N, frames]
    return manifest, fbank, frame_mask


def _run_key(settings: dict, backbone: dict, feature_paths: list[str]) -> str:
    """Identity of a training run: every setting that shapes the model (not where it runs), the backbone's
    weights (not their path) and the content of every feature file. A saved state is resumed only by the same run."""
    shaping = {"model": settings["model"], "train": {k: v for k, v in settings["train"].items() if k != "device"},
               "backbone": {"sha256": backbone["sha256"], "num_layers": backbone["num_layers"]},
               "features": [feature_fingerprint(p) for p in feature_paths]}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def train_fold(*, fold: str, feature_paths: list[str], checkpoint_paths: list[str], log_path: str,
               settings: dict) -> None:
    """``settings``: the config's backbone, model and train sections."""
    train_cfg, head = settings["train"], HeadConfig.from_dict(settings["model"])
    epochs = train_cfg["epochs"]
    if len(checkpoint_paths) != epochs:
        raise ValueError(f"expected {epochs} checkpoint paths, got {len(checkpoint_paths)}")
    manifest, fbank, frame_mask = _fold_data(feature_paths)
    if manifest.empty:
        raise AsdError(f"fold '{fold}' has no training clips in {feature_paths}; check the fold's machine types.")
    classes, hidden = label_map(manifest)
    labels = torch.tensor([classes.index(c) for c in class_names(manifest)])
    subcenters = [head.arcface_subcenters if h else 1 for h in hidden]

    device = resolve_device(train_cfg["device"])
    precision = resolve_precision(train_cfg["precision"], device)
    seed = train_cfg["seed"]
    torch.manual_seed(seed)
    backbone, identity = build_backbone(settings["backbone"])
    model = ASDModel(backbone, head=head, subcenters=subcenters).to(device)
    total_params, trainable_params = count_parameters(model)
    log.info("fold %s: %d clips, %d classes (%d with sub-centres), %s", fold, len(manifest), len(classes),
             sum(hidden), backbone_label(identity))
    log.info("parameters: %d total, %d trainable (LoRA r=%d on blocks %s + pooling + projection + ArcFace)",
             total_params, trainable_params, head.lora_rank, head.lora_blocks)
    log.info("device %s, precision %s", device, precision)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=train_cfg["learning_rate"], weight_decay=train_cfg["weight_decay"],
                                  fused=True)  # one kernel for all tensors: ~25x faster steps on CPU
    # fp16 autocast (pre-Ampere GPUs) needs loss scaling against gradient underflow; a no-op otherwise.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    batch_size = train_cfg["batch_size"]
    steps_per_epoch = math.ceil(len(manifest) / batch_size)
    total_steps, warmup_steps = epochs * steps_per_epoch, round(train_cfg["warmup_epochs"] * steps_per_epoch)
    state_dir = Path(checkpoint_paths[0]).parent / STATE_DIR
    run_key = _run_key(settings, identity, feature_paths)
    history, start_epoch = _resume(state_dir, run_key, model, optimizer, checkpoint_paths)

    for epoch in range(start_epoch, epochs + 1):
        model.train()
        torch.manual_seed(seed * 100_003 + epoch)  # dropout, if any, draws from here
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(manifest), generator=generator)
        started, loss_sum = time.perf_counter(), 0.0
        correct = torch.zeros((), dtype=torch.long, device=device)

        def batch(step_in_epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            idx = order[step_in_epoch * batch_size:(step_in_epoch + 1) * batch_size]
            return prepare_batch(fbank[idx], frame_mask[idx], labels[idx], time_mask=train_cfg["time_mask"],
                                 freq_mask=train_cfg["freq_mask"], generator=generator, device=device)

        bar = tqdm(range(steps_per_epoch), desc=f"{fold} epoch {epoch}/{epochs}", unit="step")
        next_batch = batch(0)
        for step_in_epoch in bar:
            step = (epoch - 1) * steps_per_epoch + step_in_epoch
            lr = learning_rate(step, total=total_steps, warmup=warmup_steps, peak=train_cfg["learning_rate"],
                               floor=train_cfg["lr_floor"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, mask, y = next_batch
            loss, logits = optimisation_step(model, optimizer, scaler, next_batch, device=device, precision=precision)
            correct += (logits.argmax(dim=1) == y).sum()
            # Nothing above waits for a GPU: the next batch is prepared on the CPU while this step runs there.
            if step_in_epoch + 1 < steps_per_epoch:
                next_batch = batch(step_in_epoch + 1)
            loss_value = loss.item()
            if not math.isfinite(loss_value):  # the weights that gave it are already diverged: nothing here is "good"
                raise AsdError(f"training fold '{fold}' stopped: the loss became {loss_value} at epoch {epoch}, "
                               f"step {step_in_epoch + 1}. Lower train.learning_rate or set train.precision: fp32, "
                               "then rerun (a changed setting trains from scratch).")
            loss_sum += loss_value * len(y)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")
        correct = int(correct)
        seconds = time.perf_counter() - started
        row = {"epoch": epoch, "loss": loss_sum / len(manifest), "accuracy": correct / len(manifest),
               "learning_rate": lr, "seconds": seconds, "clips_per_second": len(manifest) / seconds,
               "device": str(device), "precision": precision, "backbone": backbone_label(identity)}
        history.append(row)
        log.info("epoch %d: loss %.4f, accuracy %.3f, lr %.2e, %.1f s, %.1f clips/s", epoch, row["loss"],
                 row["accuracy"], lr, seconds, row["clips_per_second"])
        ckpt = checkpoint_dict(model, epoch=epoch, head=head, backbone=identity, classes=classes,
                               subcenters=subcenters, metrics={k: row[k] for k in ("loss", "accuracy")})
        ckpt.update(fold=fold, train_settings=train_cfg, parameters={"total": total_params, "trainable": trainable_params})
        _save_epoch(state_dir, checkpoint_paths[epoch - 1], ckpt, optimizer, history, run_key)
        write_csv(log_path, pd.DataFrame(history))
        if os.environ.get(CRASH_AFTER_EPOCH) == str(epoch):
            os.killpg(os.getpgid(0), signal.SIGKILL)  # the whole session: Snakemake and this job, as a hard kill does
    write_csv(log_path, pd.DataFrame(history))  # also when a resumed run had no epoch left to train
    # The run is complete: its resume state has served. A later run of this rule (--forcerun, or changed
    # inputs) trains from scratch; the outputs are hard links and survive.
    shutil.rmtree(state_dir, ignore_errors=True)


def _save_epoch(state_dir: Path, out_path: str, ckpt: dict, optimizer, history: list, run_key: str) -> None:
    """Epoch checkpoint into the state dir (hard-linked to the rule's output), then the resume state."""
    state_dir.mkdir(parents=True, exist_ok=True)
    kept = state_dir / Path(out_path).name
    with atomic_path(kept) as tmp:
        torch.save(ckpt, tmp)
    _link(kept, out_path)
    with atomic_path(state_dir / "last.pt") as tmp:
        torch.save({"run_key": run_key, "epoch": ckpt["epoch"], "history": history,
                    "optimizer": optimizer.state_dict(), "state": ckpt["state"]}, tmp)


def _link(source: Path, dest: str) -> None:
    """Hard link (no second copy on disk); Snakemake may delete ``dest`` before a rerun, never ``source``."""
    tmp = Path(dest).with_name(f".{Path(dest).name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # file systems without hard links
        tmp.write_bytes(source.read_bytes())
    os.replace(tmp, dest)


def _loads(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception:  # missing, truncated or foreign: torch raises several types
        return False


def _resume(state_dir: Path, run_key: str, model: ASDModel, optimizer, checkpoint_paths: list[str]):
    """(history, first epoch to run); restores model and optimizer from the last finished epoch of this run."""
    last = state_dir / "last.pt"
    if not last.exists():
        return [], 1
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as err:
        log.warning("ignoring unreadable resume state %s (%s); training from scratch", last, err)
        return [], 1
    if state.get("run_key") != run_key:
        log.info("resume state %s belongs to another configuration; training from scratch", last)
        return [], 1
    kept = [state_dir / Path(checkpoint_paths[e - 1]).name for e in range(1, state["epoch"] + 1)]
    damaged = [p for p in kept if not _loads(p)]
    if damaged:
        log.warning("kept checkpoints %s are damaged; training from scratch", [str(p) for p in damaged])
        return [], 1
    model.load_trained_state(state["state"])
    optimizer.load_state_dict(state["optimizer"])
    for epoch in range(1, state["epoch"] + 1):  # outputs Snakemake removed as incomplete come back
        _link(state_dir / Path(checkpoint_paths[epoch - 1]).name, checkpoint_paths[epoch - 1])
    log.info("resuming after epoch %d from %s", state["epoch"], last)
    return state["history"], state["epoch"] + 1
