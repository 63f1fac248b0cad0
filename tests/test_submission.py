"""Submission package: result files, meta YAML, archive building and the checker."""

import logging
import re
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from asd.config import load_config, load_schema
from asd.errors import AsdError
from asd.model.asd_model import ASDModel, HeadConfig, build_backbone, checkpoint_dict
from asd.submission.assemble import build_submission, system_description
from conftest import REPO, SHARED, TINY_BACKBONE
from asd.evaluation.metrics import evaluate_dir
from asd.model.pretrain import LABEL as DEMO_LABEL
from asd.submission.archive import (
    DEMO_BACKBONE_NOTE,
    PLACEHOLDER_AUTHORS,
    PLACEHOLDER_SOURCE_CODE,
    RANDOM_INIT_NOTE,
    REQUIRED_DESCRIPTION_KEYS,
    PackagedSystem,
    build_archive,
    check_submission,
    dev_results_from_evaluation,
    is_placeholder,
    meta_yaml,
    placeholder_problems,
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
        source_code="https://example.org/asd", backbone_note=None,
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
    random_init = yaml.safe_load(make_meta("Smith_Uni_task2_1", backbone_note=RANDOM_INIT_NOTE))
    assert random_init["submission"]["name"] == "BEATs LoRA ArcFace KNN (random-init backbone)"
    assert "random-init backbone" in random_init["system"]["description"]["embeddings"]
    demo = yaml.safe_load(make_meta("Smith_Uni_task2_1", backbone_note=DEMO_BACKBONE_NOTE))
    assert demo["submission"]["name"] == "BEATs LoRA ArcFace KNN (demo backbone pre-trained on synthetic sounds, not BEATs)"
    assert "not BEATs" in demo["system"]["description"]["embeddings"]


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


# --- placeholders -------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("CHANGE_ME", True), ("change.me@example.org", True), ("https://example.org/CHANGE_ME", True),
    ("Change-Me", True), ("changeme", True),
    ("Smith", False), ("exchange mechanism", False), ("https://example.org/asd", False), (True, False), (None, False),
])
def test_is_placeholder(value, expected):
    assert is_placeholder(value) is expected


def test_placeholders_are_written_on_request_but_refused_by_the_checker(tmp_path):
    label = "Lastname_Inst_task2_1"
    scores, decisions = synthetic_outputs(seed=1)
    write_system(tmp_path / label, scores=scores, decisions=decisions)
    meta = make_meta(label, authors=list(PLACEHOLDER_AUTHORS), source_code=PLACEHOLDER_SOURCE_CODE)  # not refused
    systems = [PackagedSystem(label, tmp_path / label, meta)]
    with pytest.raises(AsdError, match="placeholder"):
        build_archive(tmp_path / "strict.zip", systems=systems, machines=MACHINES)
    assert not (tmp_path / "strict.zip").exists()
    archive = build_archive(tmp_path / "demo.zip", systems=systems, machines=MACHINES, allow_placeholders=True)
    assert check_submission(archive, machines=MACHINES, allow_placeholders=True) == []
    problems = check_submission(archive, machines=MACHINES)
    where = f"{label}/{label}.meta.yaml: "
    authors_fix = "; edit `submission.authors` in the config (config.yaml) and rebuild the archive"
    assert problems == [
        f"{where}submission.authors[0].lastname is the placeholder 'CHANGE_ME'{authors_fix}",
        f"{where}submission.authors[0].firstname is the placeholder 'CHANGE_ME'{authors_fix}",
        f"{where}submission.authors[0].email is the placeholder 'change.me@example.org'{authors_fix}",
        f"{where}submission.authors[0].affiliation.institution is the placeholder 'CHANGE_ME'{authors_fix}",
        f"{where}source_code is the placeholder 'https://example.org/CHANGE_ME'; edit `submission.source_code` in "
        "the config (config.yaml) and rebuild the archive",
        f"{where}submission.label 'Lastname_Inst_task2_1' has the placeholder team prefix Lastname_Inst; edit "
        "`submission.systems[].label` (and `submission.archive`) in the config (config.yaml) and rebuild the archive "
        "(<Lastname>_<Institute>_task2_N)",
    ]
    with pytest.raises(AsdError, match="is not a valid submission"):
        validate_or_raise(archive, machines=MACHINES)


def test_cli_check_submission_refuses_placeholders(tmp_path, capsys):
    from asd.cli import main

    label = "Smith_Uni_task2_1"
    scores, decisions = synthetic_outputs(seed=2)
    write_system(tmp_path / label, scores=scores, decisions=decisions)
    meta = make_meta(label, source_code=PLACEHOLDER_SOURCE_CODE)
    archive = build_archive(tmp_path / "s.zip", systems=[(label, tmp_path / label, meta)], allow_placeholders=True)
    assert main(["check-submission", str(archive)]) == 1
    printed = capsys.readouterr().out
    assert "source_code is the placeholder 'https://example.org/CHANGE_ME'" in printed
    assert "edit `submission.source_code` in the config" in printed


def test_default_submission_settings_name_nobody():
    """config.yaml and the schema defaults carry placeholders only; the package hard-codes no person."""
    config = load_config(REPO / "config.yaml")["submission"]
    schema = {key: spec.get("default") for key, spec in load_schema()["properties"]["submission"]["properties"].items()}
    for settings in (config, schema):
        assert settings["authors"], settings
        for author in settings["authors"]:
            fields = [author["lastname"], author["firstname"], author["email"], author["affiliation"]["institution"]]
            assert all(is_placeholder(field) for field in fields), author
        assert is_placeholder(settings["source_code"])
        assert all(system["label"].startswith("Lastname_Inst_") for system in settings["systems"])
    meta = {"submission": {"label": config["systems"][0]["label"], "authors": config["authors"]},
            "source_code": config["source_code"]}
    assert len(placeholder_problems(meta)) == 6  # 4 author fields, the URL, the label
    for module in ("submission/assemble.py", "submission/archive.py"):
        text = (REPO / "src" / "asd" / module).read_text()
        emails = set(re.findall(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", text))
        assert emails <= {"change.me@example.org"}, (module, emails)
        assert "firstname" not in text.replace('"firstname": PLACEHOLDER', ""), module
    demo = load_config(REPO / "config.yaml", REPO / "config" / "demo.yaml")["submission"]
    assert demo["systems"][0]["label"].startswith("Demo_")  # the demo names a demo team, not a person


# --- generated system description ---------------------------------------------------------------

HEAD = {"lora_rank": 64, "lora_alpha": 64.0, "lora_dropout": 0.0, "lora_blocks": [0, 1, 2, 3], "embedding_dim": 128,
        "arcface_scale": 30.0, "arcface_margin": 0.2, "arcface_subcenters": 16, "pooling_global_context": True}
BEATS = {"checkpoint": "/models/BEATs_iter3.pt", "sha256": "0123456789abcdef" * 4, "random_init": False,
         "num_layers": 4, "config": {"encoder_embed_dim": 768}}
RANDOM = {"checkpoint": None, "sha256": "random-init:demo:seed0", "random_init": True, "num_layers": 2,
          "config": {"encoder_embed_dim": 64}}
SCORING = {"epochs": "all", "k": 1, "separate_domain_banks": True, "domain_normalisation": False,
           "use_supplemental": True}


def describe(*, backbone=BEATS, head=None, epochs=(26, 27, 28, 29, 30), scoring=None, quantile=0.9):
    return system_description(checkpoint={"backbone": backbone, "head": {**HEAD, **(head or {})}},
                              epochs=list(epochs), scorer={"method": "knn"}, scoring={**SCORING, **(scoring or {})},
                              decision={"quantile": quantile})


def test_description_is_generated_from_checkpoint_and_config():
    paper = describe()
    assert tuple(paper) == REQUIRED_DESCRIPTION_KEYS
    assert paper["embeddings"].startswith("BEATs checkpoint (BEATs_iter3.pt, sha256 0123456789ab), first 4 "
                                          "transformer blocks")
    assert "LoRA rank 64, alpha 64 on q_proj/v_proj of blocks 0, 1, 2, 3" in paper["embeddings"]
    assert "128-d embedding" in paper["embeddings"]
    assert "epochs 26, 27, 28, 29, 30" in paper["machine_learning_method"]
    assert "scale 30, margin 0.2, 16 sub-centres" in paper["machine_learning_method"]
    assert "the 1 nearest memory-bank embedding)" in paper["machine_learning_method"]
    assert paper["ensemble_method_subsystem_count"] == 5
    assert "0.9 quantile" in paper["decision_making"]
    assert "separate source and target memory banks" in paper["domain_generalization_method"]
    assert paper["external_data_usage"] == "pre-trained BEATs model (BEATs_iter3.pt)"

    other = describe(backbone=RANDOM, head={"lora_rank": 8, "lora_alpha": 16, "lora_blocks": [1, 3]}, epochs=[3, 4],
                     scoring={"k": 5, "separate_domain_banks": False, "domain_normalisation": True}, quantile=0.95)
    changed = {key for key in paper if paper[key] != other[key]}
    assert changed == {"embeddings", "machine_learning_method", "domain_generalization_method",
                       "ensemble_method_subsystem_count", "decision_making", "external_data_usage"}
    assert other["embeddings"].startswith("random-init backbone (BEATs architecture, no pre-trained weights), "
                                          "first 2 transformer blocks (64-d)")
    assert "LoRA rank 8, alpha 16 on q_proj/v_proj of blocks 1, 3" in other["embeddings"]
    assert "epochs 3, 4" in other["machine_learning_method"] and "5 nearest" in other["machine_learning_method"]
    assert other["ensemble_method_subsystem_count"] == 2
    assert "0.95 quantile" in other["decision_making"]
    assert other["domain_generalization_method"].startswith("none (one memory bank of both domains, distances "
                                                            "standardised")
    assert other["external_data_usage"] == "none (random-init backbone)"
    assert "one checkpoint (epoch 30)" in describe(epochs=[30])["machine_learning_method"]


def test_frozen_and_demo_backbone_descriptions_say_what_they_are():
    frozen = describe(epochs=[])
    assert "frozen (no fine-tuning): the last block's tokens mean-pooled, 768-d embedding" in frozen["embeddings"]
    assert "LoRA" not in frozen["embeddings"] and "ArcFace" not in frozen["machine_learning_method"]
    assert frozen["machine_learning_method"].endswith("; the pre-trained backbone alone")
    assert frozen["attribute_usage"] == "none" and frozen["data_augmentation"] == "none"
    assert frozen["ensemble_method_subsystem_count"] == 1
    demo = describe(backbone={**BEATS, "checkpoint": "models/demo_backbone.pt", "pretrained_on": DEMO_LABEL})
    assert demo["embeddings"].startswith(f"{DEMO_LABEL} (demo_backbone.pt, sha256 0123456789ab)")
    assert "BEATs model" not in demo["external_data_usage"] and demo["external_data_usage"].startswith("none")


def test_build_submission_generates_meta_and_warns_of_placeholders(tmp_path, caplog):
    backbone, identity = build_backbone(TINY_BACKBONE)
    head = HeadConfig(lora_rank=4, lora_alpha=8, lora_blocks=[2, 3], embedding_dim=16, arcface_subcenters=2)
    model = ASDModel(backbone, head=head, subcenters=[1, 2])
    checkpoint = tmp_path / "epoch_1.pt"
    torch.save(checkpoint_dict(model, epoch=1, head=head, backbone=identity, classes=["a", "b"], subcenters=[1, 2],
                               metrics={}), checkpoint)
    score_paths = []
    for system in ("late", "epoch_3"):
        for machine in MACHINES:
            rows = [{"role": "test", "split": "test", "file": clip, "domain": "source", "label": "", "attributes": "",
                     "score": float(i), "decision": int(i > 2)} for i, clip in enumerate(CLIPS)]
            path = tmp_path / "scores" / machine / f"{system}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(path, index=False)
            score_paths.append(str(path))
    submission = {"systems": [{"label": "Lastname_Inst_task2_1", "system": "late"},
                              {"label": "Lastname_Inst_task2_2", "system": "epoch_3"}],
                  "name": "BEATs LoRA ArcFace KNN", "abbreviation": "BLAK", "authors": list(PLACEHOLDER_AUTHORS),
                  "source_code": PLACEHOLDER_SOURCE_CODE}
    archive = tmp_path / "Lastname_Inst_task2.zip"
    with caplog.at_level(logging.WARNING, logger="asd.submission.assemble"):
        build_submission(zip_path=str(archive), score_paths=score_paths, dev_tables=[], checkpoint_path=str(checkpoint),
                         machine_types=MACHINES, submission=submission, backbone_settings=dict(TINY_BACKBONE),
                         ensembles={"late": [2, 3]}, scorers={"knn": {"method": "knn"}}, scoring=dict(SCORING, k=2),
                         decision={"quantile": 0.8})
    warned = caplog.text
    assert "Lastname_Inst_task2_1.meta.yaml: submission.authors[0].lastname is the placeholder" in warned
    assert "asd check-submission" in warned
    problems = check_submission(archive, machines=MACHINES)
    assert len(problems) == 2 * 6 and all("placeholder" in problem for problem in problems), problems
    with zipfile.ZipFile(archive) as zf:
        metas = [yaml.safe_load(zf.read(f"Lastname_Inst_task2_{n}/Lastname_Inst_task2_{n}.meta.yaml")) for n in (1, 2)]
    first, second = (meta["system"]["description"] for meta in metas)
    assert "LoRA rank 4, alpha 8 on q_proj/v_proj of blocks 2, 3" in first["embeddings"]
    assert "random-init backbone" in first["embeddings"] and "16-d embedding" in first["embeddings"]
    assert "epochs 2, 3" in first["machine_learning_method"] and "2 sub-centres" in first["machine_learning_method"]
    assert "one checkpoint (epoch 3)" in second["machine_learning_method"]
    assert (first["ensemble_method_subsystem_count"], second["ensemble_method_subsystem_count"]) == (2, 1)
    assert "0.8 quantile" in first["decision_making"]
    assert all(meta["external_datasets"] == [] for meta in metas)  # no pre-trained weights were used
    assert metas[0]["system"]["complexity"]["total_parameters"] > 0 and metas[0]["system"]["complexity"]["MACS"] > 0
