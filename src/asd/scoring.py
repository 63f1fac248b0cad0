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

import numpy as np
import pandas as pd

from asd.bank import build_bank
from asd.decision import decide, gamma_threshold
from asd.embed import load_embeddings
from asd.ensemble import fuse
from asd.errors import AsdError
from asd.io import write_csv, write_json
from asd.knn import DomainNormaliser, leave_one_out_scores, score_domains

log = logging.getLogger(__name__)
ROW_COLUMNS = ["split", "file", "domain", "label", "attributes"]


def write_bank(*, embeddings_path: str, out_path: str, machine: str, kind_override: str | None,
               use_supplemental: bool) -> None:
    embeddings, energy, manifest, attrs = load_embeddings(embeddings_path)
    bank = build_bank(manifest, embeddings, name=machine, kind_override=kind_override,
                      use_supplemental=use_supplemental, energy=energy)
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
        raise AsdError(f"{bank_path} lists clips {missing[:3]} that the embeddings do not hold; rerun the "
                       f"'bank' rule (snakemake --forcerun bank {bank_path}).")
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
    normaliser = DomainNormaliser.fit(banks, k, name=machine) if scoring["domain_normalisation"] else None
    test = np.flatnonzero(manifest["split"].to_numpy() == "test")
    test_score, test_domains = score_domains(embeddings[test], banks, k, name=machine, normaliser=normaliser)
    loo = leave_one_out_scores(banks, k, name=machine, normaliser=normaliser)
    bank_index = np.concatenate([rows[d] for d in loo])
    bank_score = np.concatenate(list(loo.values()))
    threshold = gamma_threshold(bank_score, decision["quantile"], name=f"{machine} epoch {attrs['epoch']}")
    table = pd.concat([
        manifest.loc[test, ROW_COLUMNS].assign(role="test", score=test_score,
                                               **{f"score_{d}": v for d, v in test_domains.items()}),
        manifest.loc[bank_index, ROW_COLUMNS].assign(role="bank", score=bank_score),
    ], ignore_index=True)
    table["decision"] = decide(table["score"].to_numpy(), threshold)
    write_csv(out_path, _ordered(table))
    log.info("%s epoch %s: %d test clips scored against %s banks (k=%d), threshold %.4f, %d flagged",
             machine, attrs["epoch"], len(test), "/".join(banks), k, threshold,
             int(table.loc[table.role == "test", "decision"].sum()))


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    first = ["role"] + ROW_COLUMNS + ["score", "decision"]
    table = table[first + [c for c in table.columns if c not in first]]
    return table.sort_values(["role", "split", "file"], ascending=[False, True, True], ignore_index=True)


def read_scores(path: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={"attributes": str, "file": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as err:
        raise AsdError(f"score file {path} cannot be read ({err}); delete it and rerun the rule that wrote it.") from None


def fuse_epochs(*, score_paths: list[str], epochs: list[int], out_path: str, machine: str, decision: dict) -> None:
    """Ensemble: z-normalise each epoch with its bank (training) leave-one-out scores, average, decide."""
    tables = {epoch: read_scores(path).set_index(["role", "split", "file"]) for epoch, path in zip(epochs, score_paths)}
    tests = [t.xs("test", level="role", drop_level=False).index for t in tables.values()]
    if any(not idx.equals(tests[0]) for idx in tests):
        raise AsdError(f"{machine}: epochs {epochs} scored different test clips ({score_paths}); rerun 'knn'.")
    # The automatic noise test may admit different supplemental clips at different epochs: fuse the
    # bank clips every epoch shares, so each epoch's normalisation uses the same training clips.
    bank = sorted(set.intersection(*(set(t.xs("bank", level="role", drop_level=False).index) for t in tables.values())))
    keys = list(tests[0]) + bank
    fused_test, fused_bank = fuse({e: t.loc[tests[0], "score"].to_numpy() for e, t in tables.items()},
                                  {e: t.loc[bank, "score"].to_numpy() for e, t in tables.items()},
                                  epochs, name=machine)
    out = tables[epochs[0]].loc[keys, ROW_COLUMNS[2:]].reset_index()
    out["score"] = np.concatenate([fused_test, fused_bank])
    threshold = gamma_threshold(fused_bank, decision["quantile"], name=f"{machine} ensemble {epochs}")
    out["decision"] = decide(out["score"].to_numpy(), threshold)
    write_csv(out_path, _ordered(out))
    log.info("%s: fused epochs %s, threshold %.4f", machine, epochs, threshold)
