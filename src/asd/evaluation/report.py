"""Figures for the Snakemake report (PNG): ROC curves and score histograms per machine type and
domain, training curves, and 2-D PCA projections of the embeddings.

Plot jobs are light: numpy, pandas, h5py and matplotlib (Agg backend), scikit-learn only inside
the ROC function, never torch. Figures are deterministic: matplotlib's default style whatever the
local matplotlibrc says, fixed sizes and dpi, no software/date stamps in the PNG. Every title names
the backbone, read from the run's own files (training log, embedding file), so a random-init run
can never be mistaken for a BEATs one.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Iterator, NamedTuple

import matplotlib

matplotlib.use("Agg")  # headless cluster nodes; same raster output everywhere

import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from asd.errors import AsdError  # noqa: E402
from asd.io import atomic_path  # noqa: E402
from asd.store import load_embeddings  # noqa: E402

DPI = 100
PANEL_INCHES = 3.6  # width and height of one machine-type panel
DOMAINS = ("source", "target")
LABELS = ("normal", "anomaly")
# (label, domain) -> colour, shared by the histograms and the embedding scatter plots.
COLOURS = {("normal", "source"): "tab:blue", ("normal", "target"): "tab:orange",
           ("anomaly", "source"): "tab:red", ("anomaly", "target"): "tab:purple"}
# Embedding scatter groups in legend order -> (colour, marker): colour says domain and label, the
# marker says bank (circle/square), test (triangle/cross) or kept out of the bank (x).
CLIP_GROUPS = {
    "bank: source train": (COLOURS["normal", "source"], "o"),
    "bank: source supplemental": ("tab:cyan", "s"),
    "bank: target train": (COLOURS["normal", "target"], "o"),
    "supplemental kept out of the bank": ("0.55", "x"),
    "test normal: source": (COLOURS["normal", "source"], "^"),
    "test normal: target": (COLOURS["normal", "target"], "^"),
    "test anomaly: source": (COLOURS["anomaly", "source"], "X"),
    "test anomaly: target": (COLOURS["anomaly", "target"], "X"),
    "test (unlabelled)": ("0.2", "d"),
}


class RocCurve(NamedTuple):
    fpr: np.ndarray  # [points]
    tpr: np.ndarray  # [points]
    auc: float


def train_log_backbone(train_log_path: str) -> str:
    """The backbone a fold was trained on, as its training log names it."""
    return str(pd.read_csv(train_log_path)["backbone"].iloc[-1])


@contextlib.contextmanager
def _figure(out_path: str, *, panels: int, title: str, columns: int = 4,
            panel_inches: tuple[float, float] = (PANEL_INCHES, PANEL_INCHES), description: str = "") -> Iterator[list]:
    """Yield one axis per panel on a grid (unused cells hidden); save the PNG atomically on success.

    The PNG's Title text chunk repeats the figure title (backbone included) and Description holds
    any numbers drawn, so a file can be checked without looking at it."""
    columns = min(columns, panels)
    rows = math.ceil(panels / columns)
    with plt.style.context("default"):
        fig, grid = plt.subplots(rows, columns, figsize=(panel_inches[0] * columns, panel_inches[1] * rows + 0.6),
                                 squeeze=False, layout="constrained")
        try:
            axes = list(grid.ravel())  # [rows * columns]
            for unused in axes[panels:]:
                unused.axis("off")
            yield axes[:panels]
            fig.suptitle(title, fontsize="medium")
            with atomic_path(out_path, suffix=".png") as tmp:
                text = {"Title": title, "Software": None} | ({"Description": description} if description else {})
                fig.savefig(tmp, format="png", dpi=DPI, metadata=text)
        finally:
            plt.close(fig)


def _labelled_test_rows(table: pd.DataFrame, *, source: str) -> pd.DataFrame:
    test = table[table["role"] == "test"]
    unknown = test[~test["label"].isin(LABELS) | ~test["domain"].isin(DOMAINS)]
    if len(unknown) or test.empty:
        example = unknown["file"].iloc[0] if len(unknown) else "no test rows at all"
        raise AsdError(f"{source}: ROC curves and histograms need every test clip labelled normal/anomaly with a "
                       f"source/target domain ({example}); set the dataset's ground_truth in the config, or "
                       f"leave this fold out of the plots.")
    return test


def domain_roc_curves(table: pd.DataFrame, *, source: str) -> dict[str, RocCurve]:
    """Per domain, the ROC over that domain's normal test clips plus ALL anomalous ones: the curves
    whose areas are the official AUC_source and AUC_target."""
    from sklearn.metrics import roc_auc_score, roc_curve  # only the ROC jobs pay for importing scikit-learn

    test = _labelled_test_rows(table, source=source)
    anomaly = (test["label"] == "anomaly").to_numpy()
    score = test["score"].to_numpy(dtype=float)
    curves = {}
    for domain in DOMAINS:
        chosen = anomaly | (test["domain"] == domain).to_numpy()
        if anomaly[chosen].all() or not anomaly[chosen].any():
            raise AsdError(f"{source}: the {domain} ROC needs normal {domain} test clips and anomalous clips; "
                           "check the ground truth of this machine type.")
        fpr, tpr, _ = roc_curve(anomaly[chosen], score[chosen])
        curves[domain] = RocCurve(fpr, tpr, float(roc_auc_score(anomaly[chosen], score[chosen])))
    return curves


def plot_roc(*, tables: dict[str, pd.DataFrame], out_path: str, title: str) -> dict[str, dict[str, RocCurve]]:
    """One panel per machine type (source and target curves, AUC in the legend); returns the curves drawn.

    The PNG's Description is JSON: {machine: {domain: AUC}}."""
    drawn = {machine: domain_roc_curves(table, source=f"{machine} ({title.splitlines()[0]})")
             for machine, table in tables.items()}
    aucs = {machine: {domain: curve.auc for domain, curve in curves.items()} for machine, curves in drawn.items()}
    with _figure(out_path, panels=len(tables), title=title, description=json.dumps(aucs)) as axes:
        for ax, (machine, curves) in zip(axes, drawn.items()):
            ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
            for domain, curve in curves.items():
                ax.plot(curve.fpr, curve.tpr, color=COLOURS["normal", domain],
                        label=f"{domain} normals vs all anomalies (AUC {100 * curve.auc:.1f} %)")
            ax.set(title=machine, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1),
                   ylim=(0, 1.02), aspect="equal")
            ax.legend(loc="lower right", fontsize="x-small")
    return drawn


def plot_score_histograms(*, tables: dict[str, pd.DataFrame], out_path: str, title: str) -> None:
    """One panel per machine type: test-score histograms of normal/anomalous x source/target clips."""
    tests = {machine: _labelled_test_rows(table, source=f"{machine} ({title.splitlines()[0]})")
             for machine, table in tables.items()}
    with _figure(out_path, panels=len(tests), title=title) as axes:
        for ax, (machine, test) in zip(axes, tests.items()):
            # about two clips per bin, 8 to 40 bins; shared by the four groups so their bars line up
            edges = np.histogram_bin_edges(test["score"], bins=int(np.clip(len(test) // 2, 8, 40)))
            for (label, domain), colour in COLOURS.items():
                scores = test.loc[(test["label"] == label) & (test["domain"] == domain), "score"]
                ax.hist(scores, bins=edges, histtype="step", linewidth=1.6, color=colour,
                        linestyle="-" if label == "normal" else "--", label=f"{label} {domain} ({len(scores)})")
            ax.set(title=machine, xlabel="anomaly score", ylabel="test clips")
            ax.yaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize="x-small")


def plot_fold_scores(*, score_paths: list[str], machines: list[str], systems: list[str], train_log_path: str,
                     roc_paths: list[str], histogram_paths: list[str], fold: str,
                     ground_truth: str | None = None) -> dict[str, dict[str, dict[str, RocCurve]]]:
    """ROC and histogram figures of every system of a fold; ``score_paths`` is [systems x machines],
    system-major; ``ground_truth`` labels unlabelled (eval) test names. Returns the ROC curves drawn:
    system -> machine -> domain -> curve."""
    from asd.evaluation.tables import labelled_test_scores

    backbone = train_log_backbone(train_log_path)
    paths = np.array(score_paths, dtype=object).reshape(len(systems), len(machines))  # [systems, machines]
    drawn = {}
    for system, row, roc_path, histogram_path in zip(systems, paths, roc_paths, histogram_paths):
        # checked here too so that an unlabelled clip is reported with its score file
        tables = {machine: _labelled_test_rows(labelled_test_scores(path, machine=machine, ground_truth=ground_truth),
                                               source=path)
                  for machine, path in zip(machines, row)}
        drawn[system] = plot_roc(tables=tables, out_path=roc_path,
                                 title=f"{fold} {system}: ROC per machine type and domain\n{backbone}")
        plot_score_histograms(tables=tables, out_path=histogram_path,
                              title=f"{fold} {system}: test anomaly scores\n{backbone}")
    return drawn


def plot_training(*, train_log_path: str, out_path: str, fold: str) -> None:
    """Loss, accuracy and learning rate against epoch, from a fold's training log."""
    log = pd.read_csv(train_log_path)
    curves = (("loss", "ArcFace loss", 1.0), ("accuracy", "training accuracy (%)", 100.0),
              ("learning_rate", "learning rate (last step of the epoch)", 1.0))
    title = f"{fold}: training curves\n{train_log_backbone(train_log_path)}"
    with _figure(out_path, panels=len(curves), title=title, panel_inches=(4.0, 3.0)) as axes:
        for ax, (column, name, scale) in zip(axes, curves):
            ax.plot(log["epoch"], scale * log[column], marker="o", color="tab:blue")
            ax.set(xlabel="epoch", ylabel=name)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)


def pca_2d(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([N, 2] coordinates on the first two principal axes, [2] fractions of variance they explain).

    Each axis's sign is fixed (largest loading positive) so that reruns draw the same picture."""
    centred = embeddings.astype(np.float64) - embeddings.mean(axis=0)  # [N, E]
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)  # axes [min(N, E), E]
    kept = min(2, len(axes))
    axes = axes[:kept]  # [kept, E]
    largest = axes[np.arange(kept), np.abs(axes).argmax(axis=1)]  # [kept]
    axes = axes * np.where(largest < 0, -1.0, 1.0)[:, None]
    coords = np.zeros((len(centred), 2))
    coords[:, :kept] = centred @ axes.T  # [N, kept]
    explained = np.zeros(2)
    explained[:kept] = singular[:kept] ** 2 / max(float(np.sum(singular ** 2)), np.finfo(float).tiny)
    return coords, explained


def clip_groups(manifest: pd.DataFrame, members: dict[str, list[str]], *, bank_path: str) -> np.ndarray:
    """[N] scatter group (a CLIP_GROUPS key) of each clip, from its split, label, domain and bank membership."""
    bank_domain = {file: domain for domain, files in members.items() for file in files}
    groups = []
    for split, file, domain, label in zip(manifest["split"], manifest["file"], manifest["domain"], manifest["label"]):
        if split == "test":
            group = f"test {label}: {domain}" if label in LABELS and domain in DOMAINS else "test (unlabelled)"
        elif file in bank_domain:
            group = f"bank: {bank_domain[file]} {split}"
        else:
            group = f"{split} kept out of the bank"
        if group not in CLIP_GROUPS:  # e.g. a training clip missing from the bank: a stale bank file
            raise AsdError(f"{bank_path} does not match the embeddings ({split} clip {file} would be '{group}'); "
                           f"rebuild it with the 'score' rule (snakemake --forcerun {bank_path}).")
        groups.append(group)
    return np.array(groups)


def plot_embeddings(*, embeddings_path: str, bank_path: str, out_path: str, fold: str, machine: str) -> pd.DataFrame:
    """Scatter of one machine type's clips on the first two principal axes of its embeddings.

    Returns the points drawn (pc1, pc2, group, file)."""
    embeddings, _, manifest, attrs = load_embeddings(embeddings_path)
    with open(bank_path) as f:
        members = json.load(f)["members"]
    coords, explained = pca_2d(embeddings)
    points = pd.DataFrame({"pc1": coords[:, 0], "pc2": coords[:, 1], "file": manifest["file"],
                           "group": clip_groups(manifest, members, bank_path=bank_path)})
    system = str(attrs.get("system", f"epoch_{int(attrs['epoch'])}"))
    title = f"{fold} / {machine}, {system}: embeddings (PCA)\n{attrs['backbone']}"
    with _figure(out_path, panels=1, title=title, panel_inches=(7.5, 4.8)) as (ax,):
        for group, (colour, marker) in CLIP_GROUPS.items():
            chosen = points[points["group"] == group]
            if len(chosen):
                ax.scatter(chosen["pc1"], chosen["pc2"], color=colour, marker=marker, s=30, alpha=0.85,
                           label=f"{group} ({len(chosen)})")
        ax.set(xlabel=f"PC1 ({100 * explained[0]:.1f} % of variance)",
               ylabel=f"PC2 ({100 * explained[1]:.1f} % of variance)")
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    return points
