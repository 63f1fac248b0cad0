"""Official metrics per machine type and the paper's Table 1, per system (epoch or ensemble).

Per-machine metric files (``results/metrics/<fold>/<machine>/<system>.json``) are the unit of
work, so regenerating one machine type updates the tables, which are assembled from them.
Table 1 shape: rows AUC Source, AUC Target, pAUC, hmean; columns the machine types and
"All (hmean)"; values in percent. The hmean row of "All (hmean)" is the official score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats

from asd.errors import AsdError
from asd.io import write_csv, write_json, write_text
from asd.metrics import EPS, machine_metrics, official_score
from asd.store import read_scores

ROWS = {"AUC Source": "AUC_source", "AUC Target": "AUC_target", "pAUC": "pAUC"}
ALL = "All (hmean)"


def write_machine_metrics(*, scores_path: str, out_path: str, machine: str, system: str) -> None:
    table = read_scores(scores_path)
    test = table[table["role"] == "test"]
    unlabelled = test[~test["label"].isin(["normal", "anomaly"])]
    if len(unlabelled):
        raise AsdError(f"{scores_path}: {len(unlabelled)} test clips of {machine} have no label (e.g. "
                       f"{unlabelled['file'].iloc[0]}); set the dataset's ground_truth in the config "
                       f"(an eval_data_list csv) to evaluate it, or do not evaluate this fold.")
    truth = pd.DataFrame({"machine": machine, "section": "00", "file": test["file"],
                          "label": (test["label"] == "anomaly").astype(int), "domain": test["domain"]})
    metrics = machine_metrics(test[["file", "score"]], test[["file", "decision"]], truth, score_source=scores_path)
    write_json(out_path, {"machine": machine, "system": system, **metrics})


def _hmean(values) -> float:
    return float(scipy.stats.hmean(np.maximum(np.asarray(values, dtype=float), EPS)))


def table_one(metric_paths: list[str]) -> pd.DataFrame:
    """Table 1 (fractions) from per-machine metric files, machine types in the given order."""
    per_machine = [json.loads(Path(path).read_text()) for path in metric_paths]
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


def write_table(*, metric_paths: list[str], train_log_path: str, csv_path: str, md_path: str, fold: str,
                system: str) -> None:
    table = table_one(metric_paths)
    note = backbone_note(train_log_path)
    write_csv(csv_path, (100 * table).rename_axis("metric").reset_index())
    write_text(md_path, markdown(table, title=f"{fold}: {system} (official metrics, %)", note=note))


def write_summary(*, table_paths: list[str], systems: list[str], train_log_path: str, csv_path: str,
                  md_path: str, fold: str) -> None:
    """One row per system: the All (hmean) column of its Table 1, plus the epoch's training loss/accuracy."""
    train_log = pd.read_csv(train_log_path).set_index("epoch")
    rows = []
    for system, path in zip(systems, table_paths):
        table = pd.read_csv(path).set_index("metric")[ALL]
        row = {"system": system, **{k: table[k] for k in (*ROWS, "hmean")}}
        if system.startswith("epoch_") and int(system[6:]) in train_log.index:
            epoch = train_log.loc[int(system[6:])]
            row.update(train_loss=epoch["loss"], train_accuracy=100 * epoch["accuracy"])
        rows.append(row)
    summary = pd.DataFrame(rows)
    write_csv(csv_path, summary)
    best = summary.loc[summary["hmean"].idxmax(), "system"]
    lines = [f"### {fold}: epochs and ensembles (All (hmean) column of each Table 1, %)", "",
             f"_{backbone_note(train_log_path)}; best official score: {best}_", "",
             "| system | AUC Source | AUC Target | pAUC | official score (hmean) | train loss | train acc. |",
             "|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        extra = [_cell(r.get("train_loss"), ".3f"), _cell(r.get("train_accuracy"), ".1f")]
        lines.append(f"| {r['system']} | {r['AUC Source']:.2f} | {r['AUC Target']:.2f} | {r['pAUC']:.2f} | "
                     f"{r['hmean']:.2f} | " + " | ".join(extra) + " |")
    write_text(md_path, "\n".join(lines) + "\n")


def _cell(value, fmt: str) -> str:
    return "" if value is None or pd.isna(value) else format(value, fmt)
