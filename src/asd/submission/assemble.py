"""Assemble the DCASE submission archive from ensemble scores, dev tables and the model's cost.

Each system's meta.yaml description is generated, never hard-coded: the backbone, LoRA and head
settings come from the submitted checkpoint, the fused epochs, the scorer and the decision quantile
from the config, parameters and MACs are counted on the model. The authors, source URL and labels
come from the config's ``submission`` section; its defaults are placeholders, which the archive may
carry (so the demo runs end to end) but ``asd check-submission`` refuses until they are edited.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from asd.data.features import NUM_MEL_BINS, num_frames
from asd.model.asd_model import backbone_label, load_epoch_checkpoint, read_epoch_checkpoint
from asd.store import read_scores
from asd.submission.archive import (
    PLACEHOLDER_AUTHORS,
    PLACEHOLDER_SOURCE_CODE,
    DEMO_BACKBONE_NOTE,
    RANDOM_INIT_NOTE,
    build_archive,
    meta_yaml,
    placeholder_problems,
    write_system,
)
from asd.config import FROZEN
from asd.scoring.scorers import describe as describe_scorer
from asd.model.embed import frozen_embedding
from asd.evaluation.tables import ALL, ROWS

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # BEATs' input rate; clips are resampled to it
BEATS_PRETRAINING = {"name": "AudioSet (BEATs pre-training)",
                     "url": "https://github.com/microsoft/unilm/tree/master/beats"}


def _numbers(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values)


def backbone_text(identity: Mapping[str, Any]) -> str:
    """The backbone of a checkpoint's identity record: checkpoint file name and sha256 prefix, or random-init."""
    blocks = identity["num_layers"]
    width = (identity.get("config") or {}).get("encoder_embed_dim")
    shape = f"first {blocks} transformer blocks" + (f" ({width}-d)" if width else "")
    if identity["random_init"]:
        return f"{RANDOM_INIT_NOTE} (BEATs architecture, no pre-trained weights), {shape}"
    return f"{backbone_label(identity)}, {shape}"


def system_description(*, checkpoint: Mapping[str, Any], epochs: Sequence[int], scorer: Mapping[str, Any],
                       scoring: Mapping[str, Any], decision: Mapping[str, Any]) -> dict[str, Any]:
    """The meta.yaml ``system.description`` of one submitted system.

    checkpoint: an epoch checkpoint's dict (its ``backbone`` identity and ``head`` settings);
    epochs: the fine-tuned epochs the system fuses (one for ``epoch_N``; none for the frozen
    backbone); scorer: its ``scorers`` entry; scoring and decision: the config sections of those names.
    """
    identity, head = checkpoint["backbone"], checkpoint["head"]
    epochs = sorted(epochs)
    frozen = not epochs
    if frozen:
        pooling = "mean over time"
        embeddings = (f"{backbone_text(identity)}, frozen (no fine-tuning): the last block's tokens mean-pooled, "
                      f"{identity['config']['encoder_embed_dim']}-d embedding")
    else:
        pooling = "attentive statistics pooling" + (" with global context (clip mean and std)"
                                                    if head.get("pooling_global_context") else "")
        embeddings = (f"{backbone_text(identity)}; LoRA rank {head['lora_rank']}, alpha {head['lora_alpha']:g} on "
                      f"q_proj/v_proj of blocks {_numbers(head['lora_blocks'])}; {pooling}; "
                      f"{head['embedding_dim']}-d embedding")
    if frozen:
        models = "the pre-trained backbone alone"
    elif len(epochs) == 1:
        models = f"one checkpoint (epoch {epochs[0]})"
    else:
        models = (f"ensemble of {len(epochs)} epochs of one training run (epochs {_numbers(epochs)}): scores "
                  "z-normalised with the training clips' leave-one-out statistics, then averaged")
    separate = scorer.get("separate_domain_banks", scoring["separate_domain_banks"])
    normalised = scorer["method"] == "knn" and scorer.get("domain_normalisation", scoring["domain_normalisation"])
    classifier = (f"ArcFace attribute classification (scale {head['arcface_scale']:g}, margin "
                  f"{head['arcface_margin']:g}, {head['arcface_subcenters']} sub-centres per class for machine "
                  "types without attributes); ")
    detector = describe_scorer(scorer, scoring)
    if separate or scorer["method"] != "knn":
        generalization = "separate source and target memory banks, score = minimum over the two domains"
        if normalised:
            generalization += "; each domain's distances standardised with its bank's leave-one-out statistics"
    else:
        generalization = "none (one memory bank of both domains"
        generalization += ", distances standardised with its leave-one-out statistics)" if normalised else ")"
    development = "development"
    if scoring.get("use_supplemental"):
        development += " (clean supplemental clips added to the memory banks)"
    return {
        "input_sampling_rate": SAMPLE_RATE // 1000,
        "data_augmentation": "none" if frozen else "SpecAugment (one time and one frequency mask per clip)",
        "front_end": f"BEATs log-mel fbank (Kaldi, 25 ms / 10 ms, {NUM_MEL_BINS} bins)",
        "acoustic_features": "log-mel energies",
        "embeddings": embeddings,
        "machine_learning_method": f"{'' if frozen else classifier}{detector}; {models}",
        "aggregation_method": pooling,
        "domain_adaptation_method": "none",
        "domain_generalization_method": generalization,
        "ensemble_method_subsystem_count": max(1, len(epochs)),
        "decision_making": (f"threshold at the {decision['quantile']:g} quantile of a gamma distribution fitted to "
                            f"the training clips' leave-one-out {'fused ' if len(epochs) > 1 else ''}scores"),
        "attribute_usage": "none" if frozen else ("ArcFace classes: machine type and attribute values; machine "
                                                  "type and domain for machine types without attributes"),
        "external_data_usage": external_data_usage(identity),
        "development_data_usage": development,
    }


def external_data_usage(identity: Mapping[str, Any]) -> str:
    if identity["random_init"]:
        return "none (random-init backbone)"
    if identity.get("pretrained_on"):
        return f"none ({identity['pretrained_on']}: pre-trained by this pipeline on sounds it synthesised)"
    return f"pre-trained BEATs model ({Path(str(identity['checkpoint'])).name})"


def external_datasets(identity: Mapping[str, Any]) -> list[dict[str, str]]:
    """Only a BEATs checkpoint was pre-trained on external data (AudioSet); random and demo backbones used none."""
    return [] if identity["random_init"] or identity.get("pretrained_on") else [dict(BEATS_PRETRAINING)]


def model_cost(checkpoint_path: str, backbone_settings: dict, *, frozen: bool = False,
               clip_seconds: float = 10.0) -> tuple[int, int]:
    """(total parameters, multiply-accumulates for one clip's embedding), counted on the real model.

    That is the inference model ``load_epoch_checkpoint`` builds: LoRA merged into q_proj / v_proj,
    so the adapters add neither parameters nor MACs (buffers such as the kept W0 are not counted);
    with ``frozen``, its backbone alone, as the frozen system runs it.
    """
    model, _ = load_epoch_checkpoint(checkpoint_path, backbone_settings=backbone_settings)
    frames = num_frames(int(clip_seconds * SAMPLE_RATE), SAMPLE_RATE)
    fbank = torch.zeros(1, frames, NUM_MEL_BINS)
    counted = model.backbone if frozen else model
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        if frozen:
            frozen_embedding(model.backbone, fbank, torch.zeros(1, frames, dtype=torch.bool))
        else:
            model.embed(fbank)
    return sum(p.numel() for p in counted.parameters()), counter.get_total_flops() // 2


def system_epochs(system: str, ensembles: Mapping[str, Sequence[int]]) -> list[int]:
    """The fine-tuned epochs a system's scores come from: an ensemble's, epoch_N's one, none for frozen."""
    if system in ensembles:
        return list(ensembles[system])
    return [] if system == FROZEN else [int(system.removeprefix("epoch_"))]


def submission_backbone_note(identity: Mapping[str, Any]) -> str | None:
    """What a submission's name and description must add so no reader takes the backbone for BEATs."""
    if identity["random_init"]:
        return RANDOM_INIT_NOTE
    return DEMO_BACKBONE_NOTE if identity.get("pretrained_on") else None


def dev_results(table_path: str) -> dict[str, dict[str, float]]:
    table = pd.read_csv(table_path).set_index("metric").drop(columns=[ALL])
    keys = dict(zip(("auc_source", "auc_target", "pauc"), ROWS))
    return {m: {key: round(float(table.loc[row, m]), 2) for key, row in keys.items()} for m in table.columns}


def build_submission(*, zip_path: str, score_paths: list[str], dev_tables: list[str], checkpoint_path: str,
                     machine_types: list[str], submission: dict, backbone_settings: dict,
                     ensembles: Mapping[str, Sequence[int]], scorers: Mapping[str, Mapping[str, Any]],
                     scoring: Mapping[str, Any], decision: Mapping[str, Any]) -> None:
    """score_paths: for each system in order, one ensemble score CSV per machine type (in machine_types order).

    ensembles, scoring, decision: the config sections of those names (they fill the description).
    Placeholders left in the submission settings are written, each logged as a warning.
    """
    systems, test_files, warnings, costs = [], {}, [], {}
    checkpoint = read_epoch_checkpoint(checkpoint_path)
    backbone_note = submission_backbone_note(checkpoint["backbone"])
    work = Path(zip_path).with_suffix("")
    for s, system in enumerate(submission["systems"]):
        scores, decisions = {}, {}
        for m, machine in enumerate(machine_types):
            table = read_scores(score_paths[s * len(machine_types) + m])
            test = table[table["role"] == "test"]
            scores[machine], decisions[machine] = test[["file", "score"]], test[["file", "decision"]]
            test_files[machine] = list(test["file"])
        system_dir = work / system["label"]
        write_system(system_dir, scores=scores, decisions=decisions)
        epochs = system_epochs(system["system"], ensembles)
        frozen = not epochs
        if frozen not in costs:  # counting loads the model: once per kind (fine-tuned, frozen)
            costs[frozen] = model_cost(checkpoint_path, backbone_settings, frozen=frozen)
        total_parameters, macs = costs[frozen]
        scorer = system.get("scorer", next(iter(scorers)))
        description = system_description(checkpoint=checkpoint, epochs=epochs, scorer=scorers[scorer],
                                         scoring=scoring, decision=decision)
        text = meta_yaml(label=system["label"], name=f"{submission['name']} ({system['system']}, {scorer})",
                         abbreviation=submission["abbreviation"],
                         authors=submission.get("authors") or list(PLACEHOLDER_AUTHORS),
                         description=description, total_parameters=total_parameters, macs=macs,
                         dev_results=dev_results(dev_tables[s]) if dev_tables else {},
                         external_datasets=external_datasets(checkpoint["backbone"]),
                         source_code=submission.get("source_code") or PLACEHOLDER_SOURCE_CODE,
                         backbone_note=backbone_note)
        warnings += [f"{system['label']}.meta.yaml: {problem}"
                     for problem in placeholder_problems(yaml.safe_load(text))]
        systems.append((system["label"], system_dir, text))
    build_archive(zip_path, systems=systems, machines=machine_types, test_files=test_files, allow_placeholders=True)
    log.info("wrote %s: %d systems, %d machine types%s", zip_path, len(systems), len(machine_types),
             f" ({backbone_note})" if backbone_note else "")
    for warning in warnings:
        log.warning("placeholder: %s", warning)
    if warnings:
        log.warning("%s holds %d placeholder(s); `asd check-submission %s` refuses it until the config's "
                    "`submission` section names the team and the archive is rebuilt", zip_path, len(warnings), zip_path)
