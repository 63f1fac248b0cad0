"""Supplemental clips recorded clean (without the training background) are kept; noise-only clips are not.

One synthetic machine type, written as WAVs in the DCASE layout and run through the real path
(manifest -> fbank cache -> mean log-mel spectrum -> bank): its training clips are machine sound +
factory background, as in DCASE. Three supplemental sets:

* A ``clean``: the same machine recorded without the background, at another gain (the DCASE 2025
  clean clips): far from every training clip, so the distance test alone would exclude it;
* B ``noise``: the background alone, machine off;
* C ``machine``: machine + background, like the training clips.

The bank must keep A and C and exclude B, both by the automatic test (names ignored) and by the names.
"""

import json
import logging

import h5py
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from asd.scoring.bank import PEAK_SHARE_THRESHOLD, _flat_reference, build_bank, spectral_fine_structure
from asd.model.beats import fbank
from asd.data.dataset import build_manifest, parse_clip_name
from asd.model.embed import mean_spectrum
from asd.data.features import cache_features, load_features
from asd.scoring.score import write_bank
from asd.store import write_manifest_group
from conftest import SAMPLE_RATE

SECONDS = 2.0
SETS = {"A": "clean", "B": "noise", "C": "machine"}  # set -> the word its file names carry
PER_SET = 8


def pink_noise(rng: np.random.Generator, samples: int) -> np.ndarray:
    """Factory-hall background: 1/f noise whose level drifts slowly, RMS 1."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(samples, 1 / SAMPLE_RATE), 20.0))
    noise = np.fft.irfft(spectrum, n=samples)
    noise *= 1 + 0.3 * np.interp(np.arange(samples), np.linspace(0, samples, 6), rng.uniform(-1, 1, 6))
    return noise / np.sqrt(np.mean(noise**2))


def machine_sound(rng: np.random.Generator, samples: int, f0: float) -> np.ndarray:
    """Motor hum (8 harmonics of f0) + a broadband whir around 2.5 kHz, RMS 1."""
    t = np.arange(samples) / SAMPLE_RATE
    f0 *= 1 + rng.normal(0, 0.005)
    hum = sum(0.8**h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) for h in range(1, 9))
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    spectrum *= np.exp(-0.5 * ((np.fft.rfftfreq(samples, 1 / SAMPLE_RATE) - 2500) / 500) ** 2)
    whir = np.fft.irfft(spectrum, n=samples)
    sound = hum / np.sqrt(np.mean(hum**2)) + 0.4 * whir / np.sqrt(np.mean(whir**2))
    return sound / np.sqrt(np.mean(sound**2))


def clip(rng: np.random.Generator, *, content: str, f0: float, gain_db: float, snr_db: float = 6.0) -> np.ndarray:
    """``content`` machine+background | clean | noise, at RMS ``gain_db`` dBFS, with a microphone noise floor."""
    samples = int(SECONDS * SAMPLE_RATE)
    if content == "noise":
        sound = pink_noise(rng, samples)
    elif content == "clean":
        sound = machine_sound(rng, samples, f0)
    else:
        sound = machine_sound(rng, samples, f0) + pink_noise(rng, samples) * 10 ** (-(snr_db + rng.normal(0, 1)) / 20)
    sound *= 10 ** (gain_db / 20) / np.sqrt(np.mean(sound**2))
    return (sound + 10 ** ((gain_db - 50) / 20) * rng.standard_normal(samples)).astype(np.float32)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """The machine type's WAVs (named supplemental sets), its manifest and its spectra."""
    root = tmp_path_factory.mktemp("clean") / "raw"
    rng = np.random.default_rng(7)
    source_f0 = (110.0, 121.0)  # two source-domain operating settings

    def write(split: str, name: str, sound: np.ndarray) -> None:
        path = root / "fan" / split / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, sound, SAMPLE_RATE, subtype="PCM_16")

    for i in range(24):
        write("train", f"section_00_source_train_normal_{i:04d}_spd_{i % 2}.wav",
              clip(rng, content="mix", f0=source_f0[i % 2], gain_db=rng.uniform(-30, -22)))
    for i in range(3):
        write("train", f"section_00_target_train_normal_{i:04d}_spd_9.wav",
              clip(rng, content="mix", f0=170.0, gain_db=rng.uniform(-30, -22)))
    for i in range(2):
        write("test", f"section_00_{i:04d}.wav", clip(rng, content="mix", f0=source_f0[i], gain_db=-26))
    gains = {"A": (-42, -34), "B": (-36, -26), "C": (-30, -22)}  # clean clips recorded at another gain
    content = {"A": "clean", "B": "noise", "C": "mix"}
    for s, word in SETS.items():
        for i in range(PER_SET):
            write("supplemental", f"section_00_{word}_{i:04d}.wav",
                  clip(rng, content=content[s], f0=source_f0[i % 2], gain_db=rng.uniform(*gains[s])))
    manifest = build_manifest(root, dataset="dev")
    features_path = root.parent / "fan.h5"
    cache_features(manifest=manifest, machine="fan", out_path=features_path, sample_rate=SAMPLE_RATE,
                   channel_policy="refuse", clip_seconds=SECONDS, dtype="float32")
    features = load_features(features_path)
    spectrum = mean_spectrum(features.fbank, features.frame_padding_mask().numpy())
    return features.manifest, spectrum


def one_set(layout, s: str, *, neutral: bool = False):
    """Manifest rows and spectra of the training and test clips plus supplemental set ``s`` only."""
    manifest, spectrum = layout
    word = SETS[s]
    keep = (manifest["split"] != "supplemental") | manifest["file"].str.startswith(f"section_00_{word}_")
    rows = manifest[keep].reset_index(drop=True)
    if neutral:  # what the manifest holds for names such as section_00_0003.wav
        rows.loc[rows["split"] == "supplemental", "supplemental_kind"] = "unknown"
    return rows, spectrum[keep.to_numpy()]


def bank_of(rows: pd.DataFrame, spectrum: np.ndarray, **kwargs):
    embeddings = np.random.default_rng(0).standard_normal((len(rows), 8)).astype(np.float32)
    return build_bank(rows, embeddings, name="fan", test_features=spectrum, **kwargs)


def test_names_say_clean_noise_machine(layout):
    manifest, _ = layout
    supplemental = manifest[manifest["split"] == "supplemental"]
    kinds = supplemental.groupby(supplemental["file"].str.split("_").str[2])["supplemental_kind"].agg(set)
    assert kinds.to_dict() == {"clean": {"machine"}, "machine": {"machine"}, "noise": {"noise"}}
    assert parse_clip_name("section_00_0003.wav", split="supplemental")["supplemental_kind"] == "unknown"


@pytest.mark.parametrize("s, kept", [("A", True), ("B", False), ("C", True)])
def test_automatic_test_keeps_clean_and_mixed_sets_and_excludes_noise(layout, s, kept, caplog):
    for neutral, override in ((True, None), (False, "auto")):  # neutral names; names ignored by config
        rows, spectrum = one_set(layout, s, neutral=neutral)
        with caplog.at_level(logging.WARNING, logger="asd.scoring.bank"):
            caplog.clear()
            bank = bank_of(rows, spectrum, kind_override=override)
        composition = bank.composition
        test = composition["supplemental"]["automatic_test"]
        assert composition["supplemental"]["decided_by"] == ["automatic test"]
        assert composition["counts"]["supplemental_machine"] == (PER_SET if kept else 0), test["summary"]
        assert composition["counts"]["source_bank"] == 24 + (PER_SET if kept else 0)
        assert test["kind"] == ("machine" if kept else "noise") and test["peak_test"] == "run"
        # Every decision is logged as a warning with its numbers, and recorded per clip.
        [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert record.getMessage().startswith(f"fan: {PER_SET} supplemental clip(s) of unknown kind went to the "
                                              f"automatic test: set judged {test['kind']}: ")
        assert "median peak share" in record.getMessage() and "vs threshold" in record.getMessage()
        assert len(test["distances"]) == len(test["peak_shares"]) == len(test["flags"]) == PER_SET
        json.dumps(composition)
    shares = np.array(test["peak_shares"])
    if s == "A":  # far from every training clip (it lacks the background) but carries the machine's peaks
        assert test["n_far"] == PER_SET and test["median_distance"] > 5 * test["distance_threshold"]
        assert shares.min() > 2 * PEAK_SHARE_THRESHOLD and test["n_flagged"] == 0
    if s == "B":  # far and without the machine's peaks: every clip flagged
        assert test["n_far"] == PER_SET and shares.max() < PEAK_SHARE_THRESHOLD / 2 and test["n_flagged"] == PER_SET
        assert all(e["reason"].startswith(f"automatic test: set judged noise ({PER_SET}/{PER_SET} clips flagged")
                   and "peak share" in e["reason"] for e in composition["excluded"])
    if s == "C":  # like the training clips
        assert test["median_distance"] < test["distance_threshold"] and test["n_flagged"] == 0


@pytest.mark.parametrize("s, kept", [("A", True), ("B", False), ("C", True)])
def test_names_decide_without_the_automatic_test(layout, s, kept):
    rows, spectrum = one_set(layout, s)
    composition = bank_of(rows, spectrum).composition
    assert composition["supplemental"]["decided_by"] == ["file name"]
    assert composition["supplemental"]["automatic_test"] is None
    assert composition["counts"]["supplemental_machine"] == (PER_SET if kept else 0)
    if not kept:
        assert {e["reason"] for e in composition["excluded"]} == {"name says noise"}


def test_write_bank_records_the_automatic_decision(layout, tmp_path, caplog):
    """The pipeline's bank step on all three sets with neutral names: one set, kept by majority (2 of 3 kinds)."""
    manifest, spectrum = layout
    rows = manifest.copy()
    rows.loc[rows["split"] == "supplemental", "supplemental_kind"] = "unknown"
    path = tmp_path / "epoch_1.h5"
    with h5py.File(path, "w") as h5:
        h5["embeddings"] = np.random.default_rng(0).standard_normal((len(rows), 8)).astype(np.float32)
        h5["spectrum"] = spectrum
        write_manifest_group(h5.create_group("manifest"), rows)
        h5.attrs.update(epoch=1, backbone="random-init backbone (no pre-trained weights)", complete=True)
    out = tmp_path / "bank.json"
    with caplog.at_level(logging.WARNING, logger="asd.scoring.bank"):
        write_bank(embeddings_path=str(path), out_path=str(out), machine="fan", kind_override=None,
                   use_supplemental=True)
    record = json.loads(out.read_text())
    test = record["supplemental"]["automatic_test"]
    files = rows.loc[rows["split"] == "supplemental", "file"].tolist()
    flagged = {file for file, flag in zip(files, test["flags"]) if flag}
    assert flagged == {f for f in files if f.startswith("section_00_noise_")}  # only the noise-only clips
    assert test["kind"] == "machine" and test["n_flagged"] == PER_SET and test["n_clips"] == 3 * PER_SET
    assert record["counts"]["supplemental_machine"] == 3 * PER_SET  # one verdict per set: machine by majority
    assert {"distance_threshold", "peak_share_threshold", "train_loo_median_peak_share", "summary"} <= set(test)
    assert any("set judged machine: 8/24 clips flagged" in r.getMessage() for r in caplog.records)


def test_fine_structure_of_a_flat_spectrum_is_flat():
    """White noise of another seed and level has almost no fine structure once the front end's ripple is removed."""
    noise = 0.02 * np.random.default_rng(5).standard_normal((2, 8 * SAMPLE_RATE))
    bank = fbank(torch.from_numpy(noise).float()).numpy()
    spectrum = mean_spectrum(bank, np.zeros(bank.shape[:2], bool))
    reference, _ = _flat_reference()
    flattened = np.sqrt(np.mean(spectral_fine_structure(spectrum) ** 2))  # what is left: estimation noise
    ripple = np.sqrt(np.mean(spectral_fine_structure(spectrum + reference) ** 2))  # without removing the ripple
    assert flattened < 0.3 * ripple, (flattened, ripple)
    with pytest.raises(ValueError, match=r"needs \[N, 128\] log-mel spectra"):
        spectral_fine_structure(spectrum[:, :16])
