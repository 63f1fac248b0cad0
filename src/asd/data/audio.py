"""Reading WAV clips, with a clear error for every format problem a user can fix.

DCASE clips are mono 16 kHz 16-bit PCM WAV. Anything else (another rate, several channels,
another container, a damaged or empty file) is refused with a message naming the file and
the fix, or, for multi-channel input, down-mixed when the user chose a channel policy.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf

from asd.errors import AsdError

CHANNEL_POLICIES = ("refuse", "mean", "first")
# libsndfile's container names for RIFF WAV and its extensible variant.
_WAV_FORMATS = ("WAV", "WAVEX")


def probe_audio(path: str | os.PathLike) -> tuple[int, int, int]:
    """Read only the header: ``(sample_rate, channels, frames)``; AsdError if not a readable WAV."""
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as error:
        raise AsdError(
            f"{path}: cannot read it as audio ({error}); replace it with an intact 16-bit PCM WAV file "
            "(re-download or re-extract the dataset) or delete it."
        ) from error
    if info.format not in _WAV_FORMATS:
        raise AsdError(
            f"{path}: is {info.format_info or info.format}, not WAV; convert it to 16-bit PCM WAV "
            "(e.g. `sox in out.wav` or `ffmpeg -i in out.wav`) or remove it."
        )
    return info.samplerate, info.channels, info.frames


def probe_usable_audio(
    path: str | os.PathLike, *, expected_sample_rate: int, channel_policy: str
) -> tuple[int, int, int]:
    """``probe_audio``, then AsdError if a clip with this header cannot be used under the configured settings."""
    sample_rate, channels, frames = probe_audio(path)
    if channel_policy not in CHANNEL_POLICIES:
        raise AsdError(
            f"audio.channel_policy is {channel_policy!r}; set it to one of {', '.join(CHANNEL_POLICIES)}."
        )
    if frames == 0:
        raise AsdError(f"{path}: holds no samples; replace it with the intact clip or delete it.")
    if sample_rate != expected_sample_rate:
        raise AsdError(
            f"{path}: sample rate is {sample_rate} Hz, expected {expected_sample_rate} Hz; resample the "
            f"clips to {expected_sample_rate // 1000} kHz (e.g. `sox in.wav -r {expected_sample_rate} out.wav`) "
            "or set `audio.sample_rate`."
        )
    if channels > 1 and channel_policy == "refuse":
        raise AsdError(
            f"{path}: has {channels} channels, expected mono; set `audio.channel_policy: mean` "
            "(average the channels) or `first` (keep channel 0), or down-mix the files beforehand."
        )
    return sample_rate, channels, frames


def load_audio(
    path: str | os.PathLike, *, sample_rate: int = 16000, channel_policy: str = "refuse"
) -> np.ndarray:
    """Load a clip as float32 samples in [-1, 1], shape [samples]; multi-channel input per policy."""
    probe_usable_audio(path, expected_sample_rate=sample_rate, channel_policy=channel_policy)
    try:
        samples, _ = sf.read(str(path), dtype="float32", always_2d=True)  # [samples, channels]
    except (sf.SoundFileError, RuntimeError) as error:
        raise AsdError(
            f"{path}: the header is readable but the audio data is not ({error}); replace it with an "
            "intact copy (re-download or re-extract the dataset) or delete it."
        ) from error
    if channel_policy == "first":
        return np.ascontiguousarray(samples[:, 0])
    return samples.mean(axis=1, dtype=np.float32)  # [samples]; a no-op average for mono input

