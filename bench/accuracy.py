"""Accuracy report: the demo recipe on two synthetic draws, every system beside a log-mel 1-NN reference.

Each draw runs the demo as a user runs it, ``snakemake --cores 2 --configfile config/demo.yaml`` with the
repository's Snakefile and the default target, from a scratch working directory
results/bench/accuracy/<draw>/, plus an overlay that picks the draw's synthetic data (the workflow
finds config/demo.yaml's relative backbone.checkpoint in the pipeline's folder):

- demo:  demo_data {seed: 0, scale: demo}, the demo itself;
- fresh: demo_data {seed: 1, scale: accuracy}, as many training clips as the demo (other sounds), 50 test
  clips per domain and label.

Per draw and evaluated fold, on the same test clips: each score set's (system, or system@scorer) official
score, AUC-S, AUC-T and pAUC (the "All (hmean)" column of its Table 1, from every
results/metrics/<fold>/<score set>.json there is), the
bootstrap sd of its official score (asd.evaluation.metrics.bootstrap_official_score over its score CSVs), and the
same for a log-mel 1-NN: per clip the mean ‖ std of its real (unpadded) cached fbank frames, scored by
the cosine distance to the nearest training clip of its machine type (source and target pooled,
supplemental clips left out). Per anomaly kind (clicks, tone, modulation, rattle: the generator's
anomaly_kinds_demo.csv), for the log-mel 1-NN and every system of the primary scorer: the AUC of a
domain's normal test clips against that domain's anomalies of that kind, averaged over machine types,
which shows what each representation can and cannot hear; and the same per-kind AUC for a 1-NN on the frozen
backbone's tokens after each stage (patch embedding, its LayerNorm, each block; one vector per time patch, mean ‖
std over time), which shows where along the backbone a kind is lost. The goal (GOAL) is checked per draw on every
evaluated fold, against the frozen system of the submitted ensemble's scorer; a report, so it exits 0 either way. Each working
directory (about 0.7 GB) is deleted after its report unless --keep.

    .venv/bin/python bench/accuracy.py [--draws demo,fresh] [--cores 2] [--resamples 1000] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

import asd.config as cfg
from asd.data.dataset import apply_ground_truth
from asd.data.demo import ANOMALY_KINDS_NAME
from asd.data.features import FeatureSet, load_features
from asd.fingerprint import resolve_checkpoint
from asd.model.asd_model import build_backbone, weighted_mean_std
from asd.model.beats import BEATs
from asd.io import write_json, write_text
from asd.evaluation.metrics import (DOMAINS, AlignedSection, align_section, bootstrap_official_score, roc_auc,
                                    section_metrics)
from asd.evaluation.tables import ALL, labelled_test_scores, table_one
from common import REPO, RESULTS, machine, run_snakemake

DEMO_CONFIG = REPO / "config" / "demo.yaml"
DRAWS = {"demo": {"seed": 0, "scale": "demo"}, "fresh": {"seed": 1, "scale": "accuracy"}}
REFERENCE = "log-mel 1-NN"
MIN_OFFICIAL, MIN_GAIN_OVER_FROZEN = 70.0, 5.0  # percent, percentage points
GOAL = (f"the submitted ensemble (the ensemble named in config/demo.yaml submission.systems) ≥ {MIN_OFFICIAL:g} "
        f"official and ≥ frozen + {MIN_GAIN_OVER_FROZEN:g} points, on the demo and on the fresh draw")


# --- one draw ----------------------------------------------------------------------------------------

def overlay(draw: str) -> dict:
    """The draw's demo data (a relative backbone.checkpoint is found in the pipeline's folder by the workflow)."""
    return {"demo_data": DRAWS[draw]}


def aligned(test: pd.DataFrame, machine_type: str) -> AlignedSection:
    """Labelled test rows [file, label, domain, score] of one machine type, paired as asd.evaluation.tables pairs them."""
    truth = pd.DataFrame({"machine": machine_type, "section": "00", "file": test["file"],
                          "label": (test["label"] == "anomaly").astype(int), "domain": test["domain"]})
    return align_section(test[["file", "score"]], None, truth)


def mean_std_over_time(frames: torch.Tensor, real: torch.Tensor) -> np.ndarray:
    """[clips, frames, D] and the real-frame mask [clips, frames] -> [clips, 2D]: mean ‖ std over real frames."""
    weights = real[..., None].float()  # [clips, frames, 1]
    mean, std = weighted_mean_std(frames, weights / weights.sum(dim=1, keepdim=True), eps=0.0)
    return torch.cat([mean, std], dim=1).numpy()


def nearest_neighbour(embedding: np.ndarray, features: FeatureSet, *, machine_type: str,
                      ground_truth: str | None) -> AlignedSection:
    """Test clips scored by the cosine distance of their embedding to the nearest training clip's (source and
    target pooled); ``embedding`` [clips, D] in ``features``' row order (train and test splits)."""
    embedding = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    split = features.manifest["split"].to_numpy()
    test = features.manifest[split == "test"].reset_index(drop=True)
    if ground_truth is not None:
        apply_ground_truth(test, ground_truth)
    test["score"] = 1.0 - (embedding[split == "test"] @ embedding[split == "train"].T).max(axis=1)
    return aligned(test, machine_type)


def logmel_nearest_neighbour(features: FeatureSet, *, machine_type: str, ground_truth: str | None) -> AlignedSection:
    """The reference system on one machine type: cosine 1-NN distance of mean ‖ std log-mel embeddings."""
    fbank = torch.from_numpy(features.fbank).float()  # [clips, frames, 128]
    embedding = mean_std_over_time(fbank, ~features.frame_padding_mask())  # [clips, 256]
    return nearest_neighbour(embedding, features, machine_type=machine_type, ground_truth=ground_truth)


@torch.no_grad()
def backbone_stages(backbone: BEATs, features: FeatureSet, *, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Stage name -> [clips, 2·F'·C]: the frozen backbone's tokens after each stage, one vector per time patch
    (its F' frequency patches side by side), mean ‖ std over the clip's real time patches. Keeping frequency
    apart and taking the spread over time is the pooling that can best hear a level that changes over time."""
    frequency_patches = features.fbank.shape[2] // backbone.config.input_patch_size
    frame_mask = features.frame_padding_mask()
    stages: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(frame_mask), batch_size):
        fbank = torch.from_numpy(features.fbank[start:start + batch_size]).float()  # [B, frames, 128]
        patches = backbone.patch_embedding(fbank.unsqueeze(1)).flatten(2).transpose(1, 2)  # [B, N, C], time-major
        _, token_mask, hidden = backbone.forward_fbank(fbank, frame_mask[start:start + batch_size], output_layers=True)
        outputs = {"patch embedding": patches, "patch embedding + LayerNorm": backbone.layer_norm(patches),
                   **{f"block {i}": tokens for i, tokens in enumerate(hidden[1:], 1)}}
        real = ~token_mask[:, ::frequency_patches]  # [B, T']: a time patch is padding in all its frequency patches
        for name, tokens in outputs.items():
            count, n, channels = tokens.shape
            frames = tokens.float().reshape(count, n // frequency_patches, frequency_patches * channels)  # [B, T', F'·C]
            stages.setdefault(name, []).append(mean_std_over_time(frames, real))
    return {name: np.concatenate(parts) for name, parts in stages.items()}


def system_row(per_machine: list[dict], sections: list[AlignedSection], *, resamples: int) -> dict:
    """Table 1's "All (hmean)" column (percent) and the bootstrap of the official score (fractions)."""
    column = 100 * table_one(per_machine)[ALL]
    bootstrap = bootstrap_official_score(sections, resamples=resamples)
    # The metrics JSON and the score CSVs are the same clips and scores: the sd belongs to this score.
    assert abs(100 * bootstrap["official_score"] - column["hmean"]) < 1e-6, (column["hmean"], bootstrap)
    return {"official": float(column["hmean"]), "AUC_source": float(column["AUC Source"]),
            "AUC_target": float(column["AUC Target"]), "pAUC": float(column["pAUC"]), "bootstrap": bootstrap}


def kind_detection(sections: list[AlignedSection], kinds: list[pd.DataFrame]) -> dict[str, dict[str, float]]:
    """kind -> domain -> the ROC AUC (percent) of that domain's normal test clips against its anomalies of that
    kind, averaged over machine types; ``kinds`` per machine type: rows [file, domain, kind] of its test clips."""
    per_kind: dict[str, dict[str, list[float]]] = {}
    for section, machine_kinds in zip(sections, kinds):
        machine_kinds = machine_kinds.sort_values("file")  # AlignedSection rows are in sorted file-name order
        if list(machine_kinds["domain"]) != list(section.domain):
            raise ValueError("the anomaly kinds do not list the scored test clips")
        kind = machine_kinds["kind"].to_numpy()
        for name in sorted(set(kind) - {"normal"}):
            for domain in DOMAINS:
                clips = (section.domain == domain) & np.isin(kind, ["normal", name])
                if (kind[clips] == name).any():
                    auc = roc_auc(section.label[clips], section.score[clips])
                    per_kind.setdefault(name, {}).setdefault(domain, []).append(100 * float(auc))
    return {name: {domain: float(np.mean(aucs)) for domain, aucs in domains.items()}
            for name, domains in per_kind.items()}


def score_set_order(name: str) -> tuple:
    """Scorer-major, the primary scorer (plain names) first; then frozen, epochs in order, ensembles."""
    system, _, scorer = name.partition("@")
    epoch = int(system[6:]) if system.startswith("epoch_") else 0
    return scorer != "", scorer, system != cfg.FROZEN, not system.startswith("epoch_"), epoch, system


def fold_report(workdir: Path, config: dict, fold: str, *, resamples: int) -> dict:
    machine_types = cfg.fold_machine_types(config, fold)
    dataset = cfg.fold_dataset(config, fold)
    truth_path = config["datasets"][dataset]["ground_truth"]
    ground_truth = None if truth_path is None else str(workdir / truth_path)
    features = [load_features(workdir / "results" / "features" / dataset / f"{m}.h5", splits=["train", "test"])
                for m in machine_types]
    reference = [logmel_nearest_neighbour(f, machine_type=m, ground_truth=ground_truth)
                 for m, f in zip(machine_types, features)]
    all_kinds = pd.read_csv(workdir / Path(config["datasets"][dataset]["root"]).parents[1] / ANOMALY_KINDS_NAME)
    kinds = [all_kinds[all_kinds["machine"] == m] for m in machine_types]
    reference_by_kind = kind_detection(reference, kinds)
    backbone, _ = build_backbone({**config["backbone"],
                                  "checkpoint": resolve_checkpoint(config["backbone"]["checkpoint"], REPO)})
    backbone.eval()
    stage_sections: dict[str, list[AlignedSection]] = {}
    for m, f in zip(machine_types, features):
        for stage, embedding in backbone_stages(backbone, f).items():
            stage_sections.setdefault(stage, []).append(
                nearest_neighbour(embedding, f, machine_type=m, ground_truth=ground_truth))
    by_stage = {REFERENCE: reference_by_kind,
                **{stage: kind_detection(sections, kinds) for stage, sections in stage_sections.items()}}
    systems = {REFERENCE: system_row([{"machine": m, **section_metrics(s)} for m, s in zip(machine_types, reference)],
                                     reference, resamples=resamples)}
    by_kind = {REFERENCE: reference_by_kind}
    metric_files = {path.stem: path for path in (workdir / "results" / "metrics" / fold).glob("*.json")}
    for system in sorted(metric_files, key=score_set_order):
        metrics = json.loads(metric_files[system].read_text())
        sections = [aligned(labelled_test_scores(str(workdir / "results" / "scores" / fold / m / f"{system}.csv"),
                                                 machine=m, ground_truth=ground_truth), m) for m in machine_types]
        systems[system] = system_row(metrics["machines"], sections, resamples=resamples)
        if "@" not in system:  # the primary scorer's score sets
            by_kind[system] = kind_detection(sections, kinds)
    return {"machine_types": machine_types, "test_clips": sum(len(s.label) for s in reference), "systems": systems,
            "by_kind": by_kind, "by_backbone_stage": by_stage}


def goal_check(folds: dict, submitted: dict[str, str]) -> dict:
    """Per fold and submitted ensemble (score set -> the frozen one of its scorer): its official score, the
    frozen one's, and whether the goal is met."""
    checks = [{"fold": fold, "system": name, "official": report["systems"][name]["official"],
               "frozen": report["systems"][frozen]["official"]}
              for fold, report in folds.items() for name, frozen in submitted.items()]
    for check in checks:
        check["met"] = check["official"] >= MIN_OFFICIAL and check["official"] >= check["frozen"] + MIN_GAIN_OVER_FROZEN
    return {"met": bool(checks) and all(check["met"] for check in checks), "checks": checks}


def run_draw(draw: str, *, cores: int, resamples: int, keep: bool) -> dict:
    workdir = RESULTS / "accuracy" / draw
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, as a user's first `make demo`
    workdir.mkdir(parents=True)
    draw_overlay = overlay(draw)
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(draw_overlay))
    # Read with the run, so the report follows the config it ran (the draws may see different versions).
    demo_config_sha256 = hashlib.sha256(DEMO_CONFIG.read_bytes()).hexdigest()
    config = cfg.load_config(REPO / "config.yaml", DEMO_CONFIG, workdir / "overlay.yaml")
    args = ["--cores", str(cores), "--configfile", str(DEMO_CONFIG), "overlay.yaml"]
    load_before = [round(load, 2) for load in os.getloadavg()]  # the machine is shared: other jobs slow the run
    _, wall, cpu = run_snakemake(*args, cwd=workdir)
    load_after = [round(load, 2) for load in os.getloadavg()]
    folds = {fold: fold_report(workdir, config, fold, resamples=resamples)
             for fold in config["folds"] if cfg.fold_has_labels(config, fold)}
    if not keep:
        shutil.rmtree(workdir)
    primary = cfg.primary_scorer(config)
    submitted = {cfg.score_set(config, entry["system"], entry.get("scorer", primary)):
                 cfg.score_set(config, cfg.FROZEN, entry.get("scorer", primary))
                 for entry in config["submission"]["systems"] if entry["system"] in config["ensembles"]}
    return {"overlay": draw_overlay, "demo_config_sha256": demo_config_sha256,
            "command": f"cd {workdir.relative_to(REPO)} && snakemake -s {REPO / 'Snakefile'} " + " ".join(args),
            "wall_s": wall, "cpu_s": cpu, "load_average_before": load_before, "load_average_after": load_after,
            "submitted": submitted, "goal": goal_check(folds, submitted), "folds": folds}


# --- report ------------------------------------------------------------------------------------------

def run(*, draws: list[str], cores: int, resamples: int, keep: bool) -> dict:
    return {"goal": GOAL, "machine": machine(), "cores": cores, "resamples": resamples,
            "draws": {draw: run_draw(draw, cores=cores, resamples=resamples, keep=keep) for draw in draws}}


def markdown(result: dict) -> str:
    lines = ["# Accuracy: the demo recipe on synthetic draws", "", f"Goal (the issue): {GOAL}.", ""]
    for draw, report in result["draws"].items():
        detail = "; ".join(f"{c['fold']} {c['system']} {c['official']:.2f} (frozen {c['frozen']:.2f})"
                           for c in report["goal"]["checks"])
        lines.append(f"- **{draw}: {'PASS' if report['goal']['met'] else 'FAIL'}** ({detail})")
    lines += ["", f"A draw passes when the goal holds on every evaluated fold. Machine: {result['machine']['cpu']}, "
              f"{result['machine']['cpu_count']} cores, snakemake --cores {result['cores']}; official ± the sd of "
              f"{result['resamples']} bootstrap resamples of the test clips (within machine type, domain and "
              "normal/anomaly); percent."]
    for draw, report in result["draws"].items():
        demo_data = report["overlay"]["demo_data"]
        lines += ["", f"## {draw} draw: demo_data seed {demo_data['seed']}, scale {demo_data['scale']}", "",
                  f"`{report['command']}`: {report['wall_s']:.0f} s wall, {report['cpu_s']:.0f} s CPU; load average "
                  f"(1/5/15 min) before {report['load_average_before']}, after {report['load_average_after']}; "
                  f"config/demo.yaml sha256 {report['demo_config_sha256'][:12]}."]
        for fold, fold_result in report["folds"].items():
            lines += ["", f"### {draw}, {fold} fold: {', '.join(fold_result['machine_types'])}, "
                          f"{fold_result['test_clips']} test clips", "",
                      "| system | official ± sd | AUC-S | AUC-T | pAUC |", "| --- | ---: | ---: | ---: | ---: |"]
            for system, row in fold_result["systems"].items():
                name = f"**{system}**" if system in report["submitted"] else system
                lines.append(f"| {name} | {row['official']:.2f} ± {100 * row['bootstrap']['sd']:.2f} | "
                             f"{row['AUC_source']:.2f} | {row['AUC_target']:.2f} | {row['pAUC']:.2f} |")
            lines += ["", *kind_table(fold_result["by_kind"], shown=[REFERENCE, cfg.FROZEN, *report["submitted"]])]
            lines += ["", "Where the frozen backbone loses each kind: the same per-kind AUC for a 1-NN on its tokens "
                      "after each stage (one vector per time patch, mean ‖ std over time):", "",
                      *kind_table(fold_result["by_backbone_stage"], shown=list(fold_result["by_backbone_stage"]),
                                  transpose=True)]
    return "\n".join(lines) + "\n"


def kind_table(by_kind: dict, *, shown: list[str], transpose: bool = False) -> list[str]:
    """Markdown: per anomaly kind, each shown system's same-domain AUC, source / target; a row per kind and a
    column per system, or with ``transpose`` a row per system and a column per kind."""
    shown = [system for system in shown if system in by_kind]
    kinds = sorted({kind for system in shown for kind in by_kind[system]})
    cell = lambda system, kind: " / ".join(f"{by_kind[system][kind].get(domain, float('nan')):.1f}" for domain in DOMAINS)
    rows, columns = (shown, kinds) if transpose else (kinds, shown)
    lines = ["Per anomaly kind: AUC of a domain's normal clips against its anomalies of that kind (mean over "
             "machine types), source / target:", "",
             f"| {'system' if transpose else 'anomaly kind'} | " + " | ".join(columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(cell(row, c) if transpose else cell(c, row) for c in columns) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", default=",".join(DRAWS), help=f"comma-separated, of {', '.join(DRAWS)}")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep each draw's working directory")
    args = parser.parse_args()
    draws = args.draws.split(",")
    if unknown := sorted(set(draws) - set(DRAWS)):
        parser.error(f"unknown draw(s) {unknown}; use {', '.join(DRAWS)}")
    result = run(draws=draws, cores=args.cores, resamples=args.resamples, keep=args.keep)
    text = markdown(result)
    print(text)
    write_json(RESULTS / "accuracy.json", result)
    write_text(RESULTS / "accuracy.md", text)
    print(f"wrote {RESULTS}/accuracy.json and accuracy.md")


if __name__ == "__main__":
    main()
