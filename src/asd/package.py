"""Assemble the DCASE submission archive from ensemble scores, dev tables and the model's cost."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from asd.features import num_frames
from asd.model import load_epoch_checkpoint
from asd.store import read_scores
from asd.submission import build_archive, meta_yaml, write_system
from asd.tables import ALL, ROWS

log = logging.getLogger(__name__)

DESCRIPTION = {
    "input_sampling_rate": 16,
    "data_augmentation": "SpecAugment",
    "front_end": "BEATs log-mel fbank (Kaldi, 25 ms / 10 ms, 128 bins)",
    "acoustic_features": "log-mel energies",
    "embeddings": "BEATs iter3 (4 blocks) with LoRA r=64, attentive statistics pooling, 128-d",
    "machine_learning_method": "ArcFace attribute classification, KNN (cosine) detector",
    "aggregation_method": "attentive statistics pooling",
    "domain_adaptation_method": "none",
    "domain_generalization_method": "separate source/target memory banks (min distance)",
    "ensemble_method_subsystem_count": 1,
    "decision_making": "gamma fit of training leave-one-out scores, 0.9 quantile",
    "attribute_usage": "ArcFace classes; domain classes for machine types without attributes",
    "external_data_usage": "BEATs pre-trained model",
    "development_data_usage": "development",
}
EXTERNAL_DATASETS = [{"name": "AudioSet (BEATs pre-training)", "url": "https://github.com/microsoft/unilm/tree/master/beats"}]


def model_cost(checkpoint_path: str, backbone_settings: dict, *, clip_seconds: float = 10.0) -> tuple[int, int]:
    """(total parameters, multiply-accumulates for one clip's embedding), counted on the real model.

    That is the inference model ``load_epoch_checkpoint`` builds: LoRA merged into q_proj / v_proj,
    so the adapters add neither parameters nor MACs (buffers such as the kept W0 are not counted).
    """
    model, _ = load_epoch_checkpoint(checkpoint_path, backbone_settings=backbone_settings)
    frames = num_frames(int(clip_seconds * 16000), 16000)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.embed(torch.zeros(1, frames, 128))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


def dev_results(table_path: str) -> dict[str, dict[str, float]]:
    table = pd.read_csv(table_path).set_index("metric").drop(columns=[ALL])
    keys = dict(zip(("auc_source", "auc_target", "pauc"), ROWS))
    return {m: {key: round(float(table.loc[row, m]), 2) for key, row in keys.items()} for m in table.columns}


def build_submission(*, zip_path: str, score_paths: list[str], dev_tables: list[str], checkpoint_path: str,
                     machine_types: list[str], submission: dict, backbone_settings: dict) -> None:
    """score_paths: for each system in order, one ensemble score CSV per machine type (in machine_types order)."""
    systems, test_files = [], {}
    total_parameters, macs = model_cost(checkpoint_path, backbone_settings)
    random_init = not backbone_settings.get("checkpoint")
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
        text = meta_yaml(label=system["label"], name=f"{submission['name']} ({system['ensemble']})",
                         abbreviation=submission["abbreviation"], authors=submission["authors"] or [{"lastname": "Unknown"}],
                         description=DESCRIPTION, total_parameters=total_parameters, macs=macs,
                         dev_results=dev_results(dev_tables[s]) if dev_tables else {},
                         external_datasets=EXTERNAL_DATASETS, source_code=submission["source_code"],
                         random_init_backbone=random_init)
        systems.append((system["label"], system_dir, text))
    build_archive(zip_path, systems=systems, machines=machine_types, test_files=test_files)
    log.info("wrote %s: %d systems, %d machine types, %d parameters, %.2f GMACs per clip%s", zip_path, len(systems),
             len(machine_types), total_parameters, macs / 1e9, " (random-init backbone)" if random_init else "")
