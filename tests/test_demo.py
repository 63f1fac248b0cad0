"""asd.data.demo: layout, naming, determinism, and that the synthetic sounds behave like the task's."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy.signal import stft
from scipy.spatial.distance import cdist
from sklearn.metrics import roc_auc_score

from asd.data.dataset import build_manifest
from asd.data.demo import generate_demo
from asd.errors import AsdError
from asd.data.groundtruth import parse_labelled_name, read_eval_data_list


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    info = generate_demo(tmp_path_factory.mktemp("demo"), seed=0)
    dev = build_manifest(info["dev_root"], dataset="dev")
    evaluation = build_manifest(info["eval_root"], dataset="eval", ground_truth=info["ground_truth"])
    return info, pd.concat([dev, evaluation], ignore_index=True)


def tree_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*")) if path.is_file()
    }


def test_layout_names_and_counts(demo):
    info, manifest = demo
    assert info["machine_types"] == {
        "dev": ["fan", "bearing", "valve"], "eval": ["BandSealer", "Polisher", "CoffeeGrinder"]
    }
    counts = manifest.groupby(["machine", "split", "domain", "label"]).size()
    for machine in ("fan", "bearing", "valve", "BandSealer", "Polisher", "CoffeeGrinder"):
        assert counts[machine, "train", "source", "normal"] == 24
        assert counts[machine, "train", "target", "normal"] == 4
        for domain in ("source", "target"):
            for label in ("normal", "anomaly"):
                assert counts[machine, "test", domain, label] == 25
        assert (manifest.query("machine == @machine and split == 'supplemental'").shape[0]) == 12
        assert (Path(info["dev_root"] if machine in info["machine_types"]["dev"] else info["eval_root"])
                / machine / "attributes_00.csv").is_file()
    assert len(manifest) == 6 * 140
    eval_test = manifest.query("dataset == 'eval' and split == 'test'")
    assert all(re.fullmatch(r"section_00_\d{4}\.wav", name) for name in eval_test["file"])
    dev_test = manifest.query("dataset == 'dev' and split == 'test'")
    assert all(parse_labelled_name(name, split="test") for name in dev_test["file"])
    assert set(manifest.loc[manifest.machine.isin(["bearing", "Polisher"]) & (manifest.split != "supplemental"),
                            "attributes"]) == {"noAttribute"}
    assert set(manifest.loc[manifest.machine == "fan", "attributes"]) >= {"m-n_W_spd_28V", "m-n_Y_spd_40V"}
    assert set(manifest["duration"]) == {8.0, 10.0} and set(manifest["sample_rate"]) == {16000}
    assert set(manifest["channels"]) == {1}
    assert {sf.info(path).subtype for path in manifest["path"][::40]} == {"PCM_16"}
    total_bytes = sum(Path(path).stat().st_size for path in manifest["path"])
    assert total_bytes < 280e6


def test_eval_ground_truth_matches_attributes_csv_and_is_shuffled(demo):
    info, manifest = demo
    truth = read_eval_data_list(info["ground_truth"])
    assert truth.groupby("machine").size().to_dict() == {"BandSealer": 100, "CoffeeGrinder": 100, "Polisher": 100}
    unlabelled = build_manifest(info["eval_root"], dataset="eval")
    assert set(unlabelled.query("split == 'test'")["label"]) == {"unknown"}
    test = unlabelled.query("split == 'test'").merge(truth, on=["machine", "file"])
    for row in test.itertuples():  # attributes_00.csv agrees with the labelled original names
        original = parse_labelled_name(row.original_name, split="test").attributes
        assert row.attributes == ("noAttribute" if row.machine == "Polisher" else original)
    for machine, rows in truth.groupby("machine"):
        # Written in blocks of (domain, label) that would change 3 times; shuffled ones change often.
        groups = (rows.sort_values("file")["domain"] + rows.sort_values("file")["label"].astype(str)).to_numpy()
        assert np.count_nonzero(groups[1:] != groups[:-1]) >= 10, f"{machine} test order is not shuffled"


def envelope_spread_db(sound: np.ndarray) -> float:
    """Standard deviation of the clip's level over 50 ms frames, dB."""
    frames = sound[: len(sound) // 800 * 800].reshape(-1, 800)  # [frames, 800]
    return float(np.std(10 * np.log10((frames**2).mean(axis=1) + 1e-12)))


def test_anomaly_kinds_list_every_test_clip_and_match_its_sound(demo):
    info, manifest = demo
    kinds = pd.read_csv(info["anomaly_kinds"])
    test = manifest.query("split == 'test'").merge(kinds, on=["machine", "file"], how="outer", indicator=True,
                                                     validate="one_to_one", suffixes=("", "_listed"))
    assert len(test) == 600 and (test["_merge"] == "both").all()
    assert (test["domain"] == test["domain_listed"]).all()
    assert ((test["kind"] == "normal") == (test["label"] == "normal")).all()
    anomalies = test.query("label == 'anomaly'")
    assert anomalies.groupby("domain")["kind"].apply(set).to_dict() == {
        domain: {"clicks", "modulation", "rattle", "tone"} for domain in ("source", "target")}
    # The listed kind is the one synthesised: amplitude modulation swells the level, which normal clips hold.
    for (machine, domain), clips in test.query("kind in ['normal', 'modulation']").groupby(["machine", "domain"]):
        spread = [envelope_spread_db(sf.read(path)[0]) for path in clips["path"]]
        auc = roc_auc_score(clips["kind"] == "modulation", spread)
        assert auc > 0.95, (machine, domain, auc)


def test_supplemental_naming_cases_and_true_content(demo):
    info, manifest = demo
    supplemental = manifest.query("split == 'supplemental'")
    named = supplemental.groupby("machine")["supplemental_kind"].agg(set).to_dict()
    assert named == {
        "fan": {"machine"}, "BandSealer": {"machine"}, "bearing": {"noise"}, "CoffeeGrinder": {"noise"},
        "valve": {"unknown"}, "Polisher": {"unknown"},  # neutral names: noise-only and clean machine
    }
    assert info["supplemental_content"] == {
        "fan": "machine", "bearing": "noise", "valve": "noise",
        "BandSealer": "machine", "Polisher": "machine", "CoffeeGrinder": "noise",
    }
    # Noise-only clips have no motor hum: no strong spectral peak below 1.5 kHz.
    for row in supplemental.itertuples():
        power = np.abs(np.fft.rfft(sf.read(row.path)[0])) ** 2
        band = power[20 * 10:1500 * 10]  # 10 bins per Hz for a 10 s clip
        peak_to_median = band.max() / np.median(band)
        if info["supplemental_content"][row.machine] == "machine":
            assert peak_to_median > 1e4, row.file
        else:
            assert peak_to_median < 1e3, row.file


def _log_spectrogram(path: str) -> np.ndarray:
    """[frames, 32] band log-powers, mean-removed so that loudness is ignored."""
    _, _, spectrum = stft(sf.read(path)[0], 16000, nperseg=512, noverlap=256)  # [257, frames]
    bands = np.log(np.abs(spectrum[:256]) ** 2 + 1e-10).reshape(32, 8, -1).mean(axis=1)  # [32, frames]
    return (bands - bands.mean()).T


def test_loudness_does_not_separate_anomalies_but_sound_does(demo):
    _, manifest = demo
    for machine, rows in manifest.groupby("machine"):
        test = rows.query("split == 'test'")
        is_anomaly = (test["label"] == "anomaly").to_numpy()
        rms = [np.sqrt(np.mean(sf.read(path)[0] ** 2)) for path in test["path"]]
        assert 0.3 <= roc_auc_score(is_anomaly, rms) <= 0.7, machine
        # A simple frame-level nearest-neighbour detector on level-free spectra does find them.
        bank = np.concatenate([_log_spectrogram(path)[::4] for path in rows.query("split == 'train'")["path"]])
        scores = []
        for path in test["path"]:
            frames = _log_spectrogram(path)[::2]
            nearest = cdist(frames, bank, "sqeuclidean").min(axis=1)  # [frames, bank] -> [frames]
            scores.append(np.percentile(nearest, 99))
        assert roc_auc_score(is_anomaly, scores) >= 0.75, machine


def test_target_domain_is_a_real_shift(demo):
    _, manifest = demo
    normals = manifest.query("split in ['train', 'test'] and label == 'normal'")
    for machine, rows in normals.groupby("machine"):
        centroids = []
        for path in rows["path"]:
            power = np.abs(np.fft.rfft(sf.read(path)[0])) ** 2
            frequency = np.fft.rfftfreq(2 * (power.size - 1), d=1 / 16000)
            centroids.append((power * frequency).sum() / power.sum())
        is_target = (rows["domain"] == "target").to_numpy()
        assert roc_auc_score(is_target, centroids) >= 0.95, machine


def test_same_seed_same_bytes_other_seed_other_sounds(tmp_path):
    first = generate_demo(tmp_path / "a", seed=3, scale="tiny")
    generate_demo(tmp_path / "b", seed=3, scale="tiny", workers=2)  # machine types in parallel: same bytes
    digests = tree_digests(tmp_path / "a")
    assert len([name for name in digests if name.endswith(".wav")]) == 6 * (7 + 3 + 8)
    assert digests == tree_digests(tmp_path / "b")
    generate_demo(tmp_path / "a", seed=3, scale="tiny")  # a rerun replaces its own output
    assert tree_digests(tmp_path / "a") == digests
    generate_demo(tmp_path / "c", seed=4, scale="tiny")
    other = tree_digests(tmp_path / "c")
    assert all(other.get(name) != digest for name, digest in digests.items() if name.endswith(".wav"))
    assert Path(first["ground_truth"]).is_file()
    assert [path.name for path in (tmp_path / "a").iterdir() if path.name.startswith(".demo-")] == []


def test_refuses_to_replace_foreign_folders(tmp_path):
    (tmp_path / "dev_data").mkdir()
    (tmp_path / "dev_data" / "mine.txt").write_text("keep")
    with pytest.raises(AsdError, match="dev_data exists and was not written by the demo generator"):
        generate_demo(tmp_path, scale="tiny")
    assert (tmp_path / "dev_data" / "mine.txt").read_text() == "keep"
    with pytest.raises(AsdError, match="scale 'huge' is unknown; use one of demo, accuracy, tiny"):
        generate_demo(tmp_path / "x", scale="huge")
