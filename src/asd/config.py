"""Load, merge, validate and query the pipeline configuration.

The JSON schema (workflow/schemas/config.schema.yaml) gives every key's description and
default; this module fills the defaults, checks the cross-references the schema cannot express
(a fold naming an unknown dataset, an ensemble epoch beyond training, ...) and answers the
questions the workflow asks (which machine types a fold trains, which epochs get scored).
Every error names the key and the fix.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from asd.errors import AsdError

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


def _with_defaults(validator_class):
    """A validator that also writes each property's default into the instance (as Snakemake's validate does)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def deep_merge(base: dict, overlay: dict) -> dict:
    """Overlay wins; nested mappings merge key by key, everything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(*paths: str | Path) -> dict:
    """Read YAML files (later ones overlay earlier ones), validate and fill defaults."""
    config: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise AsdError(f"config file {path} does not exist; pass an existing YAML file (e.g. config.yaml).")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err)
            raise AsdError(f"config file {path} is not valid YAML: {problem}{where}; fix the syntax there.") from None
        if not isinstance(loaded, dict):
            raise AsdError(f"config file {path} holds a {type(loaded).__name__}, not a mapping of keys; write it as "
                           "`key: value` lines (e.g. `train: {epochs: 30}`).")
        config = deep_merge(config, loaded)
    return validate_config(config, source=" + ".join(str(p) for p in paths))


def validate_config(config: dict, *, source: str = "config") -> dict:
    """Fill defaults in place, validate against the schema and the cross-references; return the config."""
    errors = sorted(_Validator(load_schema()).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        # An unknown key is usually a typo: the fix is its name, not its value.
        fix = "Remove or rename the key" if err.validator == "additionalProperties" else "Fix the value"
        raise AsdError(f"{source}: config key '{key}': {err.message}. {fix} "
                       f"(see the keys and their descriptions in {SCHEMA_PATH.relative_to(REPO_ROOT)}).")
    _check_references(config, source)
    return config


def _check_references(config: dict, source: str) -> None:
    datasets = config["datasets"]
    for fold, spec in config["folds"].items():
        if spec["dataset"] not in datasets:
            raise AsdError(f"{source}: config key 'folds.{fold}.dataset' names '{spec['dataset']}', "
                           f"which is not a dataset; use one of {sorted(datasets)}.")
        unknown = sorted(set(spec.get("machine_types", [])) - set(datasets[spec["dataset"]]["machine_types"]))
        if unknown:
            raise AsdError(f"{source}: config key 'folds.{fold}.machine_types' names {unknown}, which are not "
                           f"machine types of dataset '{spec['dataset']}' "
                           f"({datasets[spec['dataset']]['machine_types']}); add them to "
                           f"datasets.{spec['dataset']}.machine_types or remove them from the fold.")
    own_names = {fold for fold, spec in config["folds"].items() if spec["dataset"] == fold}
    clashing = sorted(set(config["folds"]) & set(datasets) - own_names)
    if clashing:
        raise AsdError(f"{source}: config key 'folds' names {clashing}, which are datasets other than the folds' "
                       f"own; a fold may share its name only with its own dataset, so rename the fold.")
    blocks, layers = config["model"]["lora_blocks"], config["backbone"]["num_layers"]
    beyond = [b for b in blocks if b >= layers]
    if beyond:
        raise AsdError(f"{source}: config key 'model.lora_blocks' lists blocks {beyond}, but backbone.num_layers is "
                       f"{layers} (blocks 0 to {layers - 1}); use blocks below {layers} or raise backbone.num_layers.")
    if config["train"]["precision"] == "fp16" and config["train"]["device"] == "cpu":
        raise AsdError(f"{source}: config key 'train.precision' is fp16, which is for CUDA GPUs, but train.device is "
                       "cpu; use auto, bf16 or fp32.")
    epochs = config["train"]["epochs"]
    for name, fused in config["ensembles"].items():
        late = [e for e in fused if e > epochs]
        if late:
            raise AsdError(f"{source}: config key 'ensembles.{name}' lists epochs {late} but train.epochs is "
                           f"{epochs}; use epochs between 1 and {epochs}.")
    taken = sorted(name for name in config["ensembles"] if name == FROZEN or re.fullmatch(r"epoch_\d+", name))
    if taken:
        raise AsdError(f"{source}: config key 'ensembles' names {taken}, which are names of other systems (the "
                       f"frozen baseline, single epochs); rename the ensemble.")
    scored = config["scoring"]["epochs"]
    if scored != "all" and max(scored) > epochs:
        raise AsdError(f"{source}: config key 'scoring.epochs' lists epoch {max(scored)} beyond train.epochs "
                       f"({epochs}); use epochs between 1 and {epochs}, or all.")
    unknown_kinds = sorted(set(config["supplemental_kinds"]) - set(all_machine_types(config)))
    if unknown_kinds:
        raise AsdError(f"{source}: config key 'supplemental_kinds' names unknown machine types {unknown_kinds}; "
                       f"use machine types listed under datasets.<name>.machine_types, or remove them.")
    submission = config["submission"]
    for key in ("fold", "dev_fold"):
        if submission[key] is not None and submission[key] not in config["folds"]:
            raise AsdError(f"{source}: config key 'submission.{key}' is '{submission[key]}', not a fold; "
                           f"use one of {sorted(config['folds'])}.")
    for system in submission["systems"]:
        if system["system"] not in systems(config):
            raise AsdError(f"{source}: submission system '{system['label']}' names system '{system['system']}', "
                           f"which this config does not score; use one of {systems(config)}.")
        if system.get("scorer", primary_scorer(config)) not in config["scorers"]:
            raise AsdError(f"{source}: submission system '{system['label']}' names scorer '{system['scorer']}', "
                           f"which is not in 'scorers' ({list(config['scorers'])}).")


def all_machine_types(config: dict) -> list[str]:
    return sorted({m for spec in config["datasets"].values() for m in spec["machine_types"]})


def fold_dataset(config: dict, fold: str) -> str:
    return config["folds"][fold]["dataset"]


def fold_machine_types(config: dict, fold: str) -> list[str]:
    spec = config["folds"][fold]
    return list(spec.get("machine_types") or config["datasets"][spec["dataset"]]["machine_types"])


def table_epochs(config: dict) -> list[int]:
    """Epochs that get a table: scoring.epochs ("all" = every trained epoch)."""
    scored = config["scoring"]["epochs"]
    return list(range(1, config["train"]["epochs"] + 1)) if scored == "all" else sorted(scored)


def scored_epochs(config: dict) -> list[int]:
    """Epochs that get embeddings and scores: the tabled ones plus every ensemble member."""
    return sorted(set(table_epochs(config)) | {e for fused in config["ensembles"].values() for e in fused})


FROZEN = "frozen"  # the baseline system: the backbone without fine-tuning, mean-pooled, same banks and KNN


def systems(config: dict) -> list[str]:
    """The systems that get a table: the frozen baseline, one per tabled epoch, one per ensemble."""
    return [FROZEN] + [f"epoch_{e}" for e in table_epochs(config)] + list(config["ensembles"])


def primary_scorer(config: dict) -> str:
    """The first configured scorer: its score files and tables keep the plain system names."""
    return next(iter(config["scorers"]))


def score_set(config: dict, system: str, scorer: str) -> str:
    """The name of one (system, scorer) pair's files: ``<system>``, or ``<system>@<scorer>`` off the primary."""
    return system if scorer == primary_scorer(config) else f"{system}@{scorer}"


def score_sets(config: dict, names: list[str] | None = None) -> list[str]:
    """Every (system, scorer) pair of ``names`` (default: the tabled systems), scorer-major, primary first."""
    return [score_set(config, system, scorer) for scorer in config["scorers"]
            for system in (systems(config) if names is None else names)]


def split_score_set(config: dict, name: str) -> tuple[str, str]:
    """(system, scorer) of a score-set name."""
    system, _, scorer = name.partition("@")
    return system, scorer or primary_scorer(config)


def fold_has_labels(config: dict, fold: str) -> bool:
    """Whether the fold's test clips can be evaluated (labelled names or a ground-truth list)."""
    spec = config["datasets"][fold_dataset(config, fold)]
    return spec["labelled_test"] or spec["ground_truth"] is not None


def section(config: dict, keys: Iterable[str]) -> dict[str, Any]:
    """The named top-level sections only: rules pass narrow params so an edit elsewhere reruns nothing."""
    return {key: copy.deepcopy(config[key]) for key in keys}
