"""The clip manifest: one row per WAV of a DCASE-layout dataset, with what its name says.

Layout (the official one after unzipping):
``<root>/<machine>/{train,test,supplemental}/*.wav`` and ``<root>/<machine>/attributes_00.csv``.
Every problem a user can fix (a missing folder, a foreign file, a clip at the wrong sample
rate) stops the scan with an AsdError naming the file, so later stages can trust the manifest.

Supplemental clips (extra normal data per machine type) are either machine sound or noise-only
recordings (machine off); their names vary between releases, so only the kind slot of
``section_SS_<kind>_NNNN<rest>.wav`` is read, as words split at ``_`` and ``-``:

* ``noise`` (e.g. ``noise``, ``noise-only``): noise-only -> ``supplemental_kind`` ``noise``;
* else ``machine`` or ``clean`` (a clean machine recording, made without the factory background
  the training clips carry): machine sound -> ``supplemental_kind`` ``machine``, a source-domain
  normal. Both kinds of machine sound join the source bank alike, so the manifest does not
  distinguish them;
* anything else (e.g. neutral ``section_00_0007.wav``): ``unknown``, left to the bank's
  automatic test (asd.scoring.bank).
"""

from __future__ import annotations

import csv
import functools
import os
import re
from pathlib import Path

import pandas as pd

from asd.data.audio import probe_usable_audio
from asd.errors import AsdError
from asd.data.groundtruth import LABELS, load_ground_truth, parse_labelled_name
from asd.io import write_csv

DEV_MACHINE_TYPES = ("ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve")
EVAL_MACHINE_TYPES = (
    "AutoTrash", "HomeCamera", "ToyPet", "ToyRCCar", "BandSealer", "Polisher", "ScrewFeeder", "CoffeeGrinder",
)

MANIFEST_COLUMNS = (
    "dataset", "machine", "section", "split", "file", "path", "domain", "label", "attributes",
    "supplemental_kind", "duration", "sample_rate", "channels",
)
_MANIFEST_DTYPES = {column: str for column in MANIFEST_COLUMNS} | {
    "duration": float, "sample_rate": int, "channels": int,
}
_LABEL_NAMES = {code: name for name, code in LABELS.items()}
SPLITS = ("train", "test", "supplemental")

_UNLABELLED_TEST_NAME = re.compile(r"section_(?P<section>\d+)_(?P<index>\d+)\.wav")
# Supplemental names differ between releases (section_00_machine_0001_.wav,
# section_00_machine_source_0000_noAttribute.wav, section_00_clean_0000.wav, ...), hence a tolerant pattern.
_SUPPLEMENTAL_NAME = re.compile(r"section_(?P<section>\d+)_(?P<kind>\D*?)_?(?P<index>\d+)(?P<rest>.*)\.wav")
MACHINE_KIND_WORDS = ("machine", "clean")  # kind-slot words naming machine sound (clean = without background)
NOISE_KIND_WORDS = ("noise",)  # kind-slot words naming noise-only recordings; they win over machine words
_EXPECTED_NAMES = {
    "train": "section_SS_{source|target}_train_normal_NNNN_<attributes>.wav",
    "test": "section_SS_{source|target}_test_{normal|anomaly}_NNNN_<attributes>.wav or section_SS_NNNN.wav",
    "supplemental": "section_SS_<kind>_NNNN<rest>.wav (e.g. section_00_machine_0001_.wav, section_00_noise_0000.wav, "
                    "section_00_clean_0000.wav)",
}


def parse_clip_name(name: str, *, split: str, supplemental_kind: str = "auto") -> dict:
    """What a clip's file name says: section, domain, label, index, attributes, supplemental_kind.

    Unknown fields are 'unknown' (domain, label) or '' (attributes); supplemental_kind is ''
    outside supplemental/, else machine | noise | unknown as the name's kind slot says (module
    docstring; ``clean`` counts as machine), and ``supplemental_kind`` 'machine' | 'noise'
    overrides what a supplemental name says. ``name`` may be a path; only its base name is parsed.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    basename = os.path.basename(name)
    if split == "supplemental":
        return _parse_supplemental_name(name, basename, kind=supplemental_kind)
    labelled = parse_labelled_name(basename, split=split)
    if labelled is not None:
        return {
            "section": labelled.section,
            "domain": labelled.domain,
            "label": _LABEL_NAMES[labelled.label],
            "index": labelled.index,
            "attributes": labelled.attributes,
            "supplemental_kind": "",
        }
    other_split = "test" if split == "train" else "train"
    if parse_labelled_name(basename, split=other_split) is not None:
        raise AsdError(
            f"{name}: the name says it is a {other_split} clip but it lies in {split}/; move it to {other_split}/."
        )
    unlabelled = _UNLABELLED_TEST_NAME.fullmatch(basename) if split == "test" else None
    if unlabelled is not None:
        return {
            "section": unlabelled["section"],
            "domain": "unknown",
            "label": "unknown",
            "index": int(unlabelled["index"]),
            "attributes": "",
            "supplemental_kind": "",
        }
    raise _unrecognised_name(name, split)


def _parse_supplemental_name(name: str, basename: str, *, kind: str) -> dict:
    match = _SUPPLEMENTAL_NAME.fullmatch(basename)
    if match is None:
        raise _unrecognised_name(name, "supplemental")
    # Only the kind slot is trusted: attribute strings may contain words like `noise_1` (ToyCar).
    kind_words = set(re.split(r"[_\-]", match["kind"].lower()))
    named_kind = (
        "noise" if kind_words & set(NOISE_KIND_WORDS)
        else "machine" if kind_words & set(MACHINE_KIND_WORDS)
        else "unknown"
    )
    named_domain = next((domain for domain in ("source", "target") if domain in kind_words), "")
    return {
        "section": match["section"],
        **_supplemental_fields(named_kind if kind == "auto" else kind, named_domain),
        "index": int(match["index"]),
        "attributes": match["rest"].lstrip("_"),
    }


def _supplemental_fields(kind: str, named_domain: str) -> dict:
    """Label and domain implied by a supplemental clip's kind (clean machine clips are source-domain normals)."""
    if kind == "machine":
        return {"domain": named_domain or "source", "label": "normal", "supplemental_kind": kind}
    return {"domain": named_domain or "unknown", "label": "unknown", "supplemental_kind": kind}


def _unrecognised_name(name: str, split: str) -> AsdError:
    return AsdError(
        f"{name}: not a DCASE 2025 clip name; files in {split}/ must be named {_EXPECTED_NAMES[split]}. "
        "Rename the file (older layouts such as DCASE 2020 `normal_id_00_00000000.wav` are not supported) "
        "or move it out of the dataset folder."
    )


def build_manifest(
    root: str | os.PathLike,
    *,
    dataset: str,
    machine_types: list[str] | None = None,
    ground_truth: str | os.PathLike | None = None,
    sample_rate: int = 16000,
    channel_policy: str = "refuse",
    supplemental_kinds: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Scan ``root`` and return one row per clip (columns MANIFEST_COLUMNS), sorted by machine, split, file.

    ``machine_types`` None means every machine folder found. ``ground_truth`` (an eval_data_list
    CSV or the official evaluator folder, see asd.data.groundtruth) labels unlabelled eval test names.
    ``supplemental_kinds`` maps a machine type to 'machine' | 'noise' ('auto' = as the names say)
    and overrides what the supplemental file names say.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise AsdError(
            f"dataset root {root} does not exist; set the dataset's `root` to the folder holding the "
            "machine-type folders (e.g. data/dcase2025t2/dev_data/raw), or download / generate the data first."
        )
    machines = _machine_folders(root, machine_types)
    rows = []
    for machine in machines:
        kind = (supplemental_kinds or {}).get(machine, "auto")
        if kind not in ("machine", "noise", "auto"):
            raise AsdError(f"supplemental_kinds.{machine} is {kind!r}; set it to machine, noise or auto.")
        machine_rows = _scan_machine(
            root / machine, dataset=dataset, sample_rate=sample_rate, channel_policy=channel_policy,
            supplemental_kind=kind,
        )
        _fill_attributes_from_csv(root / machine, machine_rows)
        rows.extend(machine_rows)
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    if ground_truth is not None:
        apply_ground_truth(manifest, ground_truth)
    return manifest.sort_values(["machine", "split", "file"], kind="stable").reset_index(drop=True)


def machine_files(folder: str | os.PathLike) -> list[str]:
    """The files a machine type's manifest is read from (its clips and attribute CSVs), sorted; none if absent.

    The workflow lists them as the feature job's inputs, so a changed or added clip reruns that job.
    """
    folder = Path(folder)
    files = [p for split in SPLITS for p in (folder / split).glob("*.wav")] + list(folder.glob("attributes_*.csv"))
    return sorted(str(p) for p in files if not p.name.startswith("."))


def _machine_folders(root: Path, machine_types: list[str] | None) -> list[str]:
    found = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if machine_types is None:
        if not found:
            raise AsdError(
                f"dataset root {root} holds no machine-type folders; point `root` at the folder that holds "
                "<machine>/train and <machine>/test (e.g. data/dcase2025t2/dev_data/raw)."
            )
        return found
    missing = [machine for machine in machine_types if machine not in found]
    if missing:
        raise AsdError(
            f"dataset root {root} has no folder for machine type(s) {missing} (found: {found or 'none'}); "
            "fix `machine_types` or download / unzip those machine types into the root."
        )
    return list(machine_types)


def _scan_machine(
    folder: Path, *, dataset: str, sample_rate: int, channel_policy: str, supplemental_kind: str
) -> list[dict]:
    for required in ("train", "test"):
        if not (folder / required).is_dir():
            raise AsdError(
                f"{folder} has no {required}/ folder; every machine-type folder needs train/ and test/ (check "
                "that `root` points at the folder holding the machine types and that the zip was fully extracted)."
            )
    rows = []
    for split in SPLITS:
        split_folder = folder / split
        if not split_folder.is_dir():  # supplemental/ is optional (older releases have none)
            continue
        for entry in sorted(split_folder.iterdir()):
            if entry.name.startswith("."):  # OS metadata such as .DS_Store
                continue
            if not entry.is_file() or entry.suffix.lower() != ".wav":
                raise AsdError(
                    f"{entry}: {split}/ may hold only .wav clips; move this "
                    f"{'folder' if entry.is_dir() else 'file'} out of the dataset folder."
                )
            fields = parse_clip_name(str(entry), split=split, supplemental_kind=supplemental_kind)
            file_rate, channels, frames = probe_usable_audio(
                entry, expected_sample_rate=sample_rate, channel_policy=channel_policy
            )
            rows.append({
                "dataset": dataset,
                "machine": folder.name,
                "section": fields["section"],
                "split": split,
                "file": entry.name,
                "path": str(entry),
                "domain": fields["domain"],
                "label": fields["label"],
                "attributes": fields["attributes"],
                "supplemental_kind": fields["supplemental_kind"],
                "duration": frames / file_rate,
                "sample_rate": file_rate,
                "channels": channels,
            })
    for required in ("train", "test"):
        if not any(row["split"] == required for row in rows):
            raise AsdError(
                f"{folder / required} holds no .wav clips; re-extract the machine type's zip (or remove the "
                "machine type from `machine_types`)."
            )
    return rows


def _fill_attributes_from_csv(folder: Path, rows: list[dict]) -> None:
    """Give clips whose names carry no attributes (eval test names) those of attributes_SS.csv."""
    attributes_by_file: dict[tuple[str, str], str] = {}
    for csv_path in sorted(folder.glob("attributes_*.csv")):
        attributes_by_file |= _read_attributes_csv(csv_path)
    for row in rows:
        if row["attributes"] == "":
            row["attributes"] = attributes_by_file.get((row["split"], row["file"]), "")


def _read_attributes_csv(path: Path) -> dict[tuple[str, str], str]:
    """``(split, file) -> 'd1p_d1v_d2p_d2v...'`` ('noAttribute' where the values are hidden)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        records = list(csv.reader(handle))
    if not records or records[0][:1] != ["file_name"]:
        raise AsdError(
            f"{path}: expected a header starting with `file_name` (file_name,d1p,d1v,...); restore the file "
            "from the dataset zip or delete it."
        )
    attributes = {}
    for record in records[1:]:
        if not record:
            continue
        parts = Path(record[0]).parts  # <machine>/<split>/<file>
        values = [value for value in record[1:] if value not in ("", "noAttribute")]
        attributes[(parts[-2] if len(parts) >= 2 else "", parts[-1])] = "_".join(values) or "noAttribute"
    return attributes


@functools.cache
def _indexed_ground_truth(path: str, version: tuple[int, int]) -> pd.DataFrame:
    """One read per file version (mtime, size) and process: evaluation labels every system's scores from it."""
    return load_ground_truth(path).set_index(["machine", "file"])


def apply_ground_truth(manifest: pd.DataFrame, ground_truth: str | os.PathLike) -> None:
    """Label unlabelled test clips from ground truth (attributes from the original names where given)."""
    stat = os.stat(ground_truth) if os.path.isfile(ground_truth) else None
    truth = _indexed_ground_truth(str(ground_truth), (stat.st_mtime_ns, stat.st_size) if stat else (0, 0))
    unlabelled = manifest.index[(manifest["split"] == "test") & (manifest["label"] == "unknown")]
    for index in unlabelled:
        key = (manifest.at[index, "machine"], manifest.at[index, "file"])
        if key not in truth.index:
            raise AsdError(
                f"{ground_truth}: has no entry for {key[0]}/test/{key[1]}; use the ground truth of this "
                "dataset (eval_data_list_2025.csv for the 2025 evaluation set) or set `ground_truth: null`."
            )
        entry = truth.loc[key]
        manifest.at[index, "label"] = _LABEL_NAMES[int(entry["label"])]
        manifest.at[index, "domain"] = entry["domain"]
        original_name = entry["original_name"]  # None where the ground truth does not give it
        original = parse_labelled_name(original_name, split="test") if isinstance(original_name, str) else None
        if manifest.at[index, "attributes"] == "" and original is not None:
            manifest.at[index, "attributes"] = original.attributes


def write_manifest(manifest: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the manifest CSV atomically (columns in MANIFEST_COLUMNS order)."""
    write_csv(path, manifest.loc[:, list(MANIFEST_COLUMNS)])


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest CSV with its dtypes (section and attributes stay strings, no NaN)."""
    if not Path(path).is_file():
        raise AsdError(f"manifest {path} does not exist; build it first (`asd index ROOT --out {path}`).")
    header = pd.read_csv(path, nrows=0).columns
    missing = [column for column in MANIFEST_COLUMNS if column not in header]
    if missing:
        raise AsdError(f"manifest {path} lacks columns {missing}; rebuild it with `asd index ROOT --out {path}`.")
    return pd.read_csv(path, dtype=_MANIFEST_DTYPES, keep_default_na=False).loc[:, list(MANIFEST_COLUMNS)]
