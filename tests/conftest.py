"""Shared fixtures: small real feature files built through the real WAV -> fbank -> HDF5 path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from asd.data.features import cache_features

REPO = Path(__file__).resolve().parents[1]
# The workplace's shared reference data (conformance outputs, real clips): $ASD_SHARED, else the
# shared/ folder beside the checkout, else /work/shared. Tests that need it skip without it.
SHARED = next((p for p in (Path(os.environ.get("ASD_SHARED", "/nonexistent")), REPO.parent / "shared",
                           Path("/work/shared")) if p.is_dir()), REPO.parent / "shared")
SAMPLE_RATE = 16000
TINY_BACKBONE = {"checkpoint": None, "random_init_size": "demo", "num_layers": 4}


def tone_clip(rng: np.random.Generator, *, f0: float, seconds: float, noise: float = 0.05) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    hum = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h for h in (1, 2, 3))
    return (0.2 * hum + noise * rng.standard_normal(len(t))).astype(np.float32) * 0.5


def write_fold(root: Path, *, machines=("fanA", "pumpB"), clips_per_class: int = 6, seconds: float = 2.0,
               seed: int = 0) -> list[Path]:
    """Two machine types (one with attributes, one hidden) as WAVs, cached into feature files."""
    rng = np.random.default_rng(seed)
    rows = []
    for m, machine in enumerate(machines):
        hidden = m % 2 == 1
        for c, (domain, attr, f0) in enumerate([("source", "spd_1", 100.0), ("source", "spd_2", 180.0),
                                                ("target", "spd_3", 260.0)]):
            for i in range(clips_per_class):
                attributes = "noAttribute" if hidden else attr
                name = f"section_00_{domain}_train_normal_{c * 100 + i:04d}_{attributes}.wav"
                path = root / "wav" / machine / "train" / name
                path.parent.mkdir(parents=True, exist_ok=True)
                length = seconds if i % 3 else seconds * 0.7  # some clips shorter: exercises padding
                sf.write(path, tone_clip(rng, f0=f0 * (1 + 0.4 * m), seconds=length), SAMPLE_RATE, subtype="PCM_16")
                rows.append(dict(dataset="synthetic", machine=machine, section="00", split="train", file=name,
                                 path=str(path), domain=domain, label="normal", attributes=attributes,
                                 supplemental_kind="", duration=length, sample_rate=SAMPLE_RATE, channels=1))
    manifest = pd.DataFrame(rows)
    paths = []
    for machine in machines:
        out = root / "features" / f"{machine}.h5"
        cache_features(manifest=manifest, machine=machine, out_path=out, sample_rate=SAMPLE_RATE,
                       channel_policy="refuse", clip_seconds=seconds, dtype="float32")
        paths.append(out)
    return paths


def train_settings(**train) -> dict:
    base = {"epochs": 3, "batch_size": 8, "learning_rate": 1e-3, "weight_decay": 0.01, "warmup_epochs": 0.5, "lr_floor": 0.0,
            "time_mask": 20, "freq_mask": 12, "seed": 0, "device": "cpu", "precision": "fp32"}
    base.update(train)
    head = {"lora_rank": 8, "lora_alpha": 8, "lora_dropout": 0.0, "lora_blocks": [0, 1, 2, 3],
            "embedding_dim": 32, "arcface_scale": 30.0, "arcface_margin": 0.2, "arcface_subcenters": 4}
    return {"backbone": dict(TINY_BACKBONE), "model": head, "train": base}


@pytest.fixture(scope="session")
def synthetic_fold(tmp_path_factory) -> list[Path]:
    return write_fold(tmp_path_factory.mktemp("fold"))


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """One local run of the whole workflow on the tiny test overlay, shared by the workflow tests."""
    from workflow_runner import run_workflow

    workdir = tmp_path_factory.mktemp("reference")
    run_workflow(workdir)
    return workdir
