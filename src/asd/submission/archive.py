"""The DCASE 2025 Task 2 submission package: result files, meta YAML, zip archive, and its checker.

Result files (one pair per machine type and system): ``anomaly_score_<machine>_section_00_test.csv``
and ``decision_result_<machine>_section_00_test.csv``, rows ``<file>,<value>`` with no header;
decisions are 0/1. The official evaluator pairs rows with the ground truth by SORTED file name,
so every test clip must appear exactly once under its distributed name.

Archive layout: ``<label>/<result files>`` and ``<label>/<label>.meta.yaml`` per system (at most
four), plus optionally the technical report PDF at the top level.

The default authors, source URL and label are placeholders (CHANGE_ME, Lastname_Inst): an archive
may be built with them, but ``check_submission`` reports each one until the config names the team.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Collection, Iterable, Literal, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import yaml

from asd.errors import AsdError
from asd.io import atomic_path, write_text

Kind = Literal["score", "decision"]
MAX_SYSTEMS = 4
MAX_ABBREVIATION = 10
SECTION = "00"
# Lastname_Inst_task2_N: letters (any script) with inner hyphens, N = 1..4.
LABEL_PATTERN = re.compile(r"[^\W\d_]+(?:-[^\W_]+)*_[^\W_]+(?:-[^\W_]+)*_task2_[1-4]")
REQUIRED_DESCRIPTION_KEYS = (
    "input_sampling_rate", "data_augmentation", "front_end", "acoustic_features", "embeddings",
    "machine_learning_method", "aggregation_method", "domain_adaptation_method",
    "domain_generalization_method", "ensemble_method_subsystem_count", "decision_making",
    "attribute_usage", "external_data_usage", "development_data_usage",
)
REQUIRED_META_KEYS = (
    ("submission", "label"), ("submission", "name"), ("submission", "abbreviation"),
    ("submission", "authors"),
    *(("system", "description", key) for key in REQUIRED_DESCRIPTION_KEYS),
    ("system", "complexity", "total_parameters"), ("system", "complexity", "MACS"),
    ("external_datasets",), ("source_code",), ("results", "development_dataset"),
)
DEV_RESULT_KEYS = ("auc_source", "auc_target", "pauc")
RANDOM_INIT_NOTE = "random-init backbone"
DEMO_BACKBONE_NOTE = "demo backbone pre-trained on synthetic sounds, not BEATs"
_RESULT_FILE = re.compile(
    r"(?:anomaly_score|decision_result)_(?P<machine>.+)_section_(?P<section>\d\d)_test\.csv"
)
_FILE_PREFIX = {"score": "anomaly_score", "decision": "decision_result"}
_KIND_WORDS = {"score": "anomaly score", "decision": "decision"}
_EXAMPLES = 3
_PROBLEMS_IN_ERROR = 12

# Placeholders: the defaults name nobody. The archive builder may write them (so a demo runs end to
# end), but check_submission refuses every one left in a meta.yaml until the config is edited.
PLACEHOLDER = "CHANGE_ME"
PLACEHOLDER_TEAM = "Lastname_Inst"  # team prefix of the default system label Lastname_Inst_task2_1
PLACEHOLDER_AUTHORS = (
    {"lastname": PLACEHOLDER, "firstname": PLACEHOLDER, "email": "change.me@example.org", "corresponding": True,
     "affiliation": {"institution": PLACEHOLDER}},
)
PLACEHOLDER_SOURCE_CODE = "https://example.org/CHANGE_ME"
_PLACEHOLDER_TEXT = re.compile(r"(?<![^\W_])change[-_. ]?me(?![^\W_])", re.IGNORECASE)
# meta.yaml field -> the config key that fills it (the fix a placeholder message names)
_CONFIG_KEYS = {
    ("submission", "authors"): "`submission.authors`",
    ("submission", "label"): "`submission.systems[].label` (and `submission.archive`)",
    ("submission", "name"): "`submission.name`",
    ("submission", "abbreviation"): "`submission.abbreviation`",
    ("source_code",): "`submission.source_code`",
}


class PackagedSystem(NamedTuple):
    label: str  # Lastname_Inst_task2_N
    system_dir: Path  # holds the result CSVs written by write_system
    meta_yaml: str  # text from meta_yaml()


# --- result files -------------------------------------------------------------------------------


def result_file_name(machine: str, *, kind: Kind, section: str = SECTION) -> str:
    return f"{_FILE_PREFIX[kind]}_{machine}_section_{section}_test.csv"


def format_examples(names: Iterable[str]) -> str:
    """A few sorted names for an error message: ``a, b, c, ... 7 more``."""
    names = sorted(names)
    shown = ", ".join(names[:_EXAMPLES])
    return shown + (f", ... {len(names) - _EXAMPLES} more" if len(names) > _EXAMPLES else "")


def bad_value_mask(values: np.ndarray, *, kind: Kind) -> np.ndarray:
    """True where a value is not allowed: non-finite scores, decisions other than 0/1."""
    values = np.asarray(values, dtype=float)
    return ~np.isfinite(values) if kind == "score" else ~np.isin(values, (0.0, 1.0))


def clip_name_problems(names: Sequence[str], *, expected: Collection[str] | None) -> list[str]:
    """Duplicated names and, when ``expected`` is given, missing and unexpected clips."""
    problems = []
    duplicated = [name for name, count in Counter(names).items() if count > 1]
    if duplicated:
        problems.append(f"{len(duplicated)} duplicate clip name(s) ({format_examples(duplicated)})")
    if expected is not None:
        missing, unexpected = set(expected) - set(names), set(names) - set(expected)
        if missing:
            problems.append(f"{len(missing)} missing clip(s) ({format_examples(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected clip name(s) ({format_examples(unexpected)})")
    return problems


def parse_result_rows(text: str, *, kind: Kind) -> tuple[pd.DataFrame, list[str]]:
    """Parse ``file,value`` rows into a DataFrame[file, <kind>] and the list of format problems."""
    problems, names, values, lines = [], [], [], []
    reader = csv.reader(io.StringIO(text))
    for fields in reader:
        line = reader.line_num
        if not any(field.strip() for field in fields):
            problems.append(f"line {line} is empty")
            continue
        if len(fields) != 2:
            problems.append(f"line {line} has {len(fields)} fields, not `file,value`")
            continue
        name, raw = fields
        # The evaluator sorts raw names, so stray spaces would silently shift the alignment.
        if name != name.strip() or not name.endswith(".wav"):
            problems.append(f"line {line}: file name {name!r} must be a bare `<clip>.wav` name")
        try:
            value = float(raw)
        except ValueError:
            problems.append(f"line {line}: value {raw!r} is not a number (no header row allowed)")
            continue
        names.append(name)
        values.append(value)
        lines.append(line)
    values = np.asarray(values, dtype=float)
    bad = bad_value_mask(values, kind=kind)
    reason = "not a finite number" if kind == "score" else "not 0 or 1"
    problems += [f"line {line}: {_KIND_WORDS[kind]} {float(value)!r} is {reason}"
                 for line, value in zip(np.asarray(lines)[bad], values[bad])]
    if not names and not problems:
        problems.append("the file has no rows")
    column = values.astype("int64") if kind == "decision" and not bad.any() else values
    return pd.DataFrame({"file": names, kind: column}), problems


def read_result_csv(path: str | os.PathLike, *, kind: Kind) -> pd.DataFrame:
    """Read one result file as DataFrame[file, score|decision]; AsdError listing every format problem."""
    path = Path(path)
    if not path.is_file():
        raise AsdError(f"{path} does not exist; write the {_KIND_WORDS[kind]} file for that machine type.")
    frame, problems = parse_result_rows(path.read_text(encoding="utf-8"), kind=kind)
    if problems:
        raise AsdError(f"{path}: {_joined(problems)}. Write one `<clip>.wav,<value>` row per test clip, no header.")
    return frame


def write_system(
    system_dir: str | os.PathLike,
    *,
    scores: Mapping[str, pd.DataFrame],
    decisions: Mapping[str, pd.DataFrame],
    section: str = SECTION,
) -> list[Path]:
    """Write both result files per machine type (rows sorted by file name); returns their paths.

    Everything is validated before the first file is written, so a refused call writes nothing.
    """
    if set(scores) != set(decisions):
        raise AsdError(
            f"scores and decisions cover different machine types ({format_examples(set(scores) ^ set(decisions))}); "
            "give both for every machine type."
        )
    texts = {}
    for machine in sorted(scores):
        for kind, frame in (("score", scores[machine]), ("decision", decisions[machine])):
            problems = clip_name_problems(list(frame["file"]), expected=set(scores[machine]["file"]))
            bad = bad_value_mask(frame[kind].to_numpy(), kind=kind)
            if bad.any():
                problems.append(f"{int(bad.sum())} value(s) that are "
                                f"{'not finite' if kind == 'score' else 'not 0 or 1'} "
                                f"({format_examples(frame['file'][bad])})")
            if problems:
                raise AsdError(f"{_KIND_WORDS[kind]}s for {machine}: {_joined(problems)}; "
                               "fix them before writing the system.")
            # repr() of a float round-trips exactly, so the file holds the full-precision score.
            texts[Path(system_dir) / result_file_name(machine, kind=kind, section=section)] = "".join(
                f"{name},{float(value)!r}\n" if kind == "score" else f"{name},{int(value)}\n"
                for name, value in sorted(zip(frame["file"], frame[kind]))
            )
    for path, text in texts.items():
        write_text(path, text)
    return list(texts)


# --- meta YAML ----------------------------------------------------------------------------------


def meta_yaml(
    *,
    label: str,
    name: str,
    abbreviation: str,
    authors: Sequence[Mapping[str, Any]],
    description: Mapping[str, Any],
    total_parameters: int,
    macs: int | float | str,
    dev_results: Mapping[str, Mapping[str, float]],
    external_datasets: Sequence[Mapping[str, str]],
    source_code: str,
    backbone_note: str | None,
) -> str:
    """The ``<label>.meta.yaml`` text; dev_results in percent, ``{machine: {auc_source, auc_target, pauc}}``.

    A ``backbone_note`` (``RANDOM_INIT_NOTE``, ``DEMO_BACKBONE_NOTE``) is added to the name and the
    embeddings description, so no reader mistakes such a system for one with BEATs weights.
    """
    description = dict(description)
    if backbone_note:
        if backbone_note not in name:
            name = f"{name} ({backbone_note})"
        if backbone_note not in str(description.get("embeddings", "")):
            embeddings = description.get("embeddings") or ""
            description["embeddings"] = f"{embeddings} ({backbone_note})".strip()
    meta = {
        "submission": {"label": label, "name": name, "abbreviation": abbreviation,
                       "authors": [dict(author) for author in authors]},
        "system": {"description": description,
                   "complexity": {"total_parameters": int(total_parameters), "MACS": macs}},
        "external_datasets": [dict(dataset) for dataset in external_datasets],
        "source_code": source_code,
        "results": {"development_dataset": {
            machine: {key: float(values[key]) for key in DEV_RESULT_KEYS if key in values}
            for machine, values in dev_results.items()
        }},
    }
    problems = _label_problems(label) + meta_problems(meta, label=label)
    if problems:
        raise AsdError(f"meta data for {label}: {_joined(problems)}; fix the submission settings.")
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)


def dev_results_from_evaluation(result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{machine: {auc_source, auc_target, pauc}}`` in percent (2 decimals) from ``metrics.evaluate_dir``."""
    table = result["paper_table"]
    keys = {"auc_source": "AUC (source)", "auc_target": "AUC (target)", "pauc": "pAUC (source, target)"}
    return {
        machine: {key: round(100.0 * table[row][machine], 2) for key, row in keys.items()}
        for machine in result["machines"]
    }


def meta_problems(meta: Any, *, label: str) -> list[str]:
    """Every missing or malformed field of a parsed meta YAML for the system folder ``label``."""
    if not isinstance(meta, dict):
        return ["meta file is not a YAML mapping"]
    problems = []
    for path in REQUIRED_META_KEYS:
        node = meta
        for key in path:
            if not isinstance(node, dict) or key not in node:
                problems.append(f"missing key {'.'.join(path)}")
                break
            node = node[key]
    submission = meta.get("submission") if isinstance(meta.get("submission"), dict) else {}
    if "label" in submission and submission["label"] != label:
        problems.append(f"submission.label is {submission['label']!r} but the system folder is {label!r}")
    if "abbreviation" in submission and len(str(submission["abbreviation"])) > MAX_ABBREVIATION:
        problems.append(f"submission.abbreviation {submission['abbreviation']!r} is longer than "
                        f"{MAX_ABBREVIATION} characters")
    if "authors" in submission and not (isinstance(submission["authors"], list) and submission["authors"]):
        problems.append("submission.authors must be a non-empty list")
    datasets = meta.get("external_datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(d, dict) and {"name", "url"} <= d.keys() for d in datasets):
        problems.append("external_datasets must be a list of {name, url} entries")
    dev = meta.get("results", {}).get("development_dataset", {}) if isinstance(meta.get("results"), dict) else {}
    if not isinstance(dev, dict):
        problems.append("results.development_dataset must map machine types to results")
        dev = {}
    for machine, values in dev.items():
        for key in DEV_RESULT_KEYS:
            value = values.get(key) if isinstance(values, dict) else None
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                problems.append(f"results.development_dataset.{machine}.{key} must be a number")
    return problems


def is_placeholder(value: Any) -> bool:
    """Whether a meta value is a placeholder: text holding CHANGE_ME (change.me, change-me, ...)."""
    return isinstance(value, str) and _PLACEHOLDER_TEXT.search(value) is not None


def placeholder_problems(meta: Any, *, config: str = "the config (config.yaml)") -> list[str]:
    """One problem per placeholder left in a parsed meta YAML, naming the field and the config key to edit.

    Placeholders are CHANGE_ME texts anywhere in the meta data and the default team prefix
    ``Lastname_Inst`` of a system label.
    """
    if not isinstance(meta, dict):
        return []
    problems = []

    def fix(path: tuple) -> str:
        keys = [key for key in path if isinstance(key, str)]
        for length in range(len(keys), 0, -1):
            if tuple(keys[:length]) in _CONFIG_KEYS:
                return f"edit {_CONFIG_KEYS[tuple(keys[:length])]} in {config} and rebuild the archive"
        return f"edit the `submission` section of {config} and rebuild the archive"

    def walk(node: Any, path: tuple) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*path, key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, (*path, index))
        elif is_placeholder(node):
            field = "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path).lstrip(".")
            problems.append(f"{field} is the placeholder {node!r}; {fix(path)}")

    walk(meta, ())
    submission = meta.get("submission") if isinstance(meta.get("submission"), dict) else {}
    label = submission.get("label")
    if isinstance(label, str) and label.startswith(PLACEHOLDER_TEAM + "_") and not is_placeholder(label):
        problems.append(f"submission.label {label!r} has the placeholder team prefix {PLACEHOLDER_TEAM}; "
                        f"{fix(('submission', 'label'))} (<Lastname>_<Institute>_task2_N)")
    return problems


# --- archive ------------------------------------------------------------------------------------


def build_archive(
    zip_path: str | os.PathLike,
    *,
    systems: Sequence[PackagedSystem | tuple[str, str | os.PathLike, str]],
    machines: Sequence[str] | None = None,
    test_files: Mapping[str, Sequence[str]] | None = None,
    technical_report: str | os.PathLike | None = None,
    allow_placeholders: bool = False,
) -> Path:
    """Write the submission zip atomically; refuses (AsdError, no file) when check_submission finds problems.

    With ``allow_placeholders`` an archive whose meta data still holds placeholders (CHANGE_ME authors,
    the Lastname_Inst label) is written anyway; check_submission refuses it until they are edited.
    """
    systems = [PackagedSystem(label, Path(system_dir), text) for label, system_dir, text in systems]
    labels = [system.label for system in systems]
    if not 1 <= len(systems) <= MAX_SYSTEMS or len(set(labels)) != len(labels):
        raise AsdError(f"a submission holds 1 to {MAX_SYSTEMS} systems with distinct labels, got {labels}; "
                       "drop or relabel systems.")
    zip_path = Path(zip_path)
    with atomic_path(zip_path, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for system in systems:
                result_files = sorted(p for p in system.system_dir.glob("*.csv") if _RESULT_FILE.fullmatch(p.name))
                if not result_files:
                    raise AsdError(f"{system.system_dir} holds no result CSVs; "
                                   f"run write_system for {system.label} first.")
                for path in result_files:
                    archive.write(path, f"{system.label}/{path.name}")
                archive.writestr(f"{system.label}/{system.label}.meta.yaml", system.meta_yaml)
            if technical_report is not None:
                archive.write(technical_report, Path(technical_report).name)
        problems = check_submission(tmp, machines=machines, test_files=test_files,
                                    allow_placeholders=allow_placeholders)
        if problems:
            raise AsdError(f"{zip_path} was not written: {_joined(problems)}.")
    return zip_path


def check_submission(
    zip_path: str | os.PathLike,
    *,
    machines: Sequence[str] | None = None,
    test_files: Mapping[str, Sequence[str]] | None = None,
    allow_placeholders: bool = False,
) -> list[str]:
    """Every problem of a submission zip (empty list = valid).

    Expected machine types: ``machines``, else the keys of ``test_files``, else every machine type
    any system has a result file for. With ``test_files`` every clip must appear exactly once.
    Every placeholder left in a meta.yaml (``placeholder_problems``) is a problem unless
    ``allow_placeholders``.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as error:
        return [f"{zip_path} cannot be opened as a zip file ({error})"]
    with archive:
        problems, systems = [], {}
        for info in archive.infolist():
            parts = info.filename.split("/")
            if info.is_dir() or (len(parts) == 1 and info.filename.lower().endswith(".pdf")):
                continue  # folder entries and the technical report
            if len(parts) != 2:
                problems.append(f"unexpected file {info.filename} (system files sit directly in <label>/)")
                continue
            systems.setdefault(parts[0], {})[parts[1]] = info
        if not systems:
            problems.append("no system folders <Lastname_Inst_task2_N>/ in the archive")
        if len(systems) > MAX_SYSTEMS:
            problems.append(f"{len(systems)} systems; a submission holds at most {MAX_SYSTEMS} systems")
        teams = {label.rsplit("_task2_", 1)[0] for label in systems if LABEL_PATTERN.fullmatch(label)}
        if len(teams) > 1:
            problems.append(f"systems from different Lastname_Inst prefixes ({format_examples(teams)}); "
                            "one team per zip")
        if machines is None:
            machines = sorted(test_files) if test_files is not None else sorted({
                match["machine"] for files in systems.values() for name in files
                if (match := _RESULT_FILE.fullmatch(name))
            })
        for label, files in sorted(systems.items()):
            problems += _label_problems(label)
            problems += [f"{label}/{problem}" for problem in
                         _system_problems(archive, label=label, files=files, machines=machines, test_files=test_files,
                                          allow_placeholders=allow_placeholders)]
    return problems


def validate_or_raise(
    zip_path: str | os.PathLike,
    *,
    machines: Sequence[str] | None = None,
    test_files: Mapping[str, Sequence[str]] | None = None,
    allow_placeholders: bool = False,
) -> None:
    """check_submission, raising AsdError with the whole list of problems."""
    problems = check_submission(zip_path, machines=machines, test_files=test_files,
                                allow_placeholders=allow_placeholders)
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise AsdError(f"{zip_path} is not a valid submission ({len(problems)} problem(s)):\n{listing}\n"
                       "Fix them and rebuild the archive.")


def _system_problems(
    archive: zipfile.ZipFile,
    *,
    label: str,
    files: Mapping[str, zipfile.ZipInfo],
    machines: Sequence[str],
    test_files: Mapping[str, Sequence[str]] | None,
    allow_placeholders: bool,
) -> list[str]:
    problems = []
    meta_name = f"{label}.meta.yaml"
    if meta_name not in files:
        problems.append(f"missing meta file {meta_name}")
    else:
        try:
            meta = yaml.safe_load(archive.read(files[meta_name]))
        except yaml.YAMLError as error:
            problems.append(f"{meta_name} is not valid YAML ({str(error).splitlines()[0]})")
        else:
            problems += [f"{meta_name}: {problem}" for problem in meta_problems(meta, label=label)]
            if not allow_placeholders:
                problems += [f"{meta_name}: {problem}" for problem in placeholder_problems(meta)]
    expected_names = {meta_name}
    for machine in machines:
        clip_names = {}
        for kind in ("score", "decision"):
            name = result_file_name(machine, kind=kind)
            expected_names.add(name)
            if name not in files:
                problems.append(f"missing {_KIND_WORDS[kind]} file {name}")
                continue
            try:
                text = archive.read(files[name]).decode("utf-8")
            except UnicodeDecodeError:
                problems.append(f"{name} is not UTF-8 text")
                continue
            frame, format_problems = parse_result_rows(text, kind=kind)
            expected = test_files.get(machine, ()) if test_files is not None else None
            clip_names[kind] = list(frame["file"])
            problems += [f"{name}: {problem}" for problem in
                         format_problems + clip_name_problems(clip_names[kind], expected=expected)]
        # Without a clip list, the two files of a machine type must at least agree with each other.
        if test_files is None and len(clip_names) == 2:
            differing = set(clip_names["score"]) ^ set(clip_names["decision"])
            if differing:
                problems.append(f"{result_file_name(machine, kind='decision')}: clip names differ from the "
                                f"anomaly score file ({format_examples(differing)})")
    problems += [f"unexpected file {name}" for name in sorted(set(files) - expected_names)]
    return problems


def _label_problems(label: str) -> list[str]:
    if LABEL_PATTERN.fullmatch(label):
        return []
    return [f"bad label {label!r}: system labels must look like Lastname_Inst_task2_N with N = 1..4"]


def _joined(problems: Sequence[str]) -> str:
    shown = "; ".join(problems[:_PROBLEMS_IN_ERROR])
    more = len(problems) - _PROBLEMS_IN_ERROR
    return shown + (f"; ... {more} more problem(s)" if more > 0 else "")
