import json

import numpy as np
import pandas as pd
import pytest

from asd.scoring.bank import build_bank, classify_supplemental
from asd.errors import AsdError

DIM = 16


def cluster(rng, centre, count, spread=0.05):
    """``count`` embeddings around direction ``centre`` (cosine distances ~ spread^2 scale)."""
    return (centre + spread * rng.standard_normal((count, DIM))).astype(np.float32)


@pytest.fixture
def centres():
    rng = np.random.default_rng(0)
    machine, noise = rng.standard_normal(DIM), rng.standard_normal(DIM)
    return machine / np.linalg.norm(machine), noise / np.linalg.norm(noise)


def make_manifest(supp_kind: str, supp_near_train: bool, centres, seed: int = 1):
    """30 train source + 3 train target + 6 supplemental + 4 test rows, with embeddings [43, DIM]."""
    rng = np.random.default_rng(seed)
    machine, noise = centres
    rows = (
        [("train", "source", f"section_00_source_train_normal_{i:04d}.wav") for i in range(30)]
        + [("train", "target", f"section_00_target_train_normal_{i:04d}.wav") for i in range(3)]
        + [("supplemental", "source", f"section_00_{supp_kind}_{i:04d}.wav") for i in range(6)]
        + [("test", "source", f"section_00_{i:04d}.wav") for i in range(4)]
    )
    manifest = pd.DataFrame(rows, columns=["split", "domain", "file"])
    manifest["supplemental_kind"] = np.where(manifest["split"] == "supplemental", supp_kind, None)
    embeddings = np.concatenate(
        [cluster(rng, machine, 33), cluster(rng, machine if supp_near_train else noise, 6), cluster(rng, machine, 4)]
    )
    return manifest, embeddings


def test_named_machine_clips_join_the_source_bank(centres):
    manifest, embeddings = make_manifest("machine", True, centres)
    bank = build_bank(manifest, embeddings, name="fan")
    counts = bank.composition["counts"]
    assert counts == {"train_source": 30, "train_target": 3, "supplemental_machine": 6, "supplemental_excluded": 0,
                      "source_bank": 36, "target_bank": 3}
    assert bank.source.shape == (36, DIM) and bank.target.shape == (3, DIM)
    np.testing.assert_array_equal(bank.source[30:], embeddings[33:39])
    np.testing.assert_array_equal(bank.target, embeddings[30:33])
    assert bank.source_files[-1] == "section_00_machine_0005.wav"
    assert bank.composition["supplemental"]["decided_by"] == ["file name"]
    json.dumps(bank.composition)  # JSON-able as written by the bank step


def test_named_noise_clips_are_excluded_with_reason(centres):
    manifest, embeddings = make_manifest("noise", False, centres)
    bank = build_bank(manifest, embeddings, name="fan")
    assert len(bank.source) == 30
    assert [entry["reason"] for entry in bank.composition["excluded"]] == ["name says noise"] * 6
    assert bank.composition["excluded"][0]["file"] == "section_00_noise_0000.wav"


@pytest.mark.parametrize("override, expected_source, reason", [("noise", 30, "config says noise"), ("machine", 36, None)])
def test_config_override_beats_file_names(override, expected_source, reason, centres):
    named = "machine" if override == "noise" else "noise"
    manifest, embeddings = make_manifest(named, True, centres)
    bank = build_bank(manifest, embeddings, name="fan", kind_override=override)
    assert len(bank.source) == expected_source
    assert bank.composition["supplemental"] == {"kind": override, "decided_by": ["config"], "automatic_test": None}
    if reason:
        assert {entry["reason"] for entry in bank.composition["excluded"]} == {reason}


@pytest.mark.parametrize("near_train, expected_kind, expected_source", [(True, "machine", 36), (False, "noise", 30)])
def test_unknown_kind_goes_to_the_automatic_test(near_train, expected_kind, expected_source, centres):
    manifest, embeddings = make_manifest("unknown", near_train, centres)
    bank = build_bank(manifest, embeddings, name="fan")
    supplemental = bank.composition["supplemental"]
    assert supplemental["kind"] == expected_kind and supplemental["decided_by"] == ["automatic test"]
    assert len(bank.source) == expected_source
    assert supplemental["automatic_test"]["n_clips"] == 6
    if expected_kind == "noise":
        reason = bank.composition["excluded"][0]["reason"]
        assert reason.startswith("automatic test: set judged noise (6/6 clips flagged")


def test_auto_override_ignores_names(centres):
    manifest, embeddings = make_manifest("machine", False, centres)  # named machine, really far away
    assert len(build_bank(manifest, embeddings, name="fan").source) == 36
    bank = build_bank(manifest, embeddings, name="fan", kind_override="auto")
    assert len(bank.source) == 30
    assert bank.composition["supplemental"]["decided_by"] == ["automatic test"]


def test_use_supplemental_false_excludes_everything(centres):
    manifest, embeddings = make_manifest("machine", True, centres)
    bank = build_bank(manifest, embeddings, name="fan", use_supplemental=False)
    assert len(bank.source) == 30
    assert {entry["reason"] for entry in bank.composition["excluded"]} == {"scoring.use_supplemental is false"}


def test_pooled_bank_when_domains_are_not_separate(centres):
    manifest, embeddings = make_manifest("machine", True, centres)
    bank = build_bank(manifest, embeddings, name="fan")
    assert set(bank.domain_banks()) == {"source", "target"}
    assert bank.domain_banks(separate=False)["all"].shape == (39, DIM)


def test_manifest_problems_are_user_errors(centres):
    manifest, embeddings = make_manifest("machine", True, centres)
    with pytest.raises(AsdError, match=r"manifest lacks columns \['supplemental_kind'\]"):
        build_bank(manifest.drop(columns="supplemental_kind"), embeddings, name="fan")
    with pytest.raises(AsdError, match="43 manifest rows but 42 embeddings"):
        build_bank(manifest, embeddings[:42], name="fan")
    with pytest.raises(AsdError, match="supplemental_kinds.fan"):
        build_bank(manifest, embeddings, name="fan", kind_override="maybe")
    manifest.loc[manifest["split"] == "supplemental", "supplemental_kind"] = "silence"
    with pytest.raises(AsdError, match=r"supplemental_kind holds \['silence'\]"):
        build_bank(manifest, embeddings, name="fan")


def test_classify_supplemental_on_synthetic_clusters(centres):
    rng = np.random.default_rng(2)
    machine, noise = centres
    train = cluster(rng, machine, 200)
    kind, flags, stats = classify_supplemental(train, cluster(rng, machine, 50))
    assert kind == "machine" and flags.sum() <= 5  # about 1 % of in-distribution clips are flagged
    assert stats["median_distance"] < stats["distance_threshold"]

    kind, flags, stats = classify_supplemental(train, cluster(rng, noise, 50))
    assert kind == "noise" and flags.all()
    assert stats["median_distance"] > 10 * stats["distance_threshold"]

    # Majority vote: 20 noise + 30 machine clips -> machine; 30 noise + 20 machine -> noise.
    mixed = np.concatenate([cluster(rng, noise, 20), cluster(rng, machine, 30)])
    assert classify_supplemental(train, mixed)[0] == "machine"
    mixed = np.concatenate([cluster(rng, noise, 30), cluster(rng, machine, 20)])
    kind, flags, _ = classify_supplemental(train, mixed)
    assert kind == "noise" and flags[:30].all()


def test_classify_supplemental_energy_rule(centres):
    rng = np.random.default_rng(3)
    machine, _ = centres
    train, supp = cluster(rng, machine, 200), cluster(rng, machine, 50)  # embeddings cannot tell them apart
    train_energy = rng.normal(-0.2, 0.05, 200)
    kind, flags, stats = classify_supplemental(train, supp, train_energy=train_energy, supp_energy=rng.normal(-0.2, 0.05, 50))
    assert kind == "machine" and stats["n_quiet"] <= 5
    kind, flags, stats = classify_supplemental(train, supp, train_energy=train_energy, supp_energy=rng.normal(-1.5, 0.05, 50))
    assert kind == "noise" and stats["n_quiet"] == 50 and flags.all()
    assert stats["median_energy"] < stats["energy_threshold"] < stats["train_median_energy"]
    with pytest.raises(ValueError):
        classify_supplemental(train, supp, train_energy=train_energy)


def test_classify_supplemental_needs_two_training_clips(centres):
    with pytest.raises(AsdError, match="supplemental_kinds"):
        classify_supplemental(np.ones((1, DIM), np.float32), np.ones((3, DIM), np.float32))


def mel_spectra(rng, count, *, machine, background, gain_db=(-30, -20)):
    """``count`` mean log-mel spectra [count, 128] in fbank units: log(machine + background power), gain-invariant."""
    from asd.scoring.bank import _flat_reference
    from asd.model.beats import FBANK_STD

    reference, _ = _flat_reference()  # the front end's ripple, shared by every clip
    power = (machine[None] * rng.lognormal(0, 0.1, (count, 1)) + background[None] * rng.lognormal(0, 0.1, (count, 1)))
    power = power * rng.lognormal(0, 0.05, power.shape) * 10 ** (rng.uniform(*gain_db, (count, 1)) / 10)
    spectra = np.log(power) / (2 * FBANK_STD) + reference
    return spectra - spectra.mean(1, keepdims=True)


@pytest.fixture
def mel_sources():
    """Linear mel power of a machine (harmonic lines every 6 bins over a weak floor) and of a 1/f background."""
    bins = np.arange(128)
    machine = 1e-3 + np.exp(-0.5 * ((bins[:, None] - np.arange(10, 90, 6)[None]) / 0.8) ** 2).sum(1) * np.exp(-bins / 60)
    return machine, 0.05 / (1 + bins / 10)


def test_peak_test_keeps_clean_machine_spectra_and_excludes_noise_only(mel_sources, caplog):
    machine, background = mel_sources
    rng = np.random.default_rng(4)
    train = mel_spectra(rng, 60, machine=machine, background=background)
    clean = mel_spectra(rng, 20, machine=machine, background=0 * background, gain_db=(-45, -35))
    noise = mel_spectra(rng, 20, machine=0 * machine, background=background)
    mixed = mel_spectra(rng, 20, machine=machine, background=background)

    kind, flags, stats = classify_supplemental(train, clean, spectra=True)
    assert kind == "machine" and not flags.any()
    assert stats["n_far"] == 20 and min(stats["peak_shares"]) > 1  # far, but more peaked than the training clips
    assert classify_supplemental(train, clean)[0] == "noise"  # the distance test alone would drop it
    kind, flags, stats = classify_supplemental(train, noise, spectra=True)
    assert kind == "noise" and flags.all() and max(stats["peak_shares"]) < 0.2
    kind, flags, stats = classify_supplemental(train, mixed, spectra=True)
    assert kind == "machine" and stats["median_distance"] < stats["distance_threshold"]
    assert 0.8 < stats["median_peak_share"] < 1.2 and 0.8 < stats["train_loo_median_peak_share"] < 1.2
    assert stats["summary"].startswith("set judged machine: 0/20 clips flagged noise-only")

    # Through build_bank, with the spectra as test features: the decision is logged and recorded.
    rows = [("train", "source", f"t{i}.wav", "") for i in range(60)] + [
        ("supplemental", "source", f"n{i}.wav", "unknown") for i in range(20)]
    manifest = pd.DataFrame(rows, columns=["split", "domain", "file", "supplemental_kind"])
    with caplog.at_level("WARNING", logger="asd.scoring.bank"):
        bank = build_bank(manifest, np.zeros((80, 4), np.float32), name="fan",
                          test_features=np.concatenate([train, noise]))
    test = bank.composition["supplemental"]["automatic_test"]
    assert bank.composition["counts"]["supplemental_excluded"] == 20 and test["peak_test"] == "run"
    assert "peak share" in bank.composition["excluded"][0]["reason"]
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith("fan: 20 supplemental clip(s) of unknown kind went to the automatic test: set judged "
                              "noise: 20/20 clips flagged noise-only (majority needed: more than 50%); 20 far")
    assert "supplemental_kinds.fan" in message


def test_peak_test_needs_mel_spectra(centres, caplog):
    manifest, embeddings = make_manifest("unknown", False, centres)
    with caplog.at_level("WARNING", logger="asd.scoring.bank"):
        bank = build_bank(manifest, embeddings, name="fan", test_features=embeddings)  # 16 values per clip
    test = bank.composition["supplemental"]["automatic_test"]
    assert test["peak_test"].startswith("not run: the compared vectors (16 values per clip) are not 128-bin")
    assert "peak_shares" not in test and test["kind"] == "noise"
    assert "peak test not run" in caplog.records[0].getMessage()
    with pytest.raises(ValueError, match=r"needs \[N, 128\] log-mel spectra"):
        classify_supplemental(embeddings[:30], embeddings[33:39], spectra=True)
