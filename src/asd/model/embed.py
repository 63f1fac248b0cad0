"""Per-epoch embeddings: every cached clip of one machine type through one epoch's model, and through
the frozen backbone alone (the baseline every table compares against).

Output HDF5 (``results/embeddings/<fold>/<machine>/{epoch_<N>,frozen}.h5``):
``embeddings`` [N, E] float32, ``spectrum`` [N, 128] (each clip's mean log-mel spectrum over its
real frames minus its own mean: a gain-invariant, model-independent description that the
noise-only test compares), ``manifest/<column>`` as in the feature file, and attributes (system, epoch
(0 for frozen), backbone label, precision).
"""

from __future__ import annotations

import functools
import logging

import h5py
import numpy as np
import torch
from tqdm import tqdm

from asd.device import autocast, resolve_device, resolve_precision
from asd.errors import AsdError
from asd.data.features import load_features
from asd.store import write_manifest_group
from asd.io import atomic_path
from asd.model.asd_model import (backbone_label, build_backbone, load_epoch_checkpoint, load_trained_epoch,
                                 read_epoch_checkpoint)

log = logging.getLogger(__name__)


def mean_spectrum(fbank: np.ndarray, frame_padding_mask: np.ndarray) -> np.ndarray:
    """[N, frames, bins] fbank, [N, frames] padding mask -> [N, bins] mean log spectrum minus its mean."""
    valid = (~frame_padding_mask).astype(np.float32)[:, :, None]  # [N, frames, 1]
    spectrum = (fbank.astype(np.float32) * valid).sum(1) / np.maximum(valid.sum(1), 1)  # [N, bins]
    return spectrum - spectrum.mean(axis=1, keepdims=True)  # a gain is an offset in the log domain


def _embed_all(fbank: torch.Tensor, frame_mask: torch.Tensor, embed, *, dev: torch.device, precision: str,
               batch_size: int, desc: str) -> np.ndarray:
    """[N, frames, 128] fbank through ``embed(x, mask)`` in batches -> [N, E] float32 (non-finite refused by callers)."""
    chunks = []
    for start in tqdm(range(0, len(fbank), batch_size), desc=desc, unit="batch"):
        x = fbank[start:start + batch_size].to(dev, non_blocking=True).float()
        with autocast(dev, precision):
            chunks.append(embed(x, frame_mask[start:start + batch_size].to(dev)).float().cpu())
    return torch.cat(chunks).numpy()


def _write_embeddings(out_path: str, embeddings: np.ndarray, *, features_path: str, source: str, spectrum: np.ndarray,
                      manifest, attrs: dict) -> None:
    if not np.isfinite(embeddings).all():
        raise AsdError(f"embeddings of {features_path} with {source} are not finite; the checkpoint is damaged: "
                       f"delete it and rerun the 'train' rule.")
    with atomic_path(out_path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("embeddings", data=embeddings)
            h5.create_dataset("spectrum", data=spectrum)
            write_manifest_group(h5.create_group("manifest"), manifest)
            h5.attrs.update(complete=True, **attrs)
    log.info("wrote %s: %d clips x %d dims (%s, %s)", out_path, *embeddings.shape, attrs["precision"],
             attrs["backbone"])


def frozen_embedding(backbone, fbank: torch.Tensor, frame_padding_mask: torch.Tensor) -> torch.Tensor:
    """The frozen-backbone baseline: the last kept block's tokens, mean-pooled over the clip's real tokens.

    fbank [B, frames, 128], frame mask [B, frames] (True = padding) -> [B, D] float32.
    """
    tokens, token_mask = backbone.forward_fbank(fbank, frame_padding_mask)  # [B, T, D], [B, T] or None
    tokens = tokens.float()
    if token_mask is None:
        return tokens.mean(dim=1)
    valid = (~token_mask).float()[:, :, None]  # [B, T, 1]
    return (tokens * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)


@torch.no_grad()
def extract_epoch_embeddings(*, checkpoint_paths: list[str], features_path: str, out_paths: list[str],
                             backbone_settings: dict, batch_size: int = 64, device: str = "cuda",
                             precision: str = "auto", frozen_path: str | None = None) -> None:
    """Every clip of one feature file through each epoch checkpoint of one run, into one file per epoch;
    with ``frozen_path``, also through the backbone alone (the frozen baseline system, see ``frozen_embedding``).

    The backbone and the features are loaded once; each epoch only swaps the trained tensors
    (LoRA adapters, pooling, projection, ArcFace), which is all an epoch checkpoint holds.
    """
    if len(checkpoint_paths) != len(out_paths):
        raise ValueError(f"{len(checkpoint_paths)} checkpoints but {len(out_paths)} output paths")
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    features = load_features(features_path)
    frame_mask = features.frame_padding_mask()  # [N, frames]
    fbank = torch.from_numpy(features.fbank)
    spectrum = mean_spectrum(features.fbank, frame_mask.numpy())
    run = dict(dev=dev, precision=precision, batch_size=batch_size)
    first = read_epoch_checkpoint(checkpoint_paths[0])  # a damaged or foreign one is reported before anything runs
    if frozen_path is not None:
        backbone, identity = build_backbone(backbone_settings)
        backbone = backbone.to(dev).eval()
        embeddings = _embed_all(fbank, frame_mask, functools.partial(frozen_embedding, backbone), desc="embed frozen",
                                **run)
        _write_embeddings(frozen_path, embeddings, features_path=features_path, source="the frozen backbone",
                          spectrum=spectrum, manifest=features.manifest,
                          attrs=dict(epoch=0, system="frozen", backbone=backbone_label(identity),
                                     random_init=bool(identity["random_init"]), precision=precision))
        del backbone
    model, _ = load_epoch_checkpoint(checkpoint_paths[0], backbone_settings=backbone_settings, device=dev, ckpt=first)
    label = backbone_label(first["backbone"])
    for checkpoint_path, out_path in zip(checkpoint_paths, out_paths):
        ckpt = first if checkpoint_path == checkpoint_paths[0] else read_epoch_checkpoint(checkpoint_path)
        if ckpt["backbone"]["sha256"] != first["backbone"]["sha256"] or ckpt["head"] != first["head"]:
            raise AsdError(f"checkpoint {checkpoint_path} belongs to another run than {checkpoint_paths[0]}; "
                           f"delete the fold's checkpoints and rerun the 'train' rule.")
        load_trained_epoch(model, checkpoint_path, ckpt)
        embeddings = _embed_all(fbank, frame_mask, model.embed, desc=f"embed epoch {ckpt['epoch']}", **run)
        _write_embeddings(out_path, embeddings, features_path=features_path, source=checkpoint_path,
                          spectrum=spectrum, manifest=features.manifest,
                          attrs=dict(epoch=ckpt["epoch"], system=f"epoch_{ckpt['epoch']}", backbone=label,
                                     random_init=bool(ckpt["backbone"]["random_init"]), precision=precision))
