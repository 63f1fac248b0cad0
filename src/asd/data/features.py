"""The fbank cache: BEATs' front end computed once per clip and stored in HDF5.

One file per dataset and machine type (``results/features/<dataset>/<machine>.h5``):

- ``fbank``        [N, frames, 128] float16|float32, chunked one clip per chunk
- ``num_samples``  [N] int64, real (unpadded) samples of each clip, so the padding mask is exact
- ``manifest/<column>``  the manifest rows of the N clips (strings / numbers), in the same order
- attributes: ``sample_rate``, ``clip_seconds``, ``complete`` (written last)

Later rules read these files, never WAV. Extraction writes to ``<file>.partial`` and renames it
when complete; an interrupted run continues from the last flushed clip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from asd.data.audio import load_audio
from asd.model.beats import fbank, frame_padding_mask
from asd.errors import AsdError
from asd.store import read_manifest_group, write_manifest_group

log = logging.getLogger(__name__)

NUM_MEL_BINS = 128
FLUSH_EVERY = 64  # clips between progress flushes of the partial file


def num_frames(num_samples: int, sample_rate: int) -> int:
    """Kaldi frame count with snip_edges: 25 ms windows every 10 ms."""
    window, shift = sample_rate * 25 // 1000, sample_rate * 10 // 1000
    return 1 + (num_samples - window) // shift


def crop_or_pad(waveform: np.ndarray, length: int) -> tuple[np.ndarray, int]:
    """First ``length`` samples, zero-padded at the end; returns (clip, real samples)."""
    real = min(len(waveform), length)
    clip = np.zeros(length, dtype=np.float32)
    clip[:real] = waveform[:real]
    return clip, real


def cache_features(*, manifest: pd.DataFrame, machine: str, out_path: str | os.PathLike, sample_rate: int,
                   channel_policy: str, clip_seconds: float, dtype: str, manifest_path: str = "manifest") -> None:
    """Compute the fbank of every clip of ``machine`` in ``manifest`` into ``out_path`` (resumable)."""
    rows = manifest[manifest["machine"] == machine].reset_index(drop=True)
    if rows.empty:
        raise AsdError(f"{manifest_path} has no clips of machine type '{machine}'; check the dataset's "
                       f"machine_types in the config against the folders under its root.")
    clip_samples = int(round(clip_seconds * sample_rate))
    frames = num_frames(clip_samples, sample_rate)
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    # A partial file is continued only by a run that would write the same thing.
    resume_key = _digest(json.dumps({"clips": list(rows["path"]), "sample_rate": sample_rate, "dtype": dtype,
                                     "channel_policy": channel_policy, "clip_seconds": clip_seconds}))
    done = _resume_point(partial, resume_key)
    if done == 0:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(partial, "w") as h5:
            # fletcher32: a damaged clip is refused when read instead of feeding garbage to training.
            h5.create_dataset("fbank", shape=(len(rows), frames, NUM_MEL_BINS), dtype=dtype,
                              chunks=(1, frames, NUM_MEL_BINS), fletcher32=True)
            h5.create_dataset("num_samples", shape=(len(rows),), dtype="int64")
            write_manifest_group(h5.create_group("manifest"), rows)
            h5.attrs.update(sample_rate=sample_rate, clip_seconds=clip_seconds, done=0, complete=False,
                            resume_key=resume_key)
    else:
        log.info("resuming %s after %d of %d clips", partial, done, len(rows))
    with h5py.File(partial, "a") as h5:
        for start in tqdm(range(done, len(rows), FLUSH_EVERY), desc=f"fbank {machine}", unit="block"):
            stop = min(start + FLUSH_EVERY, len(rows))
            for i in range(start, stop):
                waveform = load_audio(rows.at[i, "path"], sample_rate=sample_rate, channel_policy=channel_policy)
                clip, real = crop_or_pad(waveform, clip_samples)
                feats = fbank(torch.from_numpy(clip)[None], sample_rate=sample_rate)[0]  # [frames, 128]
                h5["fbank"][i] = feats.numpy().astype(dtype)
                h5["num_samples"][i] = real
            h5.attrs["done"] = stop
            h5.flush()
        h5.attrs["fingerprint"] = _content_fingerprint(h5)
        h5.attrs["complete"] = True
    os.replace(partial, out_path)
    log.info("wrote %s: %d clips x %d frames x %d bins (%s)", out_path, len(rows), frames, NUM_MEL_BINS, dtype)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _resume_point(partial: Path, resume_key: str) -> int:
    """Clips already done in a partial file written with the same resume key; 0 (start over) otherwise."""
    if not partial.exists():
        return 0
    try:
        with h5py.File(partial, "r") as h5:
            return int(h5.attrs["done"]) if h5.attrs.get("resume_key") == resume_key else 0
    except (OSError, KeyError):
        return 0  # unreadable partial file (killed while writing its header): start over


def _content_fingerprint(h5: h5py.File) -> str:
    """SHA-256 of what training reads: every clip's fbank, its real length, its name and the clip settings."""
    digest = hashlib.sha256()
    fbank = h5["fbank"]
    for start in range(0, fbank.shape[0], FLUSH_EVERY):
        digest.update(np.ascontiguousarray(fbank[start:start + FLUSH_EVERY]).tobytes())
    digest.update(h5["num_samples"][()].tobytes())
    digest.update("\n".join(read_manifest_group(h5["manifest"])["file"]).encode())
    digest.update(f"{h5.attrs['sample_rate']}|{h5.attrs['clip_seconds']}|{fbank.dtype}".encode())
    return digest.hexdigest()


def feature_fingerprint(path: str | os.PathLike) -> str:
    """The content fingerprint stored in a complete feature file (cheap: an attribute)."""
    try:
        with h5py.File(path, "r") as h5:
            return str(h5.attrs["fingerprint"])
    except (OSError, KeyError):
        raise AsdError(f"feature file {path} has no content fingerprint (written by an older version, or damaged); "
                       f"rebuild it with the 'features' rule (snakemake --forcerun {path}).") from None


@dataclass
class FeatureSet:
    """The cached features of one machine type, in memory."""

    fbank: np.ndarray  # [N, frames, 128]
    num_samples: np.ndarray  # [N]
    manifest: pd.DataFrame
    sample_rate: int
    clip_seconds: float

    def frame_padding_mask(self) -> torch.Tensor:
        """[N, frames] True where a frame holds only padding (BEATs' sample->frame mapping)."""
        clip_samples = int(round(self.clip_seconds * self.sample_rate))
        sample_mask = torch.arange(clip_samples)[None, :] >= torch.from_numpy(self.num_samples)[:, None]
        return frame_padding_mask(sample_mask, self.fbank.shape[1])


def load_features(path: str | os.PathLike, *, splits: list[str] | None = None) -> FeatureSet:
    """Read a complete feature file (optionally only some splits); a damaged file is refused."""
    path = Path(path)
    rerun = f"rebuild it with the 'features' rule (snakemake --forcerun {path})"
    if not path.is_file():
        raise AsdError(f"feature file {path} does not exist; build it with the 'features' rule (snakemake {path}).")
    try:
        with h5py.File(path, "r") as h5:
            if not h5.attrs.get("complete", False):
                raise AsdError(f"feature file {path} is incomplete; {rerun}.")
            manifest = read_manifest_group(h5["manifest"])
            keep = np.arange(len(manifest)) if splits is None else np.flatnonzero(manifest["split"].isin(splits))
            fbank_data = h5["fbank"][np.sort(keep)] if len(keep) else np.zeros((0,) + h5["fbank"].shape[1:])
            num_samples = h5["num_samples"][()][keep]
            sample_rate, clip_seconds = int(h5.attrs["sample_rate"]), float(h5.attrs["clip_seconds"])
    except (OSError, KeyError) as err:
        raise AsdError(f"feature file {path} is corrupt or truncated ({err}); {rerun}.") from None
    if len(manifest) and not np.isfinite(fbank_data[: min(len(fbank_data), 4)].astype(np.float32)).all():
        raise AsdError(f"feature file {path} holds non-finite values; {rerun}.")
    return FeatureSet(fbank=fbank_data, num_samples=num_samples, manifest=manifest.iloc[keep].reset_index(drop=True),
                      sample_rate=sample_rate, clip_seconds=clip_seconds)
