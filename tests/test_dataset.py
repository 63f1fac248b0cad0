"""asd.data.dataset: clip-name parsing and the manifest, on the real DCASE clips and real 2025 names."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from asd.data.dataset import MANIFEST_COLUMNS, build_manifest, parse_clip_name, read_manifest, write_manifest
from asd.errors import AsdError
from conftest import SHARED

REAL_AUDIO = SHARED / "real-audio"
CORRESPONDENCE = SHARED / "reference/ground-truth/attributes-dcase2025t2"
needs_shared = pytest.mark.skipif(not REAL_AUDIO.is_dir(), reason="shared reference data not present")


def write_wav(path: Path, *, seconds: float = 0.05, rate: int = 16000, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros((int(seconds * rate), channels)), rate, subtype="PCM_16")
    return path


def make_root(root: Path, machine: str = "fan", *, train=(), test=(), supplemental=()) -> Path:
    for split, names in (("train", train), ("test", test), ("supplemental", supplemental)):
        (root / machine / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_wav(root / machine / split / name)
    return root


@needs_shared
def test_real_dcase2023_clips_match_their_manifest():
    root = REAL_AUDIO / "dcase2023-dev-samples"
    manifest = build_manifest(root, dataset="dev2023")
    truth = pd.read_csv(REAL_AUDIO / "MANIFEST.csv", dtype=str, keep_default_na=False)
    truth = truth[truth["file"].str.startswith("dcase2023-dev-samples/")]
    assert len(manifest) == len(truth) == 28
    expected = {Path(row.file).name: row for row in truth.itertuples()}
    for row in manifest.itertuples():
        reference = expected[row.file]
        assert (row.machine, row.split, row.label, row.domain) == (
            reference.machine, reference.split, reference.label, reference.domain
        ), row.file
        assert row.duration == pytest.approx(float(reference.seconds))
        assert (row.sample_rate, row.channels, row.section) == (16000, 1, "00")
        # The attribute string is the name's tail, verbatim (1.5, 0.11, m-n, 28V kept intact).
        assert row.file.endswith(f"_{row.attributes}.wav") and row.attributes
        assert Path(row.path) == (root / row.machine / row.split / row.file).resolve()
    assert set(manifest.loc[manifest.machine == "gearbox", "attributes"]) >= {"volt_1.5_wt_150", "volt_1.5_wt_0"}
    assert "vel_730_ac_0.11" in set(manifest["attributes"]) and "m-n_W" in set(manifest["attributes"])
    assert set(manifest.loc[manifest.machine.isin(["ToyCar", "ToyTrain"]), "duration"]) == {12.0}
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert manifest[["machine", "split", "file"]].equals(
        manifest[["machine", "split", "file"]].sort_values(["machine", "split", "file"]).reset_index(drop=True)
    )


def _correspondence_names():
    for path in sorted(CORRESPONDENCE.glob("*/*/attributes_00_*_correspondence.csv")):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                yield path, row["source_file_name"], row["target_file_name"]


@needs_shared
def test_every_real_2025_name_parses():
    split_of = {"attributes_00_train_correspondence.csv": "train", "attributes_00_test_correspondence.csv": "test"}
    counts = {"labelled": 0, "unlabelled": 0}
    for path, source_name, target_name in _correspondence_names():
        split = split_of[path.name]
        original = parse_clip_name(source_name, split=split)
        assert original["domain"] in ("source", "target") and original["label"] in ("normal", "anomaly")
        assert original["section"] == "00" and source_name.endswith(f"_{original['attributes']}.wav")
        assert original["attributes"] not in ("", "noAttribute")
        distributed = parse_clip_name(target_name, split=split)
        if distributed["label"] == "unknown":  # eval test: section_00_NNNN.wav
            counts["unlabelled"] += 1
            assert target_name == f"section_00_{distributed['index']:04d}.wav"
            assert (distributed["domain"], distributed["attributes"]) == ("unknown", "")
        else:  # same label and domain, attributes hidden
            counts["labelled"] += 1
            assert (distributed["label"], distributed["domain"]) == (original["label"], original["domain"])
            assert distributed["attributes"] == "noAttribute"
    # 3 dev + 4 eval machine types with 1000 train names each, 200 test names each.
    assert counts == {"labelled": 7 * 1000 + 3 * 200, "unlabelled": 4 * 200}


@pytest.mark.parametrize(
    "name, kind, domain, label, attributes",
    [
        ("section_00_machine_0001_.wav", "machine", "source", "normal", ""),
        ("section_00_machine_source_0000_noAttribute.wav", "machine", "source", "normal", "noAttribute"),
        ("section_00_noise_0003.wav", "noise", "unknown", "unknown", ""),
        ("section_00_noise-only_target_0003_spd_6.wav", "noise", "target", "unknown", "spd_6"),
        ("section_00_0007.wav", "unknown", "unknown", "unknown", ""),
        # Clean machine recordings (made without the factory background) are machine sound.
        ("section_00_clean_0000.wav", "machine", "source", "normal", ""),
        ("section_00_clean_source_0002_noAttribute.wav", "machine", "source", "normal", "noAttribute"),
        ("section_00_Clean-Machine_0004_.wav", "machine", "source", "normal", ""),
        ("section_00_clean_noise_0001.wav", "noise", "unknown", "unknown", ""),  # noise wins: a clean noise recording
        ("section_00_recording_0003.wav", "unknown", "unknown", "unknown", ""),  # other words: the automatic test
        # ToyCar-like attributes contain `noise_1`: only the kind slot decides.
        ("section_00_0007_car_A2_noise_1.wav", "unknown", "unknown", "unknown", "car_A2_noise_1"),
    ],
)
def test_supplemental_names(name, kind, domain, label, attributes):
    fields = parse_clip_name(name, split="supplemental")
    assert (fields["supplemental_kind"], fields["domain"], fields["label"], fields["attributes"]) == (
        kind, domain, label, attributes
    )
    assert fields["section"] == "00"


@needs_shared
def test_dcase2020_names_are_refused_with_the_expected_pattern():
    for path in sorted((REAL_AUDIO / "other-formats/dcase2020-samples").rglob("*.wav")):
        with pytest.raises(AsdError, match=rf"{path.name}.*section_SS_\{{source\|target\}}_test_"):
            parse_clip_name(str(path), split="test")
    root = REAL_AUDIO / "other-formats/dcase2020-samples"
    with pytest.raises(AsdError, match="has no train/ folder"):
        build_manifest(root, dataset="dcase2020")


def test_clip_in_the_wrong_split_folder_is_refused():
    with pytest.raises(AsdError, match="says it is a test clip but it lies in train/"):
        parse_clip_name("section_00_source_test_normal_0001_a_1.wav", split="train")
    with pytest.raises(AsdError, match="train/ must be named"):
        parse_clip_name("section_00_0001.wav", split="train")


@needs_shared
def test_eight_channel_clips_follow_the_channel_policy(tmp_path):
    source = REAL_AUDIO / "other-formats/mimii-8ch/valve_id00_n_00000000.wav"
    root = make_root(tmp_path / "raw", "valve", train=["section_00_source_train_normal_0000_pat_01.wav"])
    shutil.copy(source, root / "valve/test/section_00_source_test_normal_0000_pat_01.wav")
    with pytest.raises(AsdError, match=r"section_00_source_test_normal_0000_pat_01\.wav: has 8 channels"):
        build_manifest(root, dataset="d")
    manifest = build_manifest(root, dataset="d", channel_policy="mean")
    assert manifest.set_index("split").loc["test", "channels"] == 8


def test_manifest_errors_name_the_problem(tmp_path):
    with pytest.raises(AsdError, match="does not exist"):
        build_manifest(tmp_path / "nowhere", dataset="d")
    root = make_root(tmp_path / "raw", train=["section_00_source_train_normal_0000_a_1.wav"],
                     test=["section_00_0000.wav"])
    with pytest.raises(AsdError, match=r"\['pump'\] \(found: \['fan'\]\)"):
        build_manifest(root, dataset="d", machine_types=["fan", "pump"])
    (root / "fan/test/notes.txt").write_text("x")
    with pytest.raises(AsdError, match=r"notes\.txt: test/ may hold only \.wav clips"):
        build_manifest(root, dataset="d")
    (root / "fan/test/notes.txt").unlink()
    (root / "fan/test/.DS_Store").write_text("x")  # OS metadata is ignored
    assert len(build_manifest(root, dataset="d")) == 2
    write_wav(root / "fan/test/section_00_0001.wav", rate=44100)
    with pytest.raises(AsdError, match=r"section_00_0001\.wav: sample rate is 44100 Hz"):
        build_manifest(root, dataset="d")
    sf.write(root / "fan/test/section_00_0001.wav", np.zeros(0), 16000, subtype="PCM_16")
    with pytest.raises(AsdError, match=r"section_00_0001\.wav: holds no samples"):
        build_manifest(root, dataset="d")
    (root / "fan/test/section_00_0001.wav").unlink()
    write_wav(root / "fan/test/normal_id_00_00000000.wav")
    with pytest.raises(AsdError, match=r"normal_id_00_00000000\.wav: not a DCASE 2025 clip name"):
        build_manifest(root, dataset="d")
    (root / "fan/test/normal_id_00_00000000.wav").unlink()
    (root / "fan/test/section_00_0000.wav").unlink()
    with pytest.raises(AsdError, match=r"fan/test holds no \.wav clips"):
        build_manifest(root, dataset="d")
    shutil.rmtree(root / "fan/test")
    with pytest.raises(AsdError, match=r"fan has no test/ folder"):
        build_manifest(root, dataset="d")


def test_attributes_csv_and_ground_truth_label_eval_test_clips(tmp_path):
    root = make_root(
        tmp_path / "raw", "BandSealer",
        train=["section_00_source_train_normal_0000_spd_6_n_D.wav"],
        test=["section_00_0000.wav", "section_00_0001.wav"],
    )
    (root / "BandSealer/attributes_00.csv").write_text(
        "file_name,d1p,d1v,d2p,d2v\n"
        "BandSealer/train/section_00_source_train_normal_0000_spd_6_n_D.wav,spd,6,n,D\n"
        "BandSealer/test/section_00_0000.wav,spd,1.5,n,D\n"
    )
    manifest = build_manifest(root, dataset="eval").set_index("file")
    assert manifest.loc["section_00_0000.wav", ["attributes", "label", "domain"]].tolist() == [
        "spd_1.5_n_D", "unknown", "unknown"
    ]
    assert manifest.loc["section_00_0001.wav", "attributes"] == ""  # listed nowhere: unknown
    truth = tmp_path / "eval_data_list.csv"
    truth.write_text(
        "BandSealer\r\n"
        "section_00_0000.wav,section_00_target_test_anomaly_0003_spd_1.5_n_D.wav\r\n"
        "section_00_0001.wav,section_00_source_test_normal_0004_spd_8_n_E.wav\r\n"
    )
    labelled = build_manifest(root, dataset="eval", ground_truth=truth).set_index("file")
    assert labelled.loc["section_00_0000.wav", ["label", "domain", "attributes"]].tolist() == [
        "anomaly", "target", "spd_1.5_n_D"
    ]
    assert labelled.loc["section_00_0001.wav", ["label", "domain", "attributes"]].tolist() == [
        "normal", "source", "spd_8_n_E"
    ]
    truth.write_text("BandSealer\nsection_00_0000.wav,section_00_target_test_anomaly_0003_spd_1.5_n_D.wav\n")
    with pytest.raises(AsdError, match=r"no entry for BandSealer/test/section_00_0001\.wav"):
        build_manifest(root, dataset="eval", ground_truth=truth)


@needs_shared
def test_real_2025_eval_list_labels_eval_test_names(tmp_path):
    eval_list = SHARED / "reference/ground-truth/eval_data_list_2025.csv"
    test_names = [f"section_00_{index:04d}.wav" for index in range(200)]
    root = make_root(tmp_path / "raw", "AutoTrash", train=["section_00_source_train_normal_0001_noAttribute.wav"],
                     test=test_names)
    test = build_manifest(root, dataset="eval", ground_truth=eval_list).query("split == 'test'")
    assert test.groupby(["domain", "label"]).size().to_dict() == {
        ("source", "anomaly"): 50, ("source", "normal"): 50, ("target", "anomaly"): 50, ("target", "normal"): 50,
    }
    first = test.set_index("file").loc["section_00_0000.wav"]  # ...,section_00_target_test_anomaly_0012_id_C1_...
    assert (first["label"], first["domain"], first["attributes"]) == ("anomaly", "target", "id_C1_spd_2_mic_2")


def test_hidden_attributes_in_csv_become_noattribute(tmp_path):
    root = make_root(tmp_path / "raw", "Polisher", train=["section_00_source_train_normal_0000_noAttribute.wav"],
                     test=["section_00_0000.wav"])
    (root / "Polisher/attributes_00.csv").write_text("file_name\nPolisher/test/section_00_0000.wav\n")
    manifest = build_manifest(root, dataset="eval")
    assert set(manifest["attributes"]) == {"noAttribute"}


def test_supplemental_kinds_override_names(tmp_path):
    root = make_root(
        tmp_path / "raw", train=["section_00_source_train_normal_0000_a_1.wav"],
        test=["section_00_source_test_anomaly_0000_a_1.wav"],
        supplemental=["section_00_0000.wav", "section_00_machine_0001_.wav"],
    )

    def supplemental(**kwargs):
        manifest = build_manifest(root, dataset="d", **kwargs)
        rows = manifest[manifest.split == "supplemental"]
        return rows[["supplemental_kind", "domain", "label"]].values.tolist()

    assert supplemental() == [["unknown", "unknown", "unknown"], ["machine", "source", "normal"]]
    assert supplemental(supplemental_kinds={"fan": "noise"}) == [["noise", "unknown", "unknown"]] * 2
    assert supplemental(supplemental_kinds={"fan": "machine"}) == [["machine", "source", "normal"]] * 2
    assert supplemental(supplemental_kinds={"fan": "auto", "valve": "noise"}) == supplemental()
    with pytest.raises(AsdError, match="supplemental_kinds.fan.*machine, noise or auto"):
        supplemental(supplemental_kinds={"fan": "clean"})
    non_supplemental = build_manifest(root, dataset="d").query("split != 'supplemental'")
    assert set(non_supplemental["supplemental_kind"]) == {""}


def test_manifest_supplemental_kinds_are_machine_noise_or_unknown(tmp_path):
    names = ["section_00_clean_0000.wav", "section_00_machine_0001_.wav", "section_00_noise_0002.wav",
             "section_00_0003.wav"]
    root = make_root(tmp_path / "raw", train=["section_00_source_train_normal_0000_a_1.wav"],
                     test=["section_00_0000.wav"], supplemental=names)
    supplemental = build_manifest(root, dataset="d").query("split == 'supplemental'").set_index("file")
    assert supplemental.loc[names, "supplemental_kind"].tolist() == ["machine", "machine", "noise", "unknown"]
    assert supplemental.loc[names, "label"].tolist() == ["normal", "normal", "unknown", "unknown"]
    path = tmp_path / "manifest.csv"
    write_manifest(build_manifest(root, dataset="d"), path)
    assert set(read_manifest(path).query("split == 'supplemental'")["supplemental_kind"]) == {"machine", "noise",
                                                                                             "unknown"}


def test_manifest_round_trip_keeps_strings(tmp_path):
    root = make_root(
        tmp_path / "raw", train=["section_00_source_train_normal_0000_volt_1.5_wt_0.wav"],
        test=["section_00_0000.wav", "section_00_target_test_normal_0001_NA.wav"],
    )
    manifest = build_manifest(root, dataset="dev")
    path = tmp_path / "manifest" / "dev.csv"
    write_manifest(manifest, path)
    back = read_manifest(path)
    pd.testing.assert_frame_equal(back, manifest)
    assert back["section"].tolist() == ["00"] * 3
    assert back["attributes"].tolist() == ["", "NA", "volt_1.5_wt_0"]  # '' and 'NA' are not NaN
    assert not back.isna().any().any()
    assert [path.name for path in path.parent.iterdir()] == ["dev.csv"]  # no temporary left behind
    path.write_text("machine,file\nfan,x.wav\n")
    with pytest.raises(AsdError, match=r"lacks columns \['dataset'.*asd index"):
        read_manifest(path)
    with pytest.raises(AsdError, match="does not exist"):
        read_manifest(tmp_path / "missing.csv")
