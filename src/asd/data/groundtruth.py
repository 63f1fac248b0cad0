"""Ground truth of the test clips, read from any of the three places it comes from.

Every reader returns one DataFrame with the columns ``GROUND_TRUTH_COLUMNS``, one row per test
clip, sorted by machine, section and file:

- ``machine``: machine type (``ToyCar``, ``AutoTrash``, ...)
- ``section``: two-digit section id as a string (``"00"``)
- ``file``: the clip name the anomaly-score files use (``section_00_0001.wav`` on the eval set,
  the labelled name on the dev set)
- ``label``: 0 normal, 1 anomaly
- ``domain``: ``"source"`` or ``"target"``
- ``original_name``: the labelled name (``section_00_target_test_anomaly_0001_<attrs>.wav``);
  score files may use it instead of ``file`` (the official evaluator accepts it too). In the
  evaluator layout it is the attributes file's second column (``noAttribute`` for machine types
  with hidden attributes); None where the source does not give it.

The labelled file-name pattern lives here only (``parse_labelled_name``); the dataset indexer
imports it.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Literal, NamedTuple

import pandas as pd

from asd.errors import AsdError
from asd.submission.archive import format_examples

GROUND_TRUTH_COLUMNS = ("machine", "section", "file", "label", "domain", "original_name")
LABELS = {"normal": 0, "anomaly": 1}

# section_00_{source|target}_{train|test}_{normal|anomaly}_NNNN[_<attrs>].wav; attribute values may
# hold dots (``ac_0.08``), so the attributes are everything up to the final ``.wav``.
_LABELLED_NAME = re.compile(
    r"section_(?P<section>\d+)_(?P<domain>source|target)_(?P<split>train|test)_"
    r"(?P<label>normal|anomaly)_(?P<index>\d+)(?:_(?P<attributes>.+))?\.wav"
)
_OFFICIAL_FILE = re.compile(r"ground_truth_(?P<machine>.+)_section_(?P<section>\d+)_test\.csv")


class LabelledName(NamedTuple):
    section: str  # "00"
    domain: str  # "source" | "target"
    label: int  # 0 normal, 1 anomaly
    index: int  # NNNN
    attributes: str  # "car_A2_spd_28V_mic_1", "noAttribute", or "" when the name has none


def parse_labelled_name(name: str, *, split: Literal["train", "test"]) -> LabelledName | None:
    """Parse a labelled DCASE clip name of the given split; None when ``name`` is not one."""
    match = _LABELLED_NAME.fullmatch(name)
    if match is None or match["split"] != split:
        return None
    return LabelledName(
        section=match["section"],
        domain=match["domain"],
        label=LABELS[match["label"]],
        index=int(match["index"]),
        attributes=match["attributes"] or "",
    )


def parse_labelled_test_name(name: str) -> LabelledName | None:
    """Parse ``section_00_{source|target}_test_{normal|anomaly}_NNNN_<attrs>.wav``; None otherwise."""
    return parse_labelled_name(name, split="test")


def read_official_ground_truth(folder: str | os.PathLike) -> pd.DataFrame:
    """Read the official evaluator layout (``ground_truth_data/``, ``ground_truth_domain/``,
    optional ``ground_truth_attributes/``); in the domain files 1 means target."""
    folder = Path(folder)
    data_files = sorted((folder / "ground_truth_data").glob("ground_truth_*_section_*_test.csv"))
    if not data_files:
        raise AsdError(
            f"{folder / 'ground_truth_data'} holds no ground_truth_<machine>_section_<ss>_test.csv "
            "files; point the ground truth at the official evaluator folder."
        )
    rows = []
    for data_path in data_files:
        match = _OFFICIAL_FILE.fullmatch(data_path.name)
        labels = _binary_column(data_path)
        domains = _binary_column(folder / "ground_truth_domain" / data_path.name)
        if labels.keys() != domains.keys():
            raise AsdError(
                f"{data_path} and its ground_truth_domain file list different clips "
                f"({format_examples(labels.keys() ^ domains.keys())}); restore both files from the evaluator."
            )
        attributes_path = folder / "ground_truth_attributes" / data_path.name
        # Attributes rows: clip, its labelled name without ".wav" (the alias the evaluator accepts
        # in score files), and for hidden-attribute machine types the full name as a third column.
        originals = {}
        if attributes_path.is_file():
            originals = {fields[0]: _with_wav(fields[1]) for _, fields in _csv_rows(attributes_path) if len(fields) > 1}
        for file, label in labels.items():
            rows.append(
                (match["machine"], match["section"], file, label,
                 ("source", "target")[domains[file]], originals.get(file))
            )
    return _frame(rows, source=folder)


def read_eval_data_list(path: str | os.PathLike) -> pd.DataFrame:
    """Read the baseline's ``eval_data_list_<year>.csv``: a line holding only a machine name starts
    that machine's block, then rows ``section_00_XXXX.wav,<labelled renamed name>``."""
    path = Path(path)
    rows = []
    machine = None
    for line, fields in _csv_rows(path):
        if len(fields) == 1:
            machine = fields[0]
            continue
        if len(fields) != 2 or machine is None:
            raise AsdError(
                f"{path} line {line} is not `<machine>` or `<file>,<labelled name>` under a machine "
                "line; use the baseline's eval_data_list CSV unchanged."
            )
        file, renamed = fields
        parsed = parse_labelled_test_name(renamed)
        if parsed is None:
            raise AsdError(
                f"{path} line {line}: {renamed!r} is not a labelled test name "
                "(section_00_{source|target}_test_{normal|anomaly}_NNNN_<attrs>.wav); fix that row."
            )
        rows.append((machine, parsed.section, file, parsed.label, parsed.domain, renamed))
    return _frame(rows, source=path)


def read_labelled_folder(root: str | os.PathLike) -> pd.DataFrame:
    """Read labels from the test file names of a dataset root (``<root>/<machine>/test/*.wav``)."""
    root = Path(root)
    test_dirs = sorted(d / "test" for d in root.iterdir() if (d / "test").is_dir())
    if not test_dirs:
        raise AsdError(f"{root} has no <machine>/test/ folders; point it at a dataset root such as dev_data/raw.")
    rows = []
    for test_dir in test_dirs:
        names = sorted(p.name for p in test_dir.glob("*.wav"))
        unlabelled = [name for name in names if parse_labelled_test_name(name) is None]
        if not names or unlabelled:
            found = f"unlabelled test names ({format_examples(unlabelled)})" if names else "no .wav files"
            raise AsdError(
                f"{test_dir} has {found}; "
                "labels come from dev-style names, so for the eval set give the eval_data_list CSV "
                "or the official ground-truth folder instead."
            )
        for name in names:
            parsed = parse_labelled_test_name(name)
            rows.append((test_dir.parent.name, parsed.section, name, parsed.label, parsed.domain, name))
    return _frame(rows, source=root)


def load_ground_truth(path: str | os.PathLike) -> pd.DataFrame:
    """Read ground truth from an evaluator folder, an eval_data_list CSV, or a labelled dataset root."""
    path = Path(path)
    if path.is_dir() and (path / "ground_truth_data").is_dir():
        return read_official_ground_truth(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_eval_data_list(path)
    if path.is_dir() and any((d / "test").is_dir() for d in path.iterdir()):
        return read_labelled_folder(path)
    raise AsdError(
        f"{path} is not ground truth: give the official evaluator folder (with ground_truth_data/), "
        "the baseline's eval_data_list CSV, or a dataset root with <machine>/test/ labelled clips."
    )


def _frame(rows: list[tuple], *, source: Path) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(GROUND_TRUTH_COLUMNS))
    frame["label"] = frame["label"].astype("int64")
    duplicated = frame[frame.duplicated(["machine", "section", "file"])]
    if not duplicated.empty:
        raise AsdError(
            f"{source} lists {len(duplicated)} clip(s) twice ({format_examples(duplicated['file'])}); "
            "keep one row per test clip."
        )
    return frame.sort_values(["machine", "section", "file"], ignore_index=True)


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, stripped fields) of every non-blank row; CRLF and a BOM are tolerated."""
    if not path.is_file():
        raise AsdError(f"{path} does not exist; restore the ground-truth file or fix the path.")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        return [
            (reader.line_num, [field.strip() for field in fields])
            for fields in reader
            if any(field.strip() for field in fields)
        ]


def _binary_column(path: Path) -> dict[str, int]:
    """``{file: 0|1}`` of a ground_truth_data / ground_truth_domain file."""
    values = {}
    for line, fields in _csv_rows(path):
        if len(fields) != 2 or fields[1] not in ("0", "1") or fields[0] in values:
            raise AsdError(
                f"{path} line {line}: expected `<new clip name>,<0|1>`, got {','.join(fields)!r}; "
                "restore the file from the official evaluator."
            )
        values[fields[0]] = int(fields[1])
    return values


def _with_wav(name: str) -> str:
    return name if name.endswith(".wav") else f"{name}.wav"
