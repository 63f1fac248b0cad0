"""The whole Snakemake workflow on the tiny demo overlay: outputs, labels, reproducibility,
SIGKILL + --rerun-incomplete, one machine type regenerated in isolation, lint, config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import zipfile

import pandas as pd
import pytest
import yaml

from asd.submission.archive import check_submission
from asd.model.train import CRASH_AFTER_EPOCH
from workflow_runner import COMPARED, OVERLAYS, REPO, planned_jobs, planned_outputs, result_files, run_workflow, snakemake_command

pytestmark = pytest.mark.slow
DEMO_BACKBONE = "demo backbone pre-trained on synthetic machine sounds — not BEATs"


def test_outputs_tables_and_demo_backbone_labels(reference_run):
    results = reference_run / "results"
    for fold, machines in (("dev", ["fan", "valve"]), ("eval", ["Polisher"])):
        for system in ("frozen", "epoch_1", "epoch_2", "ensemble"):
            table = pd.read_csv(results / "tables" / fold / f"{system}.csv").set_index("metric")
            assert list(table.index) == ["AUC Source", "AUC Target", "pAUC", "hmean"]
            assert list(table.columns) == machines + ["All (hmean)"]
            assert ((table >= 0) & (table <= 100)).all().all()
            assert DEMO_BACKBONE in (results / "tables" / fold / f"{system}.md").read_text()
        summary = pd.read_csv(results / "tables" / fold / "summary.csv")
        scorers = ["knn", "knn_domain_norm", "knn_rescale", "target_mixup", "kmeans"]  # config.yaml's, primary first
        assert list(summary["system"]) == ["frozen", "epoch_1", "epoch_2", "ensemble"] * len(scorers)
        assert list(summary["scorer"]) == [scorer for scorer in scorers for _ in range(4)]
        assert ((summary["hmean"] > 0) & (summary["hmean"] <= 100)).all()
        assert (pd.read_csv(results / "models" / fold / "train_log.csv")["backbone"].str.contains(DEMO_BACKBONE)).all()
    archive = results / "submission" / "Demo_SynthPretrained_task2.zip"
    assert check_submission(archive, machines=["Polisher"]) == []
    with zipfile.ZipFile(archive) as zf:
        for label, system in (("Demo_SynthPretrained_task2_1", "ensemble"), ("Demo_SynthPretrained_task2_2", "frozen")):
            meta = yaml.safe_load(zf.read(f"{label}/{label}.meta.yaml"))
            scores = zf.read(f"{label}/anomaly_score_Polisher_section_00_test.csv").decode().splitlines()
            assert meta["submission"]["name"].endswith(f"({system}, knn) (demo backbone pre-trained on synthetic "
                                                       "sounds, not BEATs)")
            assert meta["external_datasets"] == []
            assert len(scores) == 8 and all(line.split(",")[0].startswith("section_00_") for line in scores)
            submitted = dict(line.split(",") for line in scores)
            table = pd.read_csv(results / "scores" / "eval" / "Polisher" / f"{system}.csv")
            assert {f: float(s) for f, s in submitted.items()} == pytest.approx(
                dict(zip(table.loc[table["role"] == "test", "file"], table.loc[table["role"] == "test", "score"])))
    assert "frozen (no fine-tuning)" in meta["system"]["description"]["embeddings"]
    # every rule logged, heavy rules benchmarked
    assert (results / "logs" / "train" / "dev.log").read_text().count("epoch ") >= 2
    assert (results / "benchmarks" / "train" / "dev.tsv").exists()


def test_noise_only_supplemental_is_kept_out_of_the_bank(reference_run):
    banks = reference_run / "results" / "banks" / "dev"
    valve = json.loads((banks / "valve" / "epoch_2.json").read_text())  # neutral names, noise-only content
    fan = json.loads((banks / "fan" / "epoch_2.json").read_text())  # names say machine
    assert valve["counts"]["supplemental_machine"] == 0 and valve["counts"]["supplemental_excluded"] == 3
    assert all("automatic test" in e["reason"] for e in valve["excluded"])
    assert fan["counts"]["supplemental_machine"] == 3 and fan["counts"]["source_bank"] == 4 + 3


def test_two_runs_from_scratch_are_identical(reference_run, tmp_path):
    run_workflow(tmp_path)
    first, second = result_files(reference_run, *COMPARED), result_files(tmp_path, *COMPARED)
    assert first.keys() == second.keys() and len(first) == 193
    assert [k for k in first if first[k] != second[k]] == []


def test_sigkill_mid_training_then_rerun_incomplete_gives_same_results(reference_run, tmp_path):
    # The training job SIGKILLs its whole session (Snakemake included) right after epoch 1's state is saved:
    # a hard kill at a known point, with no timing window.
    proc = subprocess.run(snakemake_command(tmp_path), capture_output=True, start_new_session=True,
                          env={**os.environ, CRASH_AFTER_EPOCH: "1"}, timeout=900)
    assert proc.returncode == -signal.SIGKILL
    states = list((tmp_path / "results" / "models").glob("*/.state/last.pt"))  # the first fold to finish epoch 1
    assert len(states) == 1
    fold = states[0].parent.parent.name
    assert not (states[0].parent / "epoch_2.pt").exists()  # killed mid-training
    run_workflow(tmp_path, "--unlock")  # a SIGKILLed Snakemake leaves its lock behind
    run_workflow(tmp_path, "--rerun-incomplete")
    log = (tmp_path / "results" / "logs" / "train" / f"{fold}.log").read_text()
    assert "resuming after epoch 1" in log
    first, second = result_files(reference_run, *COMPARED), result_files(tmp_path, *COMPARED)
    assert [k for k in first if first[k] != second.get(k)] == []


ISOLATED_MACHINE = ["--forcerun", "results/embeddings/dev/fan/epoch_1.h5"]  # the README's command


def test_one_machine_type_regenerated_in_isolation(reference_run, tmp_path):
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(reference_run, workdir, symlinks=True)
    # the whole fold's training is reused: one embedding job (the GPU one), its scoring, the fold's tables
    assert planned_jobs(workdir, *ISOLATED_MACHINE) == {"embed": 1, "score": 1, "evaluate": 1, "plots_scores": 1,
                                                       "plots_models": 1, "submission": 1, "all": 1}
    before = {p: p.stat().st_mtime_ns for p in (workdir / "results").rglob("*") if p.is_file()}
    time.sleep(1.1)
    run_workflow(workdir, *ISOLATED_MACHINE)
    changed = {str(p.relative_to(workdir / "results")) for p in before if p.stat().st_mtime_ns != before[p]}
    # the dev tables and plots, and the submission whose meta.yaml reports them, are assembled from per-machine files
    dev_tables = tuple(f"{kind}/{rule}" for kind in ("logs", "benchmarks") for rule in (
        "evaluate/dev", "plots_scores/dev", "plots_models/dev", "submission/")) + (
        "tables/dev/", "metrics/dev/", "plots/dev/", "submission/")
    assert [c for c in changed if "dev/fan" not in c and not c.startswith(dev_tables)] == []
    assert not any(c.startswith(("models/", "features/")) for c in changed)
    assert any(c.startswith("scores/dev/fan/") for c in changed) and any(c.startswith("tables/dev/") for c in changed)


def test_label_scoring_and_device_edits_rerun_only_what_reads_them(reference_run, tmp_path):
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(reference_run, workdir, symlinks=True)
    assert planned_jobs(workdir) == {}

    def overlay(text: str) -> list[str]:
        path = tmp_path / f"overlay_{len(list(tmp_path.glob('overlay_*')))}.yaml"
        path.write_text(text)
        return ["--configfile", *OVERLAYS, str(path)]

    # new eval labels: only the eval fold's evaluation and score plots (labels enter nowhere upstream)
    truth = tmp_path / "eval_list.csv"
    truth.write_bytes((workdir / "results/demo_data/dcase/eval_data_list_demo.csv").read_bytes())
    assert planned_jobs(workdir, *overlay(f"datasets: {{eval: {{ground_truth: {truth}}}}}")) == {
        "evaluate": 1, "plots_scores": 1, "all": 1}
    # scoring and decision edits: scoring, evaluation, plots, submission; never features, training or embeddings
    for text in ("scoring: {k: 2}", "decision: {quantile: 0.8}", "ensembles: {ensemble: [2]}"):
        jobs = planned_jobs(workdir, *overlay(text))
        assert jobs["score"] == 3 and not {"features", "train", "embed"} & set(jobs), (text, jobs)
    # where and how fast the GPU rules run is not what they compute
    assert planned_jobs(workdir, *overlay("embed: {batch_size: 3}")) == {}
    # the clip length shapes features and model: everything from the features on
    jobs = planned_jobs(workdir, *overlay("audio: {clip_seconds: 1.5}"))
    assert jobs["features"] == 3 and jobs["train"] == 2 and jobs["embed"] == 3


def test_lint_passes():
    proc = subprocess.run(snakemake_command(REPO, "--lint"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bad_config_value_fails_before_any_job(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("train:\n  epochs: 0\n")
    proc = run_workflow(tmp_path, "-n", "--configfile", str(overlay), check=False)  # replaces the test overlays
    assert proc.returncode != 0
    assert "config key 'train.epochs': 0 is less than the minimum of 1" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_training_on_the_demo_dataset_lowers_loss_and_raises_accuracy(reference_run, tmp_path):
    from asd.model.train import train_fold
    from conftest import train_settings

    features = sorted(str(p) for p in (reference_run / "results" / "features" / "dev").glob("*.h5"))
    settings = train_settings(epochs=8, learning_rate=3e-3, batch_size=4)
    train_fold(fold="dev", feature_paths=features, checkpoint_paths=[str(tmp_path / f"epoch_{e}.pt") for e in range(1, 9)],
               log_path=str(tmp_path / "train_log.csv"), settings=settings)
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert log["loss"].iloc[-1] < 0.7 * log["loss"].iloc[0]
    # 14 clips under SpecAugment: the per-epoch training accuracy is noisy, its best epoch beats the first
    assert log["accuracy"].max() > log["accuracy"].iloc[0]


def test_a_changed_or_added_clip_reruns_its_machine_type_and_fold_only(reference_run, tmp_path):
    import shutil

    # Real-data layout (not the demo rule): a copy of the demo's dev clips under a root of our own.
    root = tmp_path / "raw"
    shutil.copytree(reference_run / "results/demo_data/dcase/dev_data/raw", root)
    overlay = tmp_path / "real.yaml"
    overlay.write_text(f"datasets: {{dev: {{root: {root}, demo: false}}}}\n")
    args = ["--configfile", *OVERLAYS, str(overlay), "--", "results/tables/dev/summary.md"]  # "--": not a config file
    run_workflow(tmp_path, *args)
    assert planned_jobs(tmp_path, *args) == {}
    clip = sorted((root / "fan" / "train").glob("*.wav"))[0]
    original, stat = clip.read_bytes(), clip.stat()
    clip.write_bytes(original[:-2000] + bytes(2000))  # a re-recorded clip: same name, new content
    assert planned_jobs(tmp_path, *args) == {"features": 1, "train": 1, "embed": 2, "score": 2, "evaluate": 1}
    assert "results/features/dev/fan.h5" in planned_outputs(tmp_path, *args)
    clip.write_bytes(original)
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned_jobs(tmp_path, *args) == {}
    first = sorted((root / "valve" / "train").glob("*.wav"))[0]
    shutil.copy(first, first.with_name(first.name.replace("_0000_", "_0999_")))  # a new clip
    assert planned_jobs(tmp_path, *args) == {"features": 1, "train": 1, "embed": 2, "score": 2, "evaluate": 1}
    assert "results/features/dev/valve.h5" in planned_outputs(tmp_path, *args)
