"""Result files that light jobs read without importing torch: HDF5 manifest tables, embedding files, score CSVs."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pandas as pd

from asd.errors import AsdError

# Clip columns of a score CSV (results/scores/...): role (test | bank) comes first, score and decision after.
ROW_COLUMNS = ["split", "file", "domain", "label", "attributes"]


def write_manifest_group(group: h5py.Group, rows: pd.DataFrame) -> None:
    for column in rows.columns:
        values = rows[column].to_numpy()
        if values.dtype.kind in "iuf":
            group.create_dataset(column, data=values)
        else:
            group.create_dataset(column, data=np.array([str(v) for v in values], dtype=h5py.string_dtype()))


def read_manifest_group(group: h5py.Group) -> pd.DataFrame:
    columns = {}
    for column, dataset in group.items():
        values = dataset[()]
        columns[column] = values.astype(str) if values.dtype.kind in "OS" else values
    return pd.DataFrame(columns)


def load_embeddings(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, dict]:
    """(embeddings [N, E], spectrum [N, 128], manifest, attributes) of a complete embedding file."""
    rerun = f"rebuild it with the 'embed' rule (snakemake --forcerun {path})"
    if not os.path.isfile(path):
        raise AsdError(f"embedding file {path} does not exist; build it with the 'embed' rule (snakemake {path}).")
    try:
        with h5py.File(path, "r") as h5:
            if not h5.attrs.get("complete", False):
                raise AsdError(f"embedding file {path} is incomplete; {rerun}.")
            return (h5["embeddings"][()], h5["spectrum"][()], read_manifest_group(h5["manifest"]), dict(h5.attrs))
    except (OSError, KeyError) as err:
        raise AsdError(f"embedding file {path} is corrupt or truncated ({err}); {rerun}.") from None


def read_scores(path: str) -> pd.DataFrame:
    """A score CSV with clip columns as strings (an attribute "NA" stays "NA") and score columns as floats
    (per-domain scores are empty, i.e. NaN, on bank rows)."""
    try:
        table = pd.read_csv(path, dtype=dict.fromkeys(["role", *ROW_COLUMNS], str), keep_default_na=False)
    except (OSError, pd.errors.ParserError) as err:
        raise AsdError(f"score file {path} cannot be read ({err}); delete it and rerun the rule that wrote it.") from None
    for column in table.columns:
        if column.startswith("score_"):
            table[column] = pd.to_numeric(table[column].replace("", np.nan))
    return table


def order_score_table(table: pd.DataFrame) -> pd.DataFrame:
    """Fixed column order; test rows first, then bank rows, each sorted by split and file."""
    first = ["role"] + ROW_COLUMNS + ["score", "decision"]
    table = table[first + [c for c in table.columns if c not in first]]
    return table.sort_values(["role", "split", "file"], ascending=[False, True, True], ignore_index=True)
