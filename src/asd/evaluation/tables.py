"""Official metrics per machine type and the paper's Table 1, per system (epoch or ensemble).

One evaluation job per fold reads the per-machine score files (so regenerating one machine type
updates the tables, which are assembled from them) and writes ``results/metrics/<fold>/<system>.json``
(every machine type's official metrics) and the tables.
Table 1 shape: rows AUC Source, AUC Target, pAUC, hmean; columns the machine types and
"All (hmean)"; values in percent. The hmean row of "All (hmean)" is the official score.
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from asd.errors import AsdError
from asd.io import write_csv, write_json, write_text
from asd.evaluation.metrics import EPS, harmonic_mean, machine_metrics, official_score
from asd.store import read_scores

ROWS = {"AUC Source": "AUC_source", "AUC Target": "AUC_target", "pAUC": "pAUC"}
ALL = "All (hmean)"


def labelled_test_scores(scores_path: str, *, machine: str, ground_truth: str | None) -> pd.DataFrame:
    """The test rows of a score CSV, labelled from the ground truth where their names carry no label."""
    from asd.data.dataset import apply_ground_truth

    table = read_scores(scores_path)
    test = table[table["role"] == "test"].reset_index(drop=True).assign(machine=machine)
    if ground_truth is not None:
        apply_ground_truth(test, ground_truth)
    return test


def machine_metrics_of(scores_path: str, *, machine: str, ground_truth: str | None) -> dict:
    """Official metrics of one machine type's test scores."""
    test = labelled_test_scores(scores_path, machine=machine, ground_truth=ground_truth)
    unlabelled = test[~test["label"].isin(["normal", "anomaly"])]
    if len(unlabelled):
        raise AsdError(f"{scores_path}: {len(unlabelled)} test clips of {machine} have no label (e.g. "
                       f"{unlabelled['file'].iloc[0]}); set the dataset's ground_truth in the config "
                       f"(an eval_data_list csv) to evaluate it, or do not evaluate this fold.")
    truth = pd.DataFrame({"machine": machine, "section": "00", "file": test["file"],
                          "label": (test["label"] == "anomaly").astype(int), "domain": test["domain"]})
    return {"machine": machine, **machine_metrics(test[["file", "score"]], test[["file", "decision"]], truth,
                                                  score_source=scores_path)}


def _hmean(values) -> float:
    return harmonic_mean(np.maximum(np.asarray(values, dtype=float), EPS))


def table_one(per_machine: list[dict]) -> pd.DataFrame:
    """Table 1 (fractions) from per-machine metrics, machine types in the given order."""
    table = pd.DataFrame({m["machine"]: {row: m[key] for row, key in ROWS.items()} for m in per_machine})
    table.loc["hmean"] = [_hmean(table[c]) for c in table.columns]
    table[ALL] = [_hmean(table.loc[row]) for row in ROWS] + [official_score(per_machine)]
    return table


def markdown(table: pd.DataFrame, *, title: str, note: str) -> str:
    head = "| | " + " | ".join(table.columns) + " |"
    lines = [f"### {title}", "", f"_{note}_", "", head, "|---" * (len(table.columns) + 1) + "|"]
    for row, values in table.iterrows():
        lines.append(f"| {row} | " + " | ".join(f"{100 * v:.2f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def backbone_note(train_log_path: str) -> str:
    backbone = pd.read_csv(train_log_path)["backbone"].iloc[-1]
    return f"backbone: {backbone}"


def evaluate_fold(*, score_paths: list[str], machines: list[str], systems: list[str], ground_truth: str | None,
                  train_log_path: str, metric_paths: list[str], table_paths: list[str], markdown_paths: list[str],
                  summary_csv: str, summary_md: str, fold: str, scorers: list[str]) -> None:
    """Per system: official metrics of every machine type (JSON) and Table 1 (CSV + Markdown); then the summary.

    ``score_paths``: [systems x machines], system-major. Labels of unlabelled (eval) test names come
    from ``ground_truth`` here and nowhere upstream, so new labels rerun only this step.
    """
    note = backbone_note(train_log_path)
    tables = []
    for s, system in enumerate(systems):
        per_machine = [machine_metrics_of(score_paths[s * len(machines) + m], machine=machine, ground_truth=ground_truth)
                       for m, machine in enumerate(machines)]
        write_json(metric_paths[s], {"fold": fold, "system": system, "machines": per_machine})
        table = table_one(per_machine)
        write_csv(table_paths[s], (100 * table).rename_axis("metric").reset_index())
        write_text(markdown_paths[s], markdown(table, title=f"{fold}: {system} (official metrics, %)", note=note))
        tables.append(100 * table[ALL])
    write_summary(all_columns=tables, systems=systems, train_log_path=train_log_path, csv_path=summary_csv,
                  md_path=summary_md, fold=fold, scorers=scorers)


def write_summary(*, all_columns: list[pd.Series], systems: list[str], train_log_path: str, csv_path: str,
                  md_path: str, fold: str, scorers: list[str]) -> None:
    """One row per (system, scorer): the All (hmean) column of its Table 1 (in %), plus the epoch's training
    loss/accuracy. ``systems`` are score-set names (``<system>`` for the first of ``scorers``,
    ``<system>@<scorer>`` for the others); the Markdown is one grid, systems x scorers."""
    train_log = pd.read_csv(train_log_path).set_index("epoch")
    rows = []
    for name, column in zip(systems, all_columns):
        system, _, scorer = name.partition("@")
        row = {"system": system, "scorer": scorer or scorers[0], **{k: column[k] for k in (*ROWS, "hmean")}}
        if system.startswith("epoch_") and int(system[6:]) in train_log.index:
            epoch = train_log.loc[int(system[6:])]
            row.update(train_loss=epoch["loss"], train_accuracy=100 * epoch["accuracy"])
        rows.append(row)
    summary = pd.DataFrame(rows)
    write_csv(csv_path, summary)
    best = summary.loc[summary["hmean"].idxmax()]
    lines = [f"### {fold}: systems x scorers (All (hmean) column of each Table 1, %)", "",
             f"_{backbone_note(train_log_path)}; best official score: {best['system']} with {best['scorer']}_", "",
             "Each cell: official score (AUC Source / AUC Target / pAUC).", "",
             "| system | " + " | ".join(dict.fromkeys(summary["scorer"])) + " | train loss | train acc. |",
             "|---|" + "---|" * (summary["scorer"].nunique() + 2)]
    for system, group in summary.groupby("system", sort=False):
        cells = [f"{r['hmean']:.2f} ({r['AUC Source']:.1f} / {r['AUC Target']:.1f} / {r['pAUC']:.1f})"
                 for _, r in group.iterrows()]
        first = group.iloc[0]
        extra = [_cell(first.get("train_loss"), ".3f"), _cell(first.get("train_accuracy"), ".1f")]
        lines.append(f"| {system} | " + " | ".join(cells + extra) + " |")
    write_text(md_path, "\n".join(lines) + "\n")


def _cell(value, fmt: str) -> str:
    return "" if value is None or pd.isna(value) else format(value, fmt)
