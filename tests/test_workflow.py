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

from asd.submission import check_submission
from asd.train import CRASH_AFTER_EPOCH
from workflow_runner import COMPARED, REPO, result_files, run_workflow, snakemake_command

pytestmark = pytest.mark.slow
RANDOM_INIT = "random-init backbone"


def test_outputs_tables_and_random_init_labels(reference_run):
    results = reference_run / "results"
    for fold, machines in (("dev", ["fan", "valve"]), ("eval", ["Polisher"])):
        for system in ("epoch_1", "epoch_2", "ensemble"):
            table = pd.read_csv(results / "tables" / fold / f"{system}.csv").set_index("metric")
            assert list(table.index) == ["AUC Source", "AUC Target", "pAUC", "hmean"]
            assert list(table.columns) == machines + ["All (hmean)"]
            assert ((table >= 0) & (table <= 100)).all().all()
            assert RANDOM_INIT in (results / "tables" / fold / f"{system}.md").read_text()
        summary = pd.read_csv(results / "tables" / fold / "summary.csv")
        assert list(summary["system"]) == ["epoch_1", "epoch_2", "ensemble"]
        assert (pd.read_csv(results / "models" / fold / "train_log.csv")["backbone"].str.contains(RANDOM_INIT)).all()
    archive = results / "submission" / "Demo_random-init_task2.zip"
    assert check_submission(archive, machines=["Polisher"]) == []
    with zipfile.ZipFile(archive) as zf:
        meta = zf.read("Demo_RandomInit_task2_1/Demo_RandomInit_task2_1.meta.yaml").decode()
        scores = zf.read("Demo_RandomInit_task2_1/anomaly_score_Polisher_section_00_test.csv").decode().splitlines()
    assert RANDOM_INIT in meta
    assert len(scores) == 8 and all(line.split(",")[0].startswith("section_00_") for line in scores)
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
    assert first.keys() == second.keys() and len(first) == 40
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


def test_one_machine_type_regenerated_in_isolation(reference_run, tmp_path):
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(reference_run, workdir, symlinks=True)
    before = {p: p.stat().st_mtime_ns for p in (workdir / "results").rglob("*") if p.is_file()}
    time.sleep(1.1)
    run_workflow(workdir, "--forcerun", "results/features/dev/fan.h5")
    changed = {str(p.relative_to(workdir / "results")) for p in before if p.stat().st_mtime_ns != before[p]}
    assert "features/dev/fan.h5" in changed
    # the dev tables and plots, and the submission whose meta.yaml reports them, are assembled from per-machine files
    dev_tables = ("tables/dev/", "logs/table/dev/", "logs/summary/dev", "submission/", "logs/submission/",
                  "plots/dev/", "logs/plots_scores/dev")
    assert [c for c in changed if "dev/fan" not in c and not c.startswith(dev_tables)] == []
    assert not any(c.startswith("models/") for c in changed)
    assert any(c.startswith("scores/dev/fan/") for c in changed) and any(c.startswith("tables/dev/") for c in changed)


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
    from asd.train import train_fold
    from conftest import train_settings

    features = sorted(str(p) for p in (reference_run / "results" / "features" / "dev").glob("*.h5"))
    settings = train_settings(epochs=8, learning_rate=3e-3, batch_size=4)
    train_fold(fold="dev", feature_paths=features, checkpoint_paths=[str(tmp_path / f"epoch_{e}.pt") for e in range(1, 9)],
               log_path=str(tmp_path / "train_log.csv"), settings=settings)
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert log["loss"].iloc[-1] < 0.7 * log["loss"].iloc[0]
    assert log["accuracy"].iloc[-1] > log["accuracy"].iloc[0]
