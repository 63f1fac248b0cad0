"""The catalogue of bad inputs (docs/bad-inputs.md): each case and the exact message the user sees.

Cases already pinned elsewhere (wrong names, sample rate, channels, empty / corrupt WAV, missing
folders, truncated checkpoint, empty KNN bank, ...) are only listed in the docs, pointing at their test.
Everything here runs the real code: real WAVs, the real index, fbank cache, training, embedding and scoring.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from asd import cli, rules
from asd.config import fold_has_labels, load_config
from asd.data.dataset import build_manifest
from asd.model.embed import extract_epoch_embeddings
from asd.errors import AsdError
from asd.data.features import cache_features, load_features
from asd.model.asd_model import load_epoch_checkpoint
from asd.scoring.score import score_epoch, write_bank
from asd.store import load_embeddings
from asd.model.train import train_fold
from conftest import REPO, SAMPLE_RATE, TINY_BACKBONE, tone_clip, train_settings

CONFIG = REPO / "config.yaml"
SCHEMA = "workflow/schemas/config.schema.yaml"
SCORING = {"k": 1, "separate_domain_banks": True, "domain_normalisation": False}
DECISION = {"quantile": 0.9}


def train(out: Path, features: list[Path], **train_options) -> list[str]:
    """A tiny training run; batch_size 64 > 36 clips gives one step per epoch."""
    settings = train_settings(batch_size=64, **train_options)
    checkpoints = [str(out / f"epoch_{e}.pt") for e in range(1, settings["train"]["epochs"] + 1)]
    train_fold(fold="t", feature_paths=[str(p) for p in features], checkpoint_paths=checkpoints,
               log_path=str(out / "train_log.csv"), settings=settings)
    return checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synthetic_fold) -> str:
    return train(tmp_path_factory.mktemp("model"), synthetic_fold, epochs=1)[0]


@pytest.fixture(scope="module")
def eval_layout(tmp_path_factory, checkpoint) -> SimpleNamespace:
    """An eval-layout machine type (unlabelled test names, no ground truth) indexed, cached and embedded."""
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(1)
    names = {"train": [f"section_00_{domain}_train_normal_{i:04d}_noAttribute.wav"
                       for i, domain in enumerate(["source"] * 4 + ["target"] * 2)],
             "test": [f"section_00_{i:04d}.wav" for i in range(3)]}
    for split, files in names.items():
        for i, name in enumerate(files):
            path = root / "raw/ToyPet" / split / name
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, tone_clip(rng, f0=120.0 + 20 * i, seconds=2.0), SAMPLE_RATE, subtype="PCM_16")
    manifest = build_manifest(root / "raw", dataset="eval")
    features = root / "features.h5"
    cache_features(manifest=manifest, machine="ToyPet", out_path=features, sample_rate=SAMPLE_RATE,
                   channel_policy="refuse", clip_seconds=2.0, dtype="float32")
    embeddings = root / "epoch_1.h5"
    extract_epoch_embeddings(checkpoint_paths=[checkpoint], features_path=str(features), out_paths=[embeddings],
                       backbone_settings=TINY_BACKBONE, device="cpu", precision="fp32")
    bank = root / "bank.json"
    write_bank(embeddings_path=str(embeddings), out_path=str(bank), machine="ToyPet", kind_override=None,
               use_supplemental=True)
    scores = root / "scores.csv"
    score_epoch(embeddings_path=str(embeddings), bank_path=str(bank), out_path=str(scores), machine="ToyPet",
                scoring=SCORING, decision=DECISION)
    return SimpleNamespace(root=root, manifest=manifest, features=features, embeddings=embeddings, bank=bank,
                           scores=scores)


def overlay(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "overlay.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("train: {epochs: -1}",
     "config key 'train.epochs': -1 is less than the minimum of 1. Fix the value"),
    ("train: {epochs: ten}",
     "config key 'train.epochs': 'ten' is not of type 'integer'. Fix the value"),
    ("audio: {channel_policy: left}",
     "config key 'audio.channel_policy': 'left' is not one of ['refuse', 'mean', 'first']. Fix the value"),
    ("train: {epoch: 3}",
     "config key 'train': Additional properties are not allowed ('epoch' was unexpected). Remove or rename the key"),
    ("scorers: {rescale: {method: knn_rescale, kref: 4}}",
     "config key 'scorers.rescale': Additional properties are not allowed ('kref' was unexpected). Remove or rename the key"),
    ("scorers: {rescale: {method: knn_rescale}}",
     "config key 'scorers.rescale': 'k_ref' is a required property. Fix the value"),
    ("scorers: {rescale: {method: knnrescale, k_ref: 4}}",
     "config key 'scorers.rescale.method': 'knnrescale' is not one of ['knn', 'knn_rescale', 'target_mixup', 'kmeans']. "
     "Fix the value"),
], ids=["negative-epochs", "wrong-type", "bad-enum", "unknown-key", "scorer-unknown-parameter",
        "scorer-missing-parameter", "scorer-unknown-method"])
def test_bad_config_value_names_key_and_schema(tmp_path, text, message):
    path = overlay(tmp_path, text)
    with pytest.raises(AsdError) as error:
        load_config(CONFIG, path)
    assert str(error.value) == f"{CONFIG} + {path}: {message} (see the keys and their descriptions in {SCHEMA})."


DEV_TYPES = "['ToyCar', 'ToyTrain', 'bearing', 'fan', 'gearbox', 'slider', 'valve']"


@pytest.mark.parametrize("text, message", [
    ("folds: {dev: {dataset: dev, machine_types: [pump]}}",
     f"config key 'folds.dev.machine_types' names ['pump'], which are not machine types of dataset 'dev' "
     f"({DEV_TYPES}); add them to datasets.dev.machine_types or remove them from the fold."),
    ("folds: {dev: {dataset: evl}}",
     "config key 'folds.dev.dataset' names 'evl', which is not a dataset; use one of ['dev', 'eval']."),
    ("ensembles: {ensemble: [29, 31]}",
     "config key 'ensembles.ensemble' lists epochs [31] but train.epochs is 30; use epochs between 1 and 30."),
    ("scoring: {epochs: [31]}",
     "config key 'scoring.epochs' lists epoch 31 beyond train.epochs (30); use epochs between 1 and 30, or all."),
    ("supplemental_kinds: {pump: noise}",
     "config key 'supplemental_kinds' names unknown machine types ['pump']; use machine types listed under "
     "datasets.<name>.machine_types, or remove them."),
    ("folds: {eval: {dataset: dev}}",
     "config key 'folds' names ['eval'], which are datasets other than the folds' own; a fold may share its name "
     "only with its own dataset, so rename the fold."),
], ids=["fold-machine-type-not-in-dataset", "fold-unknown-dataset", "ensemble-epoch-beyond-training",
        "scored-epoch-beyond-training", "supplemental-kind-unknown-machine", "fold-named-after-another-dataset"])
def test_config_cross_references(tmp_path, text, message):
    path = overlay(tmp_path, text)
    with pytest.raises(AsdError) as error:
        load_config(CONFIG, path)
    assert str(error.value) == f"{CONFIG} + {path}: {message}"


def test_unreadable_config_files(tmp_path):
    with pytest.raises(AsdError) as error:
        load_config(tmp_path / "conifg.yaml")
    assert str(error.value) == (f"config file {tmp_path / 'conifg.yaml'} does not exist; pass an existing YAML "
                                "file (e.g. config.yaml).")
    broken = overlay(tmp_path, "train: [epochs: 3\n")
    with pytest.raises(AsdError) as error:
        load_config(CONFIG, broken)
    assert str(error.value) == (f"config file {broken} is not valid YAML: expected ',' or ']', but got "
                                "'<stream end>' (line 2, column 1); fix the syntax there.")
    listing = overlay(tmp_path, "- train\n- epochs\n")
    with pytest.raises(AsdError) as error:
        load_config(CONFIG, listing)
    assert str(error.value) == (f"config file {listing} holds a list, not a mapping of keys; write it as "
                                "`key: value` lines (e.g. `train: {epochs: 30}`).")


def test_eval_fold_without_ground_truth_is_not_evaluated(tmp_path, eval_layout, checkpoint, capfd):
    config = load_config(CONFIG)
    assert fold_has_labels(config, "dev") and not fold_has_labels(config, "eval")  # so no eval tables are targeted
    assert fold_has_labels(load_config(CONFIG, overlay(tmp_path, "datasets: {eval: {ground_truth: gt.csv}}")), "eval")
    # Without labels the 'evaluate' job itself (reached only through asd.rules: the workflow refuses to build
    # it, see test_bad_inputs_workflow.py) stops with the fix and writes nothing.
    assert set(pd.read_csv(eval_layout.scores).query("role == 'test'")["label"]) == {"unknown"}
    out, log = tmp_path / "out", tmp_path / "evaluate.log"
    job = SimpleNamespace(
        input=SimpleNamespace(scores=[str(eval_layout.scores)], train_log=str(Path(checkpoint).parent / "train_log.csv")),
        output=SimpleNamespace(metrics=[str(out / "epoch_1.json")], tables=[str(out / "epoch_1.csv")],
                               markdown=[str(out / "epoch_1.md")], summary_csv=str(out / "summary.csv"),
                               summary_md=str(out / "summary.md")),
        params=SimpleNamespace(machines=["ToyPet"], systems=["epoch_1"], scorers=["knn"], ground_truth=None),
        wildcards=SimpleNamespace(fold="eval"), log=[str(log)])
    with pytest.raises(SystemExit) as exit_status:
        rules.run(job, rules.evaluate)
    message = (f"{eval_layout.scores}: 3 test clips of ToyPet have no label (e.g. section_00_0000.wav); set the "
               "dataset's ground_truth in the config (an eval_data_list csv) to evaluate it, or do not evaluate "
               "this fold.")
    assert exit_status.value.code == 1
    assert capfd.readouterr().err == f"ERROR: {message}\n"
    assert log.read_text().rstrip().endswith(f"ERROR asd: {message}") and not out.exists()


def test_fold_machine_type_without_clips_stops_the_feature_job(tmp_path, eval_layout):
    # A guard behind the scan (which refuses a machine type without clips first): not reachable through snakemake.
    root = str(eval_layout.root / "raw")  # the feature job names the dataset root it scanned
    with pytest.raises(AsdError) as error:
        cache_features(manifest=eval_layout.manifest, machine="ToyCar", out_path=tmp_path / "ToyCar.h5",
                       sample_rate=SAMPLE_RATE, channel_policy="refuse", clip_seconds=2.0, dtype="float32",
                       manifest_path=root)
    assert str(error.value) == (f"{root} has no clips of machine type 'ToyCar'; check the dataset's machine_types "
                                "in the config against the folders under its root.")
    assert not list(tmp_path.iterdir())


def damaged_copy(source: Path, dest: Path, damage) -> Path:
    shutil.copy(source, dest)
    damage(dest)
    return dest


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def mark_incomplete(path: Path) -> None:
    with h5py.File(path, "a") as h5:
        h5.attrs["complete"] = False


def flip_one_bit_in_clip(clip: int):
    """A single flipped bit inside one clip's fbank chunk (clip 10: beyond the finiteness spot-check)."""
    def damage(path: Path) -> None:
        with h5py.File(path, "r") as h5:
            offset = h5["fbank"].id.get_chunk_info(clip).byte_offset
        data = bytearray(path.read_bytes())
        data[offset + 400] ^= 0x01
        path.write_bytes(data)
    return damage


def write_nan_into_clip(path: Path) -> None:
    with h5py.File(path, "a") as h5:
        h5["fbank"][0, 5, 7] = np.nan


@pytest.mark.parametrize("damage, message", [
    (truncate, r"is corrupt or truncated \(Unable to synchronously open file \(truncated file: eof = \d+, "
               r"sblock->base_addr = 0, stored_eof = \d+\)\)"),
    (flip_one_bit_in_clip(10), r"is corrupt or truncated \(Can't synchronously read data \(filter returned "
                               r"failure during read\)\)"),
    (mark_incomplete, "is incomplete"),
    (write_nan_into_clip, "holds non-finite values"),
], ids=["truncated", "bit-flip", "incomplete", "non-finite"])
def test_damaged_feature_file_is_refused_with_the_rule_to_rerun(tmp_path, synthetic_fold, damage, message):
    path = damaged_copy(synthetic_fold[0], tmp_path / "fan.h5", damage)
    with pytest.raises(AsdError) as error:
        load_features(path)
    rerun = re.escape(f"; rebuild it with the 'features' rule (snakemake --forcerun {path}).")
    assert re.fullmatch(re.escape(f"feature file {path} ") + message + rerun, str(error.value))


def test_missing_feature_and_embedding_files(tmp_path):
    with pytest.raises(AsdError) as error:
        load_features(tmp_path / "fan.h5")
    assert str(error.value) == (f"feature file {tmp_path / 'fan.h5'} does not exist; build it with the "
                                f"'features' rule (snakemake {tmp_path / 'fan.h5'}).")
    with pytest.raises(AsdError) as error:
        load_embeddings(tmp_path / "epoch_1.h5")
    assert str(error.value) == (f"embedding file {tmp_path / 'epoch_1.h5'} does not exist; build it with the "
                                f"'embed' rule (snakemake {tmp_path / 'epoch_1.h5'}).")


@pytest.mark.parametrize("damage, message", [
    (truncate, r"is corrupt or truncated \(Unable to synchronously open file \(truncated file: .+\)\)"),
    (mark_incomplete, "is incomplete"),
], ids=["truncated", "incomplete"])
def test_damaged_embedding_file_is_refused_with_the_rule_to_rerun(tmp_path, eval_layout, damage, message):
    path = damaged_copy(eval_layout.embeddings, tmp_path / "epoch_1.h5", damage)
    with pytest.raises(AsdError) as error:
        write_bank(embeddings_path=str(path), out_path=str(tmp_path / "bank.json"), machine="ToyPet",
                   kind_override=None, use_supplemental=True)
    rerun = re.escape(f"; rebuild it with the 'embed' rule (snakemake --forcerun {path}).")
    assert re.fullmatch(re.escape(f"embedding file {path} ") + message + rerun, str(error.value))
    assert not (tmp_path / "bank.json").exists()


def foreign_checkpoint(source: Path, dest: Path) -> None:
    torch.save({"model": torch.load(source, weights_only=True)["state"]}, dest)


def wrong_shape_checkpoint(source: Path, dest: Path) -> None:
    ckpt = torch.load(source, weights_only=True)
    ckpt["state"]["projection.2.weight"] = torch.zeros(16, 64)  # trained with embedding_dim 32
    torch.save(ckpt, dest)


def random_bytes(source: Path, dest: Path) -> None:
    dest.write_bytes(np.random.default_rng(0).bytes(4096))


@pytest.mark.parametrize("make, message", [
    (foreign_checkpoint, r"{path} is not an asd epoch checkpoint \(format asd-epoch-checkpoint-v1\)"),
    (wrong_shape_checkpoint, r"checkpoint {path} does not fit the model \(.*size mismatch for projection\.2\.weight: "
                             r"copying a param with shape torch\.Size\(\[16, 64\]\) from checkpoint, the shape in "
                             r"current model is torch\.Size\(\[32, 64\]\)\.\)"),
    (random_bytes, r"checkpoint {path} cannot be read \(\w+Error: .*\)"),
], ids=["foreign", "wrong-shape", "random-bytes"])
def test_unusable_epoch_checkpoint_names_file_and_rule(tmp_path, checkpoint, make, message):
    path = tmp_path / "epoch_1.pt"
    make(Path(checkpoint), path)
    with pytest.raises(AsdError) as error:
        load_epoch_checkpoint(path, backbone_settings=TINY_BACKBONE)
    expected = message.format(path=re.escape(str(path))) + re.escape("; delete it and rerun the 'train' rule")
    assert re.match(expected, str(error.value), flags=re.DOTALL), str(error.value)


def test_bank_without_training_clips(tmp_path, checkpoint, eval_layout):
    test_only = eval_layout.manifest[eval_layout.manifest["split"] == "test"]
    cache_features(manifest=test_only, machine="ToyPet", out_path=tmp_path / "ToyPet.h5", sample_rate=SAMPLE_RATE,
                   channel_policy="refuse", clip_seconds=2.0, dtype="float32")
    embeddings = tmp_path / "epoch_1.h5"
    extract_epoch_embeddings(checkpoint_paths=[checkpoint], features_path=str(tmp_path / "ToyPet.h5"), out_paths=[embeddings],
                       backbone_settings=TINY_BACKBONE, device="cpu", precision="fp32")
    with pytest.raises(AsdError) as error:
        write_bank(embeddings_path=str(embeddings), out_path=str(tmp_path / "bank.json"), machine="ToyPet",
                   kind_override=None, use_supplemental=True)
    assert str(error.value) == (f"memory bank from {embeddings}: ToyPet: the manifest has no training clips; "
                                "check the dataset root and rerun the 'features' rule.")
    assert not (tmp_path / "bank.json").exists()


@pytest.mark.parametrize("members, message", [
    ({"source": [], "target": []},
     "memory bank is empty for ToyPet in {bank}: no source or target clips to compare with; check that the "
     "manifest lists its training clips and rerun the 'score' rule."),
    ({"source": ["section_00_source_train_normal_0009_noAttribute.wav"], "target": []},
     "{bank} lists clips ['section_00_source_train_normal_0009_noAttribute.wav'] that the embeddings do not hold; "
     "rebuild it with the 'score' rule (snakemake --forcerun {bank})."),
], ids=["empty", "stale"])
def test_bank_file_that_cannot_be_scored(tmp_path, eval_layout, members, message):
    bank = tmp_path / "bank.json"
    bank.write_text(json.dumps({**json.loads(eval_layout.bank.read_text()), "members": members}))
    with pytest.raises(AsdError) as error:
        score_epoch(embeddings_path=str(eval_layout.embeddings), bank_path=str(bank), out_path=str(tmp_path / "s.csv"),
                    machine="ToyPet", scoring=SCORING, decision=DECISION)
    assert str(error.value) == message.format(bank=bank)
    assert not (tmp_path / "s.csv").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, synthetic_fold):
    # One step per epoch: epoch 1's only loss is computed before any update, the 1e30 step then diverges.
    with pytest.raises(AsdError) as error:
        train(tmp_path, synthetic_fold, epochs=2, learning_rate=1e30)
    good = tmp_path / "epoch_1.pt"
    assert re.fullmatch(re.escape("training fold 't' stopped: the loss became ") + r"(nan|inf)" + re.escape(
        " at epoch 2, step 1. Lower train.learning_rate or set train.precision: fp32, then rerun (a changed setting "
        "trains from scratch)."), str(error.value))
    assert not (tmp_path / "epoch_2.pt").exists()
    assert pd.read_csv(tmp_path / "train_log.csv")["epoch"].tolist() == [1]
    _, ckpt = load_epoch_checkpoint(good, backbone_settings=TINY_BACKBONE)
    assert ckpt["epoch"] == 1 and np.isfinite(ckpt["metrics"]["loss"])
    # The stored tensors are finite; epoch 1's single step (lr 1e30) already diverged them, so a model that merges
    # its LoRA factors for inference is not (the loss only shows it at epoch 2).
    assert all(torch.isfinite(t).all() for t in ckpt["state"].values() if t.is_floating_point())


def test_cli_prints_the_message_alone(tmp_path, capsys):
    clip = tmp_path / "raw/fan/train/section_00_source_train_normal_0000_a_1.wav"
    clip.parent.mkdir(parents=True)
    sf.write(clip, np.zeros(4410), 44100, subtype="PCM_16")
    (tmp_path / "raw/fan/test").mkdir()
    assert cli.main(["index", str(tmp_path / "raw")]) == 1
    assert capsys.readouterr().err == (
        f"error: {clip}: sample rate is 44100 Hz, expected 16000 Hz; resample the clips to 16 kHz (e.g. `sox in.wav "
        "-r 16000 out.wav`) or set `audio.sample_rate`.\n")


def test_cli_on_a_root_without_machine_folders_and_a_foreign_attributes_csv(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    assert cli.main(["index", str(tmp_path / "raw")]) == 1
    assert capsys.readouterr().err == (
        f"error: dataset root {tmp_path / 'raw'} holds no machine-type folders; point `root` at the folder that "
        "holds <machine>/train and <machine>/test (e.g. data/dcase2025t2/dev_data/raw).\n")
    for split, name in (("train", "section_00_source_train_normal_0000_a_1.wav"), ("test", "section_00_0000.wav")):
        (tmp_path / "raw/fan" / split).mkdir(parents=True)
        sf.write(tmp_path / "raw/fan" / split / name, np.zeros(800), SAMPLE_RATE, subtype="PCM_16")
    (tmp_path / "raw/fan/attributes_00.csv").write_text("name,d1p\n")
    assert cli.main(["index", str(tmp_path / "raw")]) == 1
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'raw/fan/attributes_00.csv'}: expected a header starting with `file_name` "
        "(file_name,d1p,d1v,...); restore the file from the dataset zip or delete it.\n")


def test_every_test_the_catalogue_cites_exists():
    """docs/bad-inputs.md points each case at its test; a renamed or removed test (or case id) must fail here.

    Every row is reached through `snakemake` (tests/test_bad_inputs_workflow.py) or says why not.
    """
    cited, unreached = [], []
    for row in (REPO / "docs/bad-inputs.md").read_text().splitlines():
        if not row.startswith("| ") or row.startswith(("| Case", "|---")):
            continue
        test_cell = row.rsplit(" | ", 1)[1]
        if "test_bad_inputs_workflow.py::" not in test_cell and not test_cell.startswith("Not through snakemake"):
            unreached.append(row[:80])
        test_file = "test_bad_inputs.py"
        for reference in re.findall(r"`([^`]+)`", test_cell):
            file_part, _, name = reference.rpartition("::")
            test_file = file_part or (test_file if reference.startswith("::") else "test_bad_inputs.py")
            name, _, ids = name.partition("[")
            cited.append((test_file, name, [i for i in ids.rstrip("]").split(",") if i]))
    assert len(cited) >= 40 and unreached == []
    missing = [(f, n) for f, n, _ in cited if f"def {n}(" not in (REPO / "tests" / f).read_text()]
    missing_ids = [(f, n, i) for f, n, ids in cited for i in ids if f'"{i}"' not in (REPO / "tests" / f).read_text()]
    assert missing == [] and missing_ids == []
