"""From embeddings to per-clip score tables: memory bank files, KNN epoch scores, multi-epoch ensembles.

A score CSV (``results/scores/<fold>/<machine>/<system>.csv``) holds one row per test clip and one
per memory-bank clip (``role`` = test | bank). Bank rows carry leave-one-out scores, the training
statistics that ensembling and decision thresholds use; test statistics are never used.
Columns: role, split, file, domain, label, attributes, score, decision (+ score_<domain> per bank
domain in epoch files).
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd

from asd.bank import build_bank
from asd.decision import decide, gamma_threshold
from asd.ensemble import fuse_epochs
from asd.store import ROW_COLUMNS, load_embeddings, order_score_table
from asd.errors import AsdError
from asd.io import write_csv, write_json
from asd.knn import DomainNormaliser, leave_one_out_scores, score_domains

log = logging.getLogger(__name__)


def write_bank(*, embeddings_path: str, out_path: str, machine: str, kind_override: str | None,
               use_supplemental: bool) -> None:
    embeddings, spectrum, manifest, attrs = load_embeddings(embeddings_path)
    try:
        bank = build_bank(manifest, embeddings, name=machine, kind_override=kind_override,
                          use_supplemental=use_supplemental, test_features=spectrum)
    except AsdError as err:  # build_bank knows the machine type only; the user needs the file too
        raise AsdError(f"memory bank from {embeddings_path}: {err}") from None
    record = {"machine": machine, "epoch": int(attrs["epoch"]), "backbone": str(attrs["backbone"]),
              **bank.composition}
    write_json(out_path, record)
    counts = bank.composition["counts"]
    log.info("%s bank: %d source (%d supplemental machine clips), %d target, %d supplemental excluded",
             machine, counts["source_bank"], counts["supplemental_machine"], counts["target_bank"],
             counts["supplemental_excluded"])


def _bank_rows(manifest: pd.DataFrame, members: list[str], bank_path: str) -> np.ndarray:
    candidates = manifest[manifest["split"].isin(["train", "supplemental"])]
    by_file = pd.Series(candidates.index, index=candidates["file"])
    missing = sorted(set(members) - set(by_file.index))
    if missing:
        raise AsdError(f"{bank_path} lists clips {missing[:3]} that the embeddings do not hold; rebuild it with "
                       f"the 'score' rule (snakemake --forcerun {bank_path}).")
    return by_file.loc[members].to_numpy()


def score_epoch(*, embeddings_path: str, bank_path: str, out_path: str, machine: str, scoring: dict,
                decision: dict) -> None:
    embeddings, _, manifest, attrs = load_embeddings(embeddings_path)
    with open(bank_path) as f:
        members = json.load(f)["members"]
    rows = {d: _bank_rows(manifest, members[d], bank_path) for d in ("source", "target")}
    banks = {d: embeddings[r] for d, r in rows.items()}
    if not scoring["separate_domain_banks"]:
        rows = {"all": np.concatenate([rows["source"], rows["target"]])}
        banks = {"all": embeddings[rows["all"]]}
    k = scoring["k"]
    where = f"{machine} in {bank_path}"  # how KNN errors (empty bank, k too large) name the bank
    normaliser = DomainNormaliser.fit(banks, k, name=where) if scoring["domain_normalisation"] else None
    test = np.flatnonzero(manifest["split"].to_numpy() == "test")
    test_score, test_domains = score_domains(embeddings[test], banks, k, name=where, normaliser=normaliser)
    loo = leave_one_out_scores(banks, k, name=where, normaliser=normaliser)
    bank_index = np.concatenate([rows[d] for d in loo])
    bank_score = np.concatenate(list(loo.values()))
    threshold = gamma_threshold(bank_score, decision["quantile"], name=f"{machine} epoch {attrs['epoch']}")
    table = pd.concat([
        manifest.loc[test, ROW_COLUMNS].assign(role="test", score=test_score,
                                               **{f"score_{d}": v for d, v in test_domains.items()}),
        manifest.loc[bank_index, ROW_COLUMNS].assign(role="bank", score=bank_score),
    ], ignore_index=True)
    table["decision"] = decide(table["score"].to_numpy(), threshold)
    write_csv(out_path, order_score_table(table))
    log.info("%s epoch %s: %d test clips scored against %s banks (k=%d), threshold %.4f, %d flagged",
             machine, attrs["epoch"], len(test), "/".join(banks), k, threshold,
             int(table.loc[table.role == "test", "decision"].sum()))


def score_machine(*, systems: list[str], embedding_paths: list[str], bank_paths: list[str], score_paths: list[str],
                  ensembles: dict[str, list[int]], ensemble_paths: list[str], machine: str, kind_override: str | None,
                  use_supplemental: bool, scoring: dict, decision: dict) -> None:
    """All scoring of one machine type in one job: per system (the frozen baseline, each epoch) its bank and KNN
    scores, then every ensemble of epochs."""
    started = time.perf_counter()
    for embeddings_path, bank_path, score_path in zip(embedding_paths, bank_paths, score_paths, strict=True):
        write_bank(embeddings_path=embeddings_path, out_path=bank_path, machine=machine, kind_override=kind_override,
                   use_supplemental=use_supplemental)
        score_epoch(embeddings_path=embeddings_path, bank_path=bank_path, out_path=score_path, machine=machine,
                    scoring=scoring, decision=decision)
    by_system = dict(zip(systems, score_paths, strict=True))
    for (name, fused), out_path in zip(ensembles.items(), ensemble_paths, strict=True):
        fuse_epochs(score_paths=[by_system[f"epoch_{e}"] for e in fused], epochs=list(fused), out_path=out_path,
                    machine=machine, decision=decision)
    log.info("%s: %d systems and %d ensembles scored in %.2f s", machine, len(systems), len(ensembles),
             time.perf_counter() - started)
