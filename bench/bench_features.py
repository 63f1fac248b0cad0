"""Benchmark: the fbank cache. WAV -> fbank -> HDF5 throughput, and an epoch's data loading from
HDF5 (train.py's path) against computing fbank on the fly, both against a training step.

Generated 10 s, 16 kHz, 16-bit WAVs (tones + noise) go through ``asd.data.features.cache_features``.
The HDF5 data time of an epoch counts ``load_features`` (train.py does it once per run; counted
here in every epoch, a pessimistic bound) plus, per batch, ``fbank[idx].float()`` and
``spec_augment`` exactly as train.py does; on the fly means WAV read + crop/pad + ``fbank`` per clip.
The targets: the cache writes >= 100 clips/s, and data time < 5 % of the training step time (same
batch size, in the precision ``train.precision: auto`` picks here: bf16 autocast where bf16 is native).

    .venv/bin/python bench/bench_features.py [--clips 64] [--batch 8] [--out results/bench/features.json]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from asd.data.audio import load_audio
from asd.model.beats import SAMPLE_RATE, fbank
from asd.data.dataset import MANIFEST_COLUMNS
from asd.device import resolve_precision
from asd.data.features import cache_features, crop_or_pad, load_features
from asd.model.train import spec_augment
from bench_train import TrainStep
from common import interleaved, machine, standalone, target

CLIP_SECONDS, MACHINE = 10.0, "fan"
TIME_MASK, FREQ_MASK = 80, 24  # config.yaml's train.time_mask / freq_mask
DATA_FRACTION_TARGET, CACHE_CLIPS_PER_S_TARGET = 0.05, 100.0


def write_clips(folder: Path, count: int) -> pd.DataFrame:
    """``count`` 16-bit mono WAVs (a few tones in noise) and their manifest rows."""
    rng = np.random.default_rng(0)
    time = np.arange(int(CLIP_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    rows = []
    for index in range(count):
        tones = sum(np.sin(2 * np.pi * rng.uniform(100, 4000) * time) for _ in range(3)) / 6
        clip = (tones + 0.05 * rng.standard_normal(time.size)).astype(np.float32)
        name = f"section_00_source_train_normal_{index:04d}_noAttribute.wav"
        sf.write(folder / name, clip, SAMPLE_RATE, subtype="PCM_16")
        rows.append({"dataset": "dev", "machine": MACHINE, "section": "00", "split": "train", "file": name,
                     "path": str(folder / name), "domain": "source", "label": "normal", "attributes": "noAttribute",
                     "supplemental_kind": "", "duration": CLIP_SECONDS, "sample_rate": SAMPLE_RATE, "channels": 1})
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def hdf5_epoch(path: Path, batch: int) -> float:
    """One epoch of train.py's data path from the cache; returns the number of batches served."""
    features = load_features(path, splits=["train"])
    cached = torch.from_numpy(features.fbank)  # [N, F, 128], storage dtype
    valid_frames = (~features.frame_padding_mask()).sum(dim=1)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(cached), generator=generator)
    for start in range(0, len(cached), batch):
        idx = order[start:start + batch]
        spec_augment(cached[idx].float(), valid_frames[idx], time_mask=TIME_MASK, freq_mask=FREQ_MASK, generator=generator)
    return len(range(0, len(cached), batch))


def on_the_fly_epoch(manifest: pd.DataFrame, batch: int) -> int:
    """The same epoch computing every clip's fbank from its WAV instead."""
    clip_samples = int(CLIP_SECONDS * SAMPLE_RATE)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(manifest), generator=generator)
    for start in range(0, len(manifest), batch):
        clips = [crop_or_pad(load_audio(manifest.at[int(i), "path"], sample_rate=SAMPLE_RATE), clip_samples)[0]
                 for i in order[start:start + batch]]
        features = fbank(torch.from_numpy(np.stack(clips)))  # [B, F, 128]
        valid = torch.full((len(clips),), features.size(1))
        spec_augment(features, valid, time_mask=TIME_MASK, freq_mask=FREQ_MASK, generator=generator)
    return len(range(0, len(manifest), batch))


def run(*, clips: int = 64, batch: int = 8, rounds: int = 3) -> dict:
    with tempfile.TemporaryDirectory(prefix="asd-bench-features-") as tmp:
        folder = Path(tmp)
        manifest = write_clips(folder, clips)
        caches = iter(range(rounds + 1))

        def cache() -> None:
            cache_features(manifest=manifest, machine=MACHINE, out_path=folder / f"cache{next(caches)}.h5",
                           sample_rate=SAMPLE_RATE, channel_policy="refuse", clip_seconds=CLIP_SECONDS, dtype="float16")

        # The step training would run here: an emulated bf16 step would be slow and flatter the data time.
        precision = resolve_precision("auto", torch.device("cpu"))
        step = TrainStep(batch=batch, precision=precision)
        timings = interleaved({"cache": cache, "hdf5 epoch": lambda: hdf5_epoch(folder / "cache0.h5", batch),
                               "on-the-fly epoch": lambda: on_the_fly_epoch(manifest, batch), "train step": step},
                              rounds=rounds)
    batches = len(range(0, clips, batch))
    step_s = timings["train step"]["best_s"]
    per_batch = {name: timings[name]["best_s"] / batches for name in ("hdf5 epoch", "on-the-fly epoch")}
    fractions = {name: seconds / step_s for name, seconds in per_batch.items()}
    cache_clips_per_s = clips / timings["cache"]["best_s"]
    return {
        "machine": machine(),
        "setup": {"clips": clips, "batch": batch, "rounds": rounds, "clip_seconds": CLIP_SECONDS, "dtype": "float16",
                  "train_step_precision": precision},
        "cache_clips_per_s": cache_clips_per_s,
        "data_s_per_batch": per_batch,
        "train_step_s": step_s,
        "data_fraction_of_step": fractions,
        "hdf5_speedup_over_on_the_fly": per_batch["on-the-fly epoch"] / per_batch["hdf5 epoch"],
        "timings": timings,
        "targets": [target("feature cache WAV → fbank → HDF5, 10 s clips", cache_clips_per_s, CACHE_CLIPS_PER_S_TARGET, unit="clips/s"),
                    target(f"HDF5 data time / training step time ({precision})", fractions["hdf5 epoch"] * 100,
                           DATA_FRACTION_TARGET * 100, unit="%", higher_is_better=False)],
    }


def markdown(result: dict) -> str:
    setup, per_batch, fractions = result["setup"], result["data_s_per_batch"], result["data_fraction_of_step"]
    return "\n".join([
        f"### Feature cache ({setup['clips']} generated 10 s clips, {setup['dtype']} HDF5, batch {setup['batch']})",
        "",
        f"WAV -> fbank -> HDF5: {result['cache_clips_per_s']:.1f} clips/s.",
        "",
        f"| data path | s / batch | % of a training step ({setup['train_step_precision']}, {result['train_step_s']:.2f} s) |",
        "| --- | ---: | ---: |",
        f"| HDF5 cache (load_features + index + spec_augment) | {per_batch['hdf5 epoch']:.4f} | {fractions['hdf5 epoch'] * 100:.2f} % |",
        f"| on the fly (WAV + fbank + spec_augment) | {per_batch['on-the-fly epoch']:.4f} | {fractions['on-the-fly epoch'] * 100:.2f} % |",
        "",
        f"The cache serves a batch {result['hdf5_speedup_over_on_the_fly']:.0f}x faster than computing fbank on the fly.",
    ])


if __name__ == "__main__":
    standalone(name="features", doc=__doc__, run=run, markdown=markdown, options={"clips": 64, "batch": 8, "rounds": 3})
