"""Official metrics and ground-truth readers, checked against the official evaluator's outputs."""

import json
import shutil

import pandas as pd
import pytest

from asd.errors import AsdError
from asd.data.groundtruth import (
    load_ground_truth,
    parse_labelled_name,
    parse_labelled_test_name,
    read_eval_data_list,
    read_labelled_folder,
    read_official_ground_truth,
)
from asd.evaluation.metrics import evaluate_dir, format_table, machine_metrics, official_score

from conftest import SHARED  # noqa: E402

EVALUATOR = SHARED / "conformance" / "evaluator"
TEAM = EVALUATOR / "teams" / "team_conformance"
EVAL_LIST = SHARED / "reference" / "ground-truth" / "eval_data_list_2025.csv"
EXPECTED = json.loads((EVALUATOR / "expected.json").read_text())
SYSTEMS = sorted(EXPECTED["systems"])
TOL = 1e-9


@pytest.fixture(scope="module")
def truth():
    return read_official_ground_truth(EVALUATOR)


def assert_numbers_close(actual, expected, where=""):
    """Every number of ``expected`` (nested dicts/lists) equals ``actual`` to TOL; keys must match."""
    if isinstance(expected, dict):
        assert set(actual) == set(expected), where
        for key in expected:
            assert_numbers_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_numbers_close(a, e, f"{where}[{index}]")
    elif expected is None:
        assert actual is None, where
    else:
        assert actual == pytest.approx(expected, abs=TOL, rel=0), where


@pytest.mark.parametrize("system", SYSTEMS)
def test_conformance_systems_match_official_evaluator(system, truth):
    expected = EXPECTED["systems"][system]
    result = evaluate_dir(TEAM / system, truth)
    official_keys = {m: {s: {k: v for k, v in metrics.items() if not k.startswith("info_")}
                         for s, metrics in by_section.items()}
                     for m, by_section in expected["machines"].items()}
    assert_numbers_close(result["machines"], official_keys, "machines")
    for key in ("machine_summary", "overall", "paper_table", "official_score_inputs", "official_score"):
        assert_numbers_close(result[key], expected[key], key)
    json.dumps(result)  # JSON-able as returned


def test_jackknife_ci95_matches_evaluator(truth):
    result = evaluate_dir(TEAM / "sys3_ties", truth, ci95=True)
    assert result["official_score_ci95"] == pytest.approx(EXPECTED["systems"]["sys3_ties"]["official_score_ci95"],
                                                          rel=1e-9)


def test_format_table_lists_machines_means_and_score(truth):
    table = format_table(evaluate_dir(TEAM / "sys2_informative", truth))
    lines = table.splitlines()
    assert lines[0].split() == ["machine", "AUC-S", "AUC-T", "pAUC"]
    assert lines[2].split() == ["3DPrinter", "84.06", "81.20", "71.53"]
    assert lines[-3].split() == ["a-mean", "84.22", "79.66", "67.43"]
    assert f"official score: {100 * EXPECTED['systems']['sys2_informative']['official_score']:.2f} %" in table


def test_machine_metrics_hand_computed():
    truth = pd.DataFrame({
        "machine": "fan", "section": "00", "original_name": None,
        "file": [f"c{i}.wav" for i in range(6)],
        "domain": ["source", "source", "target", "target", "source", "target"],
        "label": [0, 0, 0, 0, 1, 1],
    })
    scores = pd.DataFrame({"file": [f"c{i}.wav" for i in (5, 4, 3, 2, 1, 0)],
                           "score": [0.4, 0.5, 0.6, 0.3, 0.2, 0.1]})
    decisions = pd.DataFrame({"file": [f"c{i}.wav" for i in range(6)], "decision": [0, 1, 0, 0, 1, 0]})
    metrics = machine_metrics(scores, decisions, truth)
    assert metrics["AUC_source"] == 1.0  # both anomalies above both source normals
    assert metrics["AUC_target"] == 0.5  # anomalies 0.5, 0.4 vs target normals 0.3, 0.6
    # Top-ranked clip is a normal, so the ROC stays at TPR 0 up to FPR 0.25: McClish (0 - .005)/.095.
    assert metrics["pAUC"] == pytest.approx(0.5 * (1 - 0.005 / 0.095), abs=1e-15)
    # source: truth [0, 0, 1], decided [0, 1, 1] -> TP 1, FP 1, FN 0
    assert (metrics["precision_source"], metrics["recall_source"]) == (0.5, 1.0)
    assert metrics["F1_source"] == pytest.approx(2 / 3, abs=1e-15)
    # target: truth [0, 0, 1], decided [0, 0, 0] -> no positives; eps keeps it at 0 instead of NaN
    assert (metrics["precision_target"], metrics["recall_target"], metrics["F1_target"]) == (0.0, 0.0, 0.0)
    assert "precision_source" not in machine_metrics(scores, None, truth)


def test_official_score_is_floored_harmonic_mean():
    sections = [{"AUC_source": 0.5, "AUC_target": 0.5, "pAUC": 0.25}]
    assert official_score(sections) == pytest.approx(3 / (2 + 2 + 4), abs=1e-15)
    zero = [{"AUC_source": 0.0, "AUC_target": 1.0, "pAUC": 1.0}]
    assert 0 < official_score(zero) < 1e-15  # floored at eps, not a division by zero


def copy_system(tmp_path, system="sys2_informative"):
    target = tmp_path / system
    shutil.copytree(TEAM / system, target)
    return target


def test_missing_score_file_is_named(tmp_path, truth):
    system = copy_system(tmp_path)
    (system / "anomaly_score_Scanner_section_00_test.csv").unlink()
    with pytest.raises(AsdError, match="anomaly_score_Scanner_section_00_test.csv"):
        evaluate_dir(system, truth)
    # Restricting to machine types that are complete works.
    result = evaluate_dir(system, truth, machines=["3DPrinter", "ToyCircuit"])
    assert sorted(result["machines"]) == ["3DPrinter", "ToyCircuit"]
    assert len(result["official_score_inputs"]) == 6


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[1:], r"1 missing clip\(s\) \(section_00_\d{4}\.wav\)"),
    (lambda rows: rows + ["section_00_9999.wav,0.5"], r"unexpected clip name\(s\) \(section_00_9999\.wav\)"),
    (lambda rows: rows[:-1] + [rows[0]], r"duplicate clip name\(s\).*missing clip"),
    (lambda rows: [rows[0].split(",")[0] + ",nan"] + rows[1:], r"line 1: anomaly score nan is not a finite number"),
    (lambda rows: ["file,score"] + rows, r"line 1: value 'score' is not a number"),
])
def test_bad_score_rows_are_reported_with_file(tmp_path, truth, edit, message):
    system = copy_system(tmp_path)
    path = system / "anomaly_score_HairDryer_section_00_test.csv"
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(AsdError, match=message) as error:
        evaluate_dir(system, truth)
    assert str(path) in str(error.value)


def test_labelled_score_names_map_back_like_the_evaluator(tmp_path, truth):
    system = copy_system(tmp_path)
    machine = truth[truth["machine"] == "ToothBrush"]
    alias = dict(zip(machine["file"], machine["original_name"]))
    for kind in ("anomaly_score", "decision_result"):
        path = system / f"{kind}_ToothBrush_section_00_test.csv"
        rows = [line.split(",") for line in path.read_text().splitlines()]
        path.write_text("".join(f"{alias[name]},{value}\n" for name, value in rows))
    assert alias["section_00_0001.wav"] == "section_00_target_test_anomaly_0032_noAttribute.wav"
    expected = EXPECTED["systems"]["sys2_informative"]
    assert evaluate_dir(system, truth)["official_score"] == pytest.approx(expected["official_score"], abs=TOL)


def test_official_ground_truth_reader_agrees_with_attribute_names(truth):
    assert truth.groupby("machine").size().to_dict() == {m: 200 for m in EXPECTED["machine_types"]}
    assert set(truth.groupby(["machine", "domain", "label"]).size()) == {50}
    parsed = truth["original_name"].map(parse_labelled_test_name)
    # The 2024 RoboticArm aliases lack "_test_" (section_00_source_normal_0035_...), so they do not parse.
    assert set(truth.loc[parsed.isna(), "machine"]) == {"RoboticArm"}
    named = truth[parsed.notna()]
    assert len(named) == 1600
    assert list(parsed.dropna().map(lambda p: p.label)) == list(named["label"])
    assert list(parsed.dropna().map(lambda p: p.domain)) == list(named["domain"])


def test_eval_data_list_2025():
    truth = read_eval_data_list(EVAL_LIST)
    assert len(truth) == 1600
    assert sorted(set(truth["machine"])) == sorted(
        ["AutoTrash", "HomeCamera", "ToyPet", "ToyRCCar", "BandSealer", "Polisher", "ScrewFeeder", "CoffeeGrinder"])
    assert set(truth.groupby("machine").size()) == {200}
    assert set(truth.groupby(["machine", "domain", "label"]).size()) == {50}
    assert truth["file"].str.fullmatch(r"section_00_\d{4}\.wav").all()
    assert set(truth["section"]) == {"00"}
    first = truth[(truth["machine"] == "AutoTrash") & (truth["file"] == "section_00_0000.wav")].iloc[0]
    assert (first["label"], first["domain"]) == (1, "target")
    assert first["original_name"] == "section_00_target_test_anomaly_0012_id_C1_spd_2_mic_2.wav"
    assert load_ground_truth(EVAL_LIST).equals(truth)


def test_eval_data_list_rejects_rows_before_a_machine_line(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("section_00_0000.wav,section_00_target_test_anomaly_0012_x_1.wav\n")
    with pytest.raises(AsdError, match="line 1"):
        read_eval_data_list(path)


def test_labelled_folder_reader(tmp_path):
    names = {
        "ToyCar": ["section_00_source_test_normal_0001_car_A2_spd_28V_mic_1.wav",
                   "section_00_target_test_anomaly_0002_car_B1_spd_31V_mic_2.wav"],
        "slider": ["section_00_target_test_normal_0013_vel_620_ac_0.08.wav",
                   "section_00_source_test_anomaly_0000_noAttribute.wav"],
    }
    for machine, files in names.items():
        (tmp_path / machine / "test").mkdir(parents=True)
        (tmp_path / machine / "train").mkdir()
        (tmp_path / machine / "train" / "section_00_source_train_normal_0001_noAttribute.wav").touch()
        for name in files:
            (tmp_path / machine / "test" / name).touch()
    truth = read_labelled_folder(tmp_path)
    assert list(truth["machine"]) == ["ToyCar", "ToyCar", "slider", "slider"]
    assert list(truth["label"]) == [0, 1, 1, 0]
    assert list(truth["domain"]) == ["source", "target", "source", "target"]
    assert (truth["file"] == truth["original_name"]).all()
    assert load_ground_truth(tmp_path).equals(truth)
    (tmp_path / "slider" / "test" / "section_00_0007.wav").touch()
    with pytest.raises(AsdError, match=r"unlabelled test names \(section_00_0007\.wav\)"):
        read_labelled_folder(tmp_path)


def test_parse_labelled_names():
    assert parse_labelled_test_name("section_00_target_test_anomaly_0044_volt_1.5_wt_150.wav") == (
        "00", "target", 1, 44, "volt_1.5_wt_150")
    assert parse_labelled_name("section_00_source_train_normal_0977_car_D2_spd_10_mic_1.wav", split="train") == (
        "00", "source", 0, 977, "car_D2_spd_10_mic_1")
    assert parse_labelled_test_name("section_00_source_train_normal_0977_noAttribute.wav") is None
    assert parse_labelled_test_name("section_00_0001.wav") is None
    assert parse_labelled_test_name("normal_id_00_00000000.wav") is None


def test_load_ground_truth_refuses_unknown_layout(tmp_path):
    with pytest.raises(AsdError, match="is not ground truth"):
        load_ground_truth(tmp_path)
