"""Submission package: result files, meta YAML, archive building and the checker."""

import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml

from asd.errors import AsdError
from conftest import SHARED
from asd.metrics import evaluate_dir
from asd.submission import (
    PackagedSystem,
    build_archive,
    check_submission,
    dev_results_from_evaluation,
    meta_yaml,
    read_result_csv,
    validate_or_raise,
    write_system,
)

MACHINES = ["AutoTrash", "ToyPet"]
CLIPS = [f"section_00_{i:04d}.wav" for i in range(6)]
TEST_FILES = {machine: CLIPS for machine in MACHINES}
DESCRIPTION = {
    "input_sampling_rate": "16kHz", "data_augmentation": "mixup", "front_end": None,
    "acoustic_features": "log-mel energies", "embeddings": "BEATs iter3 + LoRA",
    "machine_learning_method": "ArcFace", "aggregation_method": "mean", "domain_adaptation_method": None,
    "domain_generalization_method": None, "ensemble_method_subsystem_count": None,
    "decision_making": "gamma threshold", "attribute_usage": "class labels",
    "external_data_usage": "pretrained model", "development_data_usage": "development",
}


def synthetic_outputs(seed):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(CLIPS))  # rows deliberately not sorted
    scores = {m: pd.DataFrame({"file": [CLIPS[i] for i in order], "score": rng.normal(size=len(CLIPS))})
              for m in MACHINES}
    decisions = {m: pd.DataFrame({"file": frame["file"], "decision": (frame["score"] > 0).astype(int)})
                 for m, frame in scores.items()}
    return scores, decisions


def make_meta(label, **overrides):
    arguments = dict(
        label=label, name="BEATs LoRA ArcFace KNN", abbreviation="BLAK",
        authors=[{"lastname": "Smith", "firstname": "Ann", "email": "ann@uni.example", "corresponding": True}],
        description=DESCRIPTION, total_parameters=90_311_792, macs="12.1G",
        dev_results={"ToyCar": {"auc_source": 77.1, "auc_target": 56.0, "pauc": 57.7}},
        external_datasets=[{"name": "AudioSet", "url": "https://research.google.com/audioset/"}],
        source_code="https://example.org/asd", random_init_backbone=False,
    )
    arguments.update(overrides)
    return meta_yaml(**arguments)


@pytest.fixture
def valid_zip(tmp_path):
    systems = []
    for n in (1, 2):
        label = f"Smith_Uni_task2_{n}"
        scores, decisions = synthetic_outputs(seed=n)
        write_system(tmp_path / label, scores=scores, decisions=decisions)
        systems.append(PackagedSystem(label, tmp_path / label, make_meta(label)))
    return build_archive(tmp_path / "submission.zip", systems=systems, machines=MACHINES, test_files=TEST_FILES)


def test_write_system_files_are_sorted_headerless_and_exact(tmp_path):
    scores, decisions = synthetic_outputs(seed=0)
    written = write_system(tmp_path, scores=scores, decisions=decisions)
    assert sorted(p.name for p in written) == [
        "anomaly_score_AutoTrash_section_00_test.csv", "anomaly_score_ToyPet_section_00_test.csv",
        "decision_result_AutoTrash_section_00_test.csv", "decision_result_ToyPet_section_00_test.csv"]
    lines = (tmp_path / "decision_result_ToyPet_section_00_test.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == CLIPS
    assert {line.split(",")[1] for line in lines} <= {"0", "1"}
    back = read_result_csv(tmp_path / "anomaly_score_AutoTrash_section_00_test.csv", kind="score")
    expected = scores["AutoTrash"].sort_values("file")
    assert list(back["file"]) == CLIPS
    assert np.array_equal(back["score"].to_numpy(), expected["score"].to_numpy())  # bit-exact round trip


@pytest.mark.parametrize("kind, bad, message", [
    ("score", float("nan"), "not finite"),
    ("decision", 2, "not 0 or 1"),
])
def test_write_system_refuses_bad_values(tmp_path, kind, bad, message):
    scores, decisions = synthetic_outputs(seed=0)
    frame = (scores if kind == "score" else decisions)["ToyPet"]
    frame.loc[0, kind] = bad
    with pytest.raises(AsdError, match=message):
        write_system(tmp_path, scores=scores, decisions=decisions)
    assert not list(tmp_path.glob("*ToyPet*"))


def test_meta_yaml_fields_and_random_init_note():
    meta = yaml.safe_load(make_meta("Smith_Uni_task2_1"))
    assert meta["submission"]["label"] == "Smith_Uni_task2_1"
    assert set(meta["system"]["description"]) == set(DESCRIPTION)
    assert meta["system"]["complexity"] == {"total_parameters": 90_311_792, "MACS": "12.1G"}
    assert meta["results"]["development_dataset"]["ToyCar"]["pauc"] == 57.7
    assert "random-init" not in meta["submission"]["name"]
    random_init = yaml.safe_load(make_meta("Smith_Uni_task2_1", random_init_backbone=True))
    assert random_init["submission"]["name"] == "BEATs LoRA ArcFace KNN (random-init backbone)"
    assert "random-init backbone" in random_init["system"]["description"]["embeddings"]


@pytest.mark.parametrize("overrides, message", [
    ({"abbreviation": "ABBREVIATION"}, "longer than 10 characters"),
    ({"description": {k: v for k, v in DESCRIPTION.items() if k != "front_end"}},
     "missing key system.description.front_end"),
    ({"dev_results": {"ToyCar": {"auc_source": 77.1, "auc_target": 56.0}}},
     "results.development_dataset.ToyCar.pauc must be a number"),
])
def test_meta_yaml_refuses_incomplete_meta(overrides, message):
    with pytest.raises(AsdError, match=message):
        make_meta("Smith_Uni_task2_1", **overrides)
    with pytest.raises(AsdError, match="bad label 'Smith_task2_1'"):
        make_meta("Smith_task2_1")


def test_valid_archive_passes(valid_zip):
    assert check_submission(valid_zip, machines=MACHINES, test_files=TEST_FILES) == []
    assert check_submission(valid_zip) == []  # machine types inferred from the files
    validate_or_raise(valid_zip, test_files=TEST_FILES)
    with zipfile.ZipFile(valid_zip) as archive:
        names = sorted(archive.namelist())
    assert names[:5] == [
        "Smith_Uni_task2_1/Smith_Uni_task2_1.meta.yaml",
        "Smith_Uni_task2_1/anomaly_score_AutoTrash_section_00_test.csv",
        "Smith_Uni_task2_1/anomaly_score_ToyPet_section_00_test.csv",
        "Smith_Uni_task2_1/decision_result_AutoTrash_section_00_test.csv",
        "Smith_Uni_task2_1/decision_result_ToyPet_section_00_test.csv",
    ]
    assert len(names) == 10


def rewrite(source, target, *, drop=(), edit=None, add=None):
    """Copy a zip, dropping names, editing text entries (name -> function) and adding entries."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            if name in drop:
                continue
            text = old.read(name).decode()
            new.writestr(name, (edit or {}).get(name, lambda t: t)(text))
        for name, text in (add or {}).items():
            new.writestr(name, text)
    return target


S1 = "Smith_Uni_task2_1/"
SCORES = S1 + "anomaly_score_ToyPet_section_00_test.csv"
DECISIONS = S1 + "decision_result_ToyPet_section_00_test.csv"


def replace_line(index, new):
    def edit(text):
        lines = text.splitlines()
        lines[index] = new(lines[index])
        return "\n".join(lines) + "\n"
    return edit


def relabel(text, old, new):
    return text.replace(old, new)


BREAKAGES = {
    "missing decision file": (dict(drop={DECISIONS}),
                              "Smith_Uni_task2_1/missing decision file decision_result_ToyPet_section_00_test.csv"),
    "duplicate row": (dict(edit={SCORES: lambda t: t + t.splitlines()[0] + "\n"}),
                      "anomaly_score_ToyPet_section_00_test.csv: 1 duplicate clip name(s) (section_00_0000.wav)"),
    "NaN score": (dict(edit={SCORES: replace_line(2, lambda line: line.split(",")[0] + ",nan")}),
                  "anomaly_score_ToyPet_section_00_test.csv: line 3: anomaly score nan is not a finite number"),
    "decision 2": (dict(edit={DECISIONS: replace_line(0, lambda line: line.split(",")[0] + ",2")}),
                   "decision_result_ToyPet_section_00_test.csv: line 1: decision 2.0 is not 0 or 1"),
    "missing clip": (dict(edit={SCORES: lambda t: "".join(t.splitlines(keepends=True)[1:])}),
                     "anomaly_score_ToyPet_section_00_test.csv: 1 missing clip(s) (section_00_0000.wav)"),
    "missing meta key": (dict(edit={S1 + "Smith_Uni_task2_1.meta.yaml": lambda t: relabel(t, "MACS:", "MAC:")}),
                         "Smith_Uni_task2_1.meta.yaml: missing key system.complexity.MACS"),
    "unexpected file": (dict(add={S1 + "notes.txt": "hello"}), "Smith_Uni_task2_1/unexpected file notes.txt"),
    "header row": (dict(edit={SCORES: lambda t: "file,score\n" + t}),
                   "anomaly_score_ToyPet_section_00_test.csv: line 1: value 'score' is not a number"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_each_breakage_is_reported_by_name(valid_zip, tmp_path, breakage):
    change, message = BREAKAGES[breakage]
    broken = rewrite(valid_zip, tmp_path / "broken.zip", **change)
    problems = check_submission(broken, machines=MACHINES, test_files=TEST_FILES)
    assert any(message in problem for problem in problems), problems
    with pytest.raises(AsdError, match="is not a valid submission"):
        validate_or_raise(broken, machines=MACHINES, test_files=TEST_FILES)


def test_bad_label_and_too_many_systems(valid_zip, tmp_path):
    with zipfile.ZipFile(valid_zip) as archive:
        system = {name.split("/", 1)[1]: archive.read(name).decode()
                  for name in archive.namelist() if name.startswith(S1)}
    # Rename system 1 to a label without the institute part, meta label included.
    bad_label = rewrite(valid_zip, tmp_path / "bad_label.zip", drop={S1 + name for name in system}, add={
        f"Smith_task2_1/{name.replace('Smith_Uni_task2_1', 'Smith_task2_1')}": relabel(text, "Smith_Uni_", "Smith_")
        for name, text in system.items()})
    problems = check_submission(bad_label, machines=MACHINES)
    assert any(problem.startswith("bad label 'Smith_task2_1'") for problem in problems), problems
    extra = {f"Smith_Uni_task2_{n}/{name.replace('task2_1', f'task2_{n}')}": relabel(text, "task2_1", f"task2_{n}")
             for n in (3, 4, 5) for name, text in system.items()}
    five = rewrite(valid_zip, tmp_path / "five.zip", add=extra)
    problems = check_submission(five, machines=MACHINES, test_files=TEST_FILES)
    assert "5 systems; a submission holds at most 4 systems" in problems
    assert any(problem.startswith("bad label 'Smith_Uni_task2_5'") for problem in problems)
    assert len(problems) == 2, problems  # nothing else is wrong with the copies


def test_build_archive_refuses_and_leaves_nothing(tmp_path):
    scores, decisions = synthetic_outputs(seed=3)
    write_system(tmp_path / "s1", scores=scores, decisions=decisions)
    target = tmp_path / "out.zip"
    meta = make_meta("Smith_Uni_task2_1")
    with pytest.raises(AsdError, match="missing anomaly score file anomaly_score_HomeCamera_section_00_test.csv"):
        build_archive(target, systems=[("Smith_Uni_task2_1", tmp_path / "s1", meta)],
                      machines=[*MACHINES, "HomeCamera"])
    with pytest.raises(AsdError, match="1 to 4 systems"):
        build_archive(target, systems=[(f"Smith_Uni_task2_{n}", tmp_path / "s1", meta) for n in range(1, 6)])
    assert list(tmp_path.glob("*.zip")) == [] and list(tmp_path.glob(".out.zip*")) == []


def test_check_submission_on_a_non_zip(tmp_path):
    path = tmp_path / "not.zip"
    path.write_text("hello")
    assert check_submission(path)[0].startswith(f"{path} cannot be opened as a zip file")


def test_dev_results_from_evaluation_in_percent():
    folder = str(SHARED / "conformance" / "evaluator")
    result = evaluate_dir(f"{folder}/teams/team_conformance/sys2_informative", folder, machines=["3DPrinter"])
    assert dev_results_from_evaluation(result) == {
        "3DPrinter": {"auc_source": 84.06, "auc_target": 81.2, "pauc": 71.53}}
