"""The fbank cache: equal to torchaudio's Kaldi fbank computed directly, crop/pad, masks, resume."""

import h5py
import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio

from asd.model.beats import FBANK_MEAN, FBANK_STD
from asd.data.features import FLUSH_EVERY, cache_features, load_features, num_frames
from conftest import SAMPLE_RATE, tone_clip


def write_clips(root, seconds_list, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i, seconds in enumerate(seconds_list):
        path = root / f"section_00_source_train_normal_{i:04d}_a_1.wav"
        sf.write(path, tone_clip(rng, f0=120 + 10 * i, seconds=seconds), SAMPLE_RATE, subtype="PCM_16")
        rows.append(dict(machine="fan", path=str(path), file=path.name, split="train", domain="source",
                         label="normal", attributes="a_1"))
    return pd.DataFrame(rows)


def direct_fbank(path, clip_samples):
    samples, rate = sf.read(path, dtype="float32")  # int16 PCM / 32768, as torchaudio.load would give
    waveform = torch.from_numpy(samples)[None]  # [1, samples]
    padded = torch.zeros(1, clip_samples)
    n = min(clip_samples, waveform.shape[1])
    padded[:, :n] = waveform[:, :n]
    fb = torchaudio.compliance.kaldi.fbank(padded * 2**15, num_mel_bins=128, sample_frequency=rate,
                                           frame_length=25, frame_shift=10)
    return (fb - FBANK_MEAN) / (2 * FBANK_STD)


def test_cached_features_equal_torchaudio_fbank(tmp_path):
    # 3 s clips cropped to 2 s, one 1.2 s clip zero-padded to 2 s
    manifest = write_clips(tmp_path, [3.0, 3.0, 1.2])
    out = tmp_path / "fan.h5"
    cache_features(manifest=manifest, machine="fan", out_path=out, sample_rate=SAMPLE_RATE, channel_policy="refuse",
                   clip_seconds=2.0, dtype="float32")
    features = load_features(out)
    assert features.fbank.shape == (3, num_frames(32000, SAMPLE_RATE), 128) == (3, 198, 128)
    for i, path in enumerate(manifest["path"]):
        expected = direct_fbank(path, 32000).numpy()
        np.testing.assert_allclose(features.fbank[i], expected, atol=1e-5, rtol=0)
    assert list(features.num_samples) == [32000, 32000, 19200]
    mask = features.frame_padding_mask()
    assert mask[:2].sum() == 0 and mask[2].sum() == 198 - 120  # 19200 real samples = 120 frames of 160
    assert list(features.manifest["file"]) == list(manifest["file"])


def test_float16_storage_and_split_selection(tmp_path):
    manifest = write_clips(tmp_path, [2.0, 2.0])
    manifest.loc[1, "split"] = "test"
    out = tmp_path / "fan16.h5"
    cache_features(manifest=manifest, machine="fan", out_path=out, sample_rate=SAMPLE_RATE, channel_policy="refuse",
                   clip_seconds=2.0, dtype="float16")
    with h5py.File(out) as h5:
        assert h5["fbank"].dtype == np.float16 and h5["fbank"].chunks == (1, 198, 128)
    train = load_features(out, splits=["train"])
    assert len(train.manifest) == 1 and train.manifest.at[0, "split"] == "train"
    np.testing.assert_allclose(train.fbank[0].astype(np.float32), direct_fbank(manifest.at[0, "path"], 32000).numpy(),
                               atol=2e-3)  # float16 rounding of values in [-2.4, 1]


def test_interrupted_extraction_resumes_from_the_partial_file(tmp_path):
    manifest = write_clips(tmp_path, [1.0] * (FLUSH_EVERY + 3))
    out = tmp_path / "fan.h5"
    reference = tmp_path / "ref.h5"
    cache_features(manifest=manifest, machine="fan", out_path=reference, sample_rate=SAMPLE_RATE,
                   channel_policy="refuse", clip_seconds=1.0, dtype="float32")
    # a partial file as a killed job leaves it: the first block done, the rest zeros
    partial = tmp_path / "fan.h5.partial"
    with h5py.File(reference) as src, h5py.File(partial, "w") as dst:
        for name in ("fbank", "num_samples"):
            dst.create_dataset(name, data=np.zeros_like(src[name][()]), chunks=src[name].chunks)
            dst[name][:FLUSH_EVERY] = src[name][:FLUSH_EVERY]
        src.copy("manifest", dst)
        dst.attrs.update(dict(src.attrs), done=FLUSH_EVERY, complete=False)
        dst["fbank"][0] = 7.0  # marker: a resumed run must not recompute the finished block
    cache_features(manifest=manifest, machine="fan", out_path=out, sample_rate=SAMPLE_RATE, channel_policy="refuse",
                   clip_seconds=1.0, dtype="float32")
    assert not partial.exists()
    resumed, full = load_features(out), load_features(reference)
    assert (resumed.fbank[0] == 7.0).all()
    np.testing.assert_array_equal(resumed.fbank[1:], full.fbank[1:])
