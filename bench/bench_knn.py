"""Benchmark: asd.scoring.knn.CosineKNN (numpy, blocked matmul + per-block top-k) vs sklearn brute-force cosine NearestNeighbors (k = 1).

Two sizes: the DCASE size (1,100 x 128 bank = 990 + 10 train + 100 supplemental, 200 test
queries; best of 50 repeats) and a large one (1,000,000 x 128 bank, 10,000
queries; one run each, a few minutes each on the shared 2-core machine; ``--quick`` skips
it). Checks that both return the same neighbours and distances, prints a table and writes
results/bench/knn.json.

    .venv/bin/python bench/bench_knn.py [--quick] [--out results/bench/knn.json]
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.neighbors import NearestNeighbors

from asd.scoring.knn import CosineKNN
from common import interleaved, machine, standalone

CASES = [
    {"name": "dcase", "bank": 1_100, "queries": 200, "repeats": 50},
    {"name": "large", "bank": 1_000_000, "queries": 10_000, "repeats": 1},
]
DIM, K = 128, 1
BLOCKS = 5  # repeated cases are timed in this many blocks


def _compare(case: dict, ours: dict, theirs: dict) -> dict:
    (ours_dist, ours_idx), (sk_dist, sk_idx) = ours["result"], theirs["result"]
    same_index = ours_idx == sk_idx  # [Q, K]
    # A differing index is only acceptable as a float32 near-tie (equal distance within 1e-6).
    ties_only = bool(np.all(np.abs(ours_dist - sk_dist)[~same_index] <= 1e-6))
    return {
        "bank_rows": case["bank"],
        "queries": case["queries"],
        "dim": DIM,
        "k": K,
        "repeats": case["repeats"],
        "cosine_knn_s": ours["best_s"],
        "sklearn_s": theirs["best_s"],
        "speedup": theirs["best_s"] / ours["best_s"],
        "same_neighbour_fraction": float(same_index.mean()),
        "max_abs_distance_diff": float(np.abs(ours_dist - sk_dist).max()),
        "identical": bool(same_index.all() or ties_only),
    }


def _time(search, case: dict) -> dict:
    """Best wall time of ``search()`` and its last result. Repeats come in blocks 0.5 s apart: on the
    shared 2-core machine a millisecond call takes ~10 ms whenever another process holds a core
    (numpy's 2 OpenBLAS threads wait for a scheduler slice), and such phases last a block or more."""
    results, best = [], float("inf")
    for block in range(BLOCKS if case["repeats"] > 1 else 1):
        if block:
            time.sleep(0.5)
        timing = interleaved({"search": lambda: results.append(search())}, rounds=max(1, case["repeats"] // BLOCKS),
                             warmup=0 if case["repeats"] == 1 else 1)["search"]
        best = min(best, timing["best_s"])
    return {"best_s": best, "result": results[-1]}


def run(*, quick: bool = False) -> dict:
    rng = np.random.default_rng(0)
    cases = [case for case in CASES if not (quick and case["name"] == "large")]
    data = {case["name"]: (rng.standard_normal((case["bank"], DIM), dtype=np.float32),
                           rng.standard_normal((case["queries"], DIM), dtype=np.float32)) for case in cases}
    # Fit time counts on both sides: each normalises / validates the bank once. Every CosineKNN
    # timing comes first: once sklearn has run, its own OpenMP and scipy's OpenBLAS thread pools
    # (separate from numpy's OpenBLAS) compete for the 2 cores; the pipeline's knn jobs never import sklearn.
    ours, theirs = {}, {}
    for case in cases:
        bank, queries = data[case["name"]]
        ours[case["name"]] = _time(lambda: CosineKNN(name="bench").fit(bank).neighbours(queries, K), case)
    for case in cases:
        bank, queries = data[case["name"]]
        search = NearestNeighbors(n_neighbors=K, metric="cosine", algorithm="brute")
        theirs[case["name"]] = _time(lambda: search.fit(bank).kneighbors(queries), case)
    return {"machine": machine(), "targets": [],
            "cases": {case["name"]: _compare(case, ours[case["name"]], theirs[case["name"]]) for case in cases}}


def markdown(result: dict) -> str:
    lines = ["### KNN scoring (k = 1, 128-d, CosineKNN vs sklearn brute-force cosine)", "",
             "| case | bank rows | queries | CosineKNN s | sklearn s | speed-up | identical |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, row in result["cases"].items():
        lines.append(f"| {name} | {row['bank_rows']:,} | {row['queries']:,} | {row['cosine_knn_s']:.4f} | "
                     f"{row['sklearn_s']:.4f} | {row['speedup']:.2f}x | {row['identical']} |")
    if "large" not in result["cases"]:
        lines += ["", "The 1,000,000 x 128 case was skipped (--quick)."]
    return "\n".join(lines)


if __name__ == "__main__":
    standalone(name="knn", doc=__doc__, run=run, markdown=markdown, options={"quick": False})
