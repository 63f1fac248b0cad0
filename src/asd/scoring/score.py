"""From embeddings to per-clip score tables: memory bank files, every scorer's scores, multi-epoch ensembles.

A score CSV (``results/scores/<fold>/<machine>/<system>[@<scorer>].csv``, see ``asd.scoring.scorers``) holds one
row per test clip and one
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

from asd.scoring.bank import build_bank
from asd.scoring.decision import decide, gamma_threshold
from asd.scoring.ensemble import fuse_epochs
from asd.store import ROW_COLUMNS, load_embeddings, order_score_table
from asd.errors import AsdError
from asd.io import write_csv, write_json
from asd.scoring.scorers import run_scorer

log = logging.getLogger(__name__)


def write_bank(*, embeddings_path: str, out_path: str, machine: str, kind_override: str | None,
               use_supplemental: bool) -> None:
    _write_bank(load_embeddings(embeddings_path), embeddings_path=embeddings_path, out_path=out_path,
                machine=machine, kind_override=kind_override, use_supplemental=use_supplemental)


def _write_bank(loaded: tuple, *, embeddings_path: str, out_path: str, machine: str, kind_override: str | None,
                use_supplemental: bool) -> None:
    embeddings, spectrum, manifest, attrs = loaded
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


PAPER_SCORER = {"method": "knn"}  # k, banks and normalisation from the scoring section


def score_epoch(*, embeddings_path: str, bank_path: str, out_path: str, machine: str, scoring: dict,
                decision: dict) -> None:
    """One system's scores with the paper's scorer (the ``scoring`` section's KNN)."""
    _score_system(load_embeddings(embeddings_path), bank_path=bank_path, out_paths={"knn": out_path},
                  scorers={"knn": PAPER_SCORER}, machine=machine, scoring=scoring, decision=decision)


def _score_system(loaded: tuple, *, bank_path: str, out_paths: dict[str, str], scorers: dict[str, dict],
                  machine: str, scoring: dict, decision: dict) -> dict[str, float]:
    """Every scorer's score table of one system (its embeddings loaded once); seconds per scorer."""
    embeddings, _, manifest, attrs = loaded
    with open(bank_path) as f:
        members = json.load(f)["members"]
    rows = {d: _bank_rows(manifest, members[d], bank_path) for d in ("source", "target")}
    banks = {d: embeddings[r] for d, r in rows.items()}
    test = np.flatnonzero(manifest["split"].to_numpy() == "test")
    where = f"{machine} in {bank_path}"  # how scorer errors (empty bank, k too large) name the bank
    seconds = {}
    for scorer, spec in scorers.items():
        started = time.perf_counter()
        test_score, test_domains, loo = run_scorer(spec, banks, embeddings[test], scoring=scoring, name=where)
        # Bank rows in the order the scorer's leave-one-out scores come: per bank domain ("all" = both banks).
        order = {**rows, "all": np.concatenate([rows["source"], rows["target"]])}
        bank_index = np.concatenate([order[d] for d in loo])
        bank_score = np.concatenate(list(loo.values()))
        threshold = gamma_threshold(bank_score, decision["quantile"],
                                    name=f"{machine} epoch {attrs['epoch']}, scorer {scorer}")
        table = pd.concat([
            manifest.loc[test, ROW_COLUMNS].assign(role="test", score=test_score,
                                                   **{f"score_{d}": v for d, v in test_domains.items()}),
            manifest.loc[bank_index, ROW_COLUMNS].assign(role="bank", score=bank_score),
        ], ignore_index=True)
        table["decision"] = decide(table["score"].to_numpy(), threshold)
        write_csv(out_paths[scorer], order_score_table(table))
        seconds[scorer] = time.perf_counter() - started
        log.info("%s epoch %s, scorer %s: %d test clips scored against the %s banks, threshold %.4f, %d flagged "
                 "(%.3f s)", machine, attrs["epoch"], scorer, len(test), "/".join(d for d in rows if len(rows[d])),
                 threshold, int(table.loc[table.role == "test", "decision"].sum()), seconds[scorer])
    return seconds


def score_machine(*, systems: list[str], embedding_paths: list[str], bank_paths: list[str], score_paths: list[str],
                  scorers: dict[str, dict], ensembles: dict[str, list[int]], ensemble_paths: list[str], machine: str,
                  kind_override: str | None, use_supplemental: bool, scoring: dict, decision: dict) -> None:
    """All scoring of one machine type in one job: per system (the frozen baseline, each epoch) its bank and
    every scorer's scores (embeddings read once), then every ensemble of epochs, per scorer.

    ``score_paths``: [scorers x systems], scorer-major; ``ensemble_paths``: [scorers x ensembles]."""
    started = time.perf_counter()
    names = list(scorers)
    seconds = dict.fromkeys(names, 0.0)
    paths = {(scorer, system): path for (scorer, system), path in
             zip(((sc, sy) for sc in names for sy in systems), score_paths, strict=True)}
    for system, embeddings_path, bank_path in zip(systems, embedding_paths, bank_paths, strict=True):
        loaded = load_embeddings(embeddings_path)
        _write_bank(loaded, embeddings_path=embeddings_path, out_path=bank_path, machine=machine,
                    kind_override=kind_override, use_supplemental=use_supplemental)
        spent = _score_system(loaded, bank_path=bank_path, out_paths={sc: paths[sc, system] for sc in names},
                              scorers=scorers, machine=machine, scoring=scoring, decision=decision)
        seconds = {sc: seconds[sc] + spent[sc] for sc in names}
    fused_paths = iter(ensemble_paths)
    for scorer in names:
        for name, fused in ensembles.items():
            fuse_epochs(score_paths=[paths[scorer, f"epoch_{e}"] for e in fused], epochs=list(fused),
                        out_path=next(fused_paths), machine=machine, decision=decision)
    log.info("%s: %d systems x %d scorers and %d ensembles scored in %.2f s; scorer time: %s", machine, len(systems),
             len(names), len(ensembles) * len(names), time.perf_counter() - started,
             ", ".join(f"{sc} {t:.3f} s" for sc, t in seconds.items()))
