"""Report figures: ROC/histogram/training/embedding PNGs on small synthetic inputs (the ROC areas
against scikit-learn and the official metrics), and `snakemake --report` on a finished tiny run."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from asd.errors import AsdError
from asd.model.pretrain import LABEL
from asd.evaluation.metrics import AlignedSection, section_metrics
from asd.evaluation.report import (pca_2d, plot_embeddings, plot_fold_scores, plot_roc, plot_score_histograms,
                                   plot_training)
from asd.store import write_manifest_group
from workflow_runner import DEMO_BACKBONE_SHA, run_workflow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RANDOM_INIT = "random-init backbone (no pre-trained weights)"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, after checking its signature and that it holds a real picture."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    assert len(data) > 10_000  # axes, curves and text, not an empty canvas
    return struct.unpack(">II", data[16:24])


def png_text(path: Path) -> dict[str, str]:
    return Image.open(path).text


def score_table(groups: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    """A score CSV's rows: test clips per (label, domain) with the given scores, plus two bank rows."""
    rows = [dict(role="test", split="test", file=f"section_00_{domain}_test_{label}_{i:04d}.wav", domain=domain,
                 label=label, attributes="noAttribute", score=score, decision=0)
            for (label, domain), scores in groups.items() for i, score in enumerate(scores)]
    rows += [dict(role="bank", split="train", file=f"section_00_source_train_normal_{i:04d}.wav", domain="source",
                  label="normal", attributes="noAttribute", score=0.05, decision=0) for i in range(2)]
    return pd.DataFrame(rows)


def write_train_log(path: Path, backbone: str) -> None:
    """A training log as the train rule writes it (three epochs)."""
    pd.DataFrame({"epoch": [1, 2, 3], "loss": [9.1, 7.4, 6.0], "accuracy": [0.1, 0.3, 0.45],
                  "learning_rate": [1e-3, 5e-4, 1e-4], "seconds": [2.0, 2.0, 2.0], "clips_per_second": [8.0] * 3,
                  "device": ["cpu"] * 3, "precision": ["fp32"] * 3, "backbone": [backbone] * 3}).to_csv(path, index=False)


# Source normals lie below every anomaly (AUC 1); target normals beat two of the four anomalies (AUC 0.5).
HAND_MADE = {("normal", "source"): [0.1, 0.2], ("normal", "target"): [0.5, 0.6],
             ("anomaly", "source"): [0.3, 0.7], ("anomaly", "target"): [0.4, 0.8]}


def random_groups(seed: int, clips: int = 12) -> dict[tuple[str, str], list[float]]:
    rng = np.random.default_rng(seed)
    return {(label, domain): list(rng.normal(1.0 if label == "anomaly" else 0.0, 1.0, clips))
            for label in ("normal", "anomaly") for domain in ("source", "target")}


def test_roc_areas_equal_sklearn_and_the_official_metrics(tmp_path):
    tables = {"fanA": score_table(HAND_MADE), "pumpB": score_table(random_groups(1))}
    out = tmp_path / "roc.png"
    drawn = plot_roc(tables=tables, out_path=str(out), title=f"dev epoch_3\n{RANDOM_INIT}")
    assert drawn["fanA"]["source"].auc == 1.0 and drawn["fanA"]["target"].auc == 0.5
    for machine, table in tables.items():
        test = table[table["role"] == "test"]
        anomaly, score = (test["label"] == "anomaly").to_numpy(), test["score"].to_numpy()
        official = section_metrics(AlignedSection(label=anomaly.astype(int), domain=test["domain"].to_numpy(),
                                                  score=score, decision=None))
        for domain in ("source", "target"):
            chosen = anomaly | (test["domain"] == domain).to_numpy()
            assert drawn[machine][domain].auc == roc_auc_score(anomaly[chosen], score[chosen])
            assert drawn[machine][domain].auc == pytest.approx(official[f"AUC_{domain}"], abs=1e-12)
            curve = drawn[machine][domain]
            assert np.trapezoid(curve.tpr, curve.fpr) == pytest.approx(curve.auc, abs=1e-12)  # the line drawn
    assert png_size(out) == (720, 420)  # two 3.6-inch panels at 100 dpi, plus the title band
    text = png_text(out)
    assert RANDOM_INIT in text["Title"]
    assert json.loads(text["Description"])["fanA"] == {"source": 1.0, "target": 0.5}


def test_figures_are_byte_identical_when_redrawn(tmp_path):
    tables = {"fanA": score_table(random_groups(2)), "pumpB": score_table(random_groups(3)),
              "valveC": score_table(HAND_MADE)}
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    for out in (first, second):
        plot_score_histograms(tables=tables, out_path=str(out), title=f"dev ensemble\n{RANDOM_INIT}")
    assert png_size(first) == (1080, 420)
    assert first.read_bytes() == second.read_bytes()


def test_fold_scores_keep_systems_and_machines_apart(tmp_path):
    """score_paths is system-major; each panel must show its own machine type and system."""
    machines, systems = ["fanA", "pumpB"], ["epoch_1", "ensemble"]
    groups = {("epoch_1", "fanA"): HAND_MADE, ("epoch_1", "pumpB"): random_groups(4),
              ("ensemble", "fanA"): random_groups(5), ("ensemble", "pumpB"): random_groups(6)}
    paths = []
    for system in systems:
        for machine in machines:
            paths.append(tmp_path / f"{machine}_{system}.csv")
            score_table(groups[system, machine]).to_csv(paths[-1], index=False)
    train_log = tmp_path / "train_log.csv"
    write_train_log(train_log, "BEATs checkpoint BEATs_iter3.pt (sha256 0123456789ab)")
    roc = [str(tmp_path / f"roc_{s}.png") for s in systems]
    histograms = [str(tmp_path / f"histograms_{s}.png") for s in systems]
    drawn = plot_fold_scores(score_paths=[str(p) for p in paths], machines=machines, systems=systems,
                             train_log_path=str(train_log), roc_paths=roc, histogram_paths=histograms, fold="dev")
    assert drawn["epoch_1"]["fanA"]["target"].auc == 0.5
    for (system, machine), table in groups.items():
        expected = plot_roc(tables={machine: score_table(table)}, out_path=str(tmp_path / "one.png"), title="x")
        assert drawn[system][machine]["source"].auc == expected[machine]["source"].auc
    for path in roc + histograms:
        png_size(Path(path))
        assert png_text(Path(path))["Title"].endswith("BEATs checkpoint BEATs_iter3.pt (sha256 0123456789ab)")


def test_unlabelled_test_clips_are_refused_with_the_fix(tmp_path):
    table = score_table(HAND_MADE)
    table.loc[0, "label"] = "unknown"
    scores = tmp_path / "fanA_epoch_1.csv"
    table.to_csv(scores, index=False)
    write_train_log(tmp_path / "train_log.csv", RANDOM_INIT)
    roc = tmp_path / "roc_epoch_1.png"
    with pytest.raises(AsdError, match=f"{scores}: .*section_00_source_test_normal_0000.wav.*ground_truth"):
        plot_fold_scores(score_paths=[str(scores)], machines=["fanA"], systems=["epoch_1"], fold="eval",
                         train_log_path=str(tmp_path / "train_log.csv"), roc_paths=[str(roc)],
                         histogram_paths=[str(tmp_path / "histograms_epoch_1.png")])
    assert not roc.exists()


def test_training_curves_name_the_logged_backbone(tmp_path):
    train_log = tmp_path / "train_log.csv"
    write_train_log(train_log, RANDOM_INIT)
    out = tmp_path / "training.png"
    plot_training(train_log_path=str(train_log), out_path=str(out), fold="dev")
    assert png_size(out) == (1200, 360)
    assert png_text(out)["Title"] == f"dev: training curves\n{RANDOM_INIT}"


def test_pca_2d_finds_the_known_axes():
    t, u = np.array([-1.5, -0.5, 0.5, 1.5]), np.array([1.0, -1.0, -1.0, 1.0])  # orthogonal, zero mean
    axis_a, axis_b = np.eye(6)[1], np.eye(6)[4]
    embeddings = (np.outer(3 * t, -axis_a) + np.outer(u, axis_b) + 7.0).astype(np.float32)  # [4, 6]
    coords, explained = pca_2d(embeddings)
    np.testing.assert_allclose(explained, [45 / 49, 4 / 49], rtol=1e-6)
    np.testing.assert_allclose(explained, PCA(n_components=2).fit(embeddings).explained_variance_ratio_, rtol=1e-5)
    # signs fixed: the largest loading of each axis is positive, so -axis_a is read as +axis_a
    np.testing.assert_allclose(coords, np.stack([-3 * t, u], axis=1), atol=1e-5)


def write_embedding_file(path: Path, rows: list[dict], embeddings: np.ndarray) -> None:
    """An embedding file as the embed rule writes it (what asd.store.load_embeddings reads)."""
    with h5py.File(path, "w") as h5:
        h5.create_dataset("embeddings", data=embeddings)
        h5.create_dataset("spectrum", data=np.zeros((len(rows), 128), dtype=np.float32))
        write_manifest_group(h5.create_group("manifest"), pd.DataFrame(rows))
        h5.attrs.update(complete=True, epoch=3, backbone=RANDOM_INIT, random_init=True)


def test_embedding_projection_marks_bank_test_and_excluded_clips(tmp_path):
    rng = np.random.default_rng(0)
    clips = ([("train", "source", "normal")] * 4 + [("train", "target", "normal")] * 2
             + [("supplemental", "unknown", "unknown")] * 3 + [("test", "source", "normal")] * 2
             + [("test", "target", "anomaly")] * 2 + [("test", "unknown", "unknown")])
    rows = [dict(split=split, file=f"{split}_{domain}_{label}_{i:02d}.wav", domain=domain, label=label)
            for i, (split, domain, label) in enumerate(clips)]
    embeddings = rng.normal(size=(len(rows), 16)).astype(np.float32)  # [N, E]
    embeddings_path, bank_path = tmp_path / "epoch_3.h5", tmp_path / "epoch_3.json"
    write_embedding_file(embeddings_path, rows, embeddings)
    members = {d: [r["file"] for r in rows if r["split"] == "train" and r["domain"] == d] for d in ("source", "target")}
    bank_path.write_text(json.dumps({"members": members}))
    out = tmp_path / "embeddings.png"
    points = plot_embeddings(embeddings_path=str(embeddings_path), bank_path=str(bank_path), out_path=str(out),
                             fold="dev", machine="fanA")
    assert points["group"].value_counts().to_dict() == {
        "bank: source train": 4, "supplemental kept out of the bank": 3, "bank: target train": 2,
        "test normal: source": 2, "test anomaly: target": 2, "test (unlabelled)": 1}
    np.testing.assert_allclose(points[["pc1", "pc2"]].to_numpy(), pca_2d(embeddings)[0])
    png_size(out)
    assert png_text(out)["Title"] == f"dev / fanA, epoch_3: embeddings (PCA)\n{RANDOM_INIT}"
    # a bank file that misses a training clip is stale: refused, naming the file and the fix
    bank_path.write_text(json.dumps({"members": {"source": members["source"][1:], "target": members["target"]}}))
    with pytest.raises(AsdError, match=f"{bank_path} does not match.*rebuild it with the 'score' rule"):
        plot_embeddings(embeddings_path=str(embeddings_path), bank_path=str(bank_path),
                        out_path=str(tmp_path / "stale.png"), fold="dev", machine="fanA")


def test_plot_modules_do_not_import_torch():
    probe = "import sys, asd.evaluation.report, asd.rules; print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"  # scikit-learn is imported by the ROC jobs only, when they draw


@pytest.mark.slow
def test_snakemake_report_holds_every_figure(reference_run, tmp_path):
    results = reference_run / "results"
    systems = ["frozen", "epoch_1", "epoch_2", "ensemble"]
    folds = {"dev": ["fan", "valve"], "eval": ["Polisher"]}
    figures = [f"results/plots/{fold}/{kind}_{system}.png" for fold in folds for kind in ("roc", "histograms")
               for system in systems]
    figures += [f"results/plots/{fold}/training.png" for fold in folds]
    figures += [f"results/plots/{fold}/embeddings/{machine}_{system}.png" for fold in folds for machine in folds[fold]
                for system in ("frozen", "epoch_2")]
    assert sorted(str(p.relative_to(reference_run)) for p in results.glob("plots/**/*.png")) == sorted(figures)
    for figure in figures:
        png_size(reference_run / figure)
        assert "demo backbone pre-trained on synthetic machine sounds — not BEATs" in png_text(reference_run / figure)["Title"]
    # the ROC areas drawn are the official per-machine metrics of the same scores
    for fold, machines in folds.items():
        for system in systems:
            drawn = json.loads(png_text(results / "plots" / fold / f"roc_{system}.png")["Description"])
            metrics = json.loads((results / "metrics" / fold / f"{system}.json").read_text())["machines"]
            assert [m["machine"] for m in metrics] == machines
            for m in metrics:
                assert drawn[m["machine"]] == {"source": m["AUC_source"], "target": m["AUC_target"]}

    report = tmp_path / "report.html"
    run_workflow(reference_run, "--report", str(report))
    html = report.read_text()
    assert html.count("data:image/png") == len(figures)  # every figure embedded in the self-contained file
    for path in figures + [f"results/tables/{fold}/{system}.md" for fold in folds for system in systems]:
        assert f'"{path}"' in html
    caption = f"Backbone: {LABEL}: backbone checkpoint demo_backbone.pt (sha256 {DEMO_BACKBONE_SHA})."
    # Captions say what the backbone is, not only its file (in the HTML's JSON, non-ASCII is escaped).
    assert html.count(json.dumps(caption)[1:-1]) >= len(figures)
