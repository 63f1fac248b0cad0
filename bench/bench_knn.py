"""Benchmark: asd.knn.CosineKNN vs sklearn brute-force cosine NearestNeighbors (k = 1).

Two sizes: the DCASE size (1,100 x 128 bank = 990 + 10 train + 100 supplemental, 200 test
queries; median of several repeats) and a large one (1,000,000 x 128 bank, 10,000 queries; one
run each, sklearn takes minutes). Checks that both return the same neighbours and distances,
prints a table and writes results/bench/knn.json.

    .venv/bin/python bench/bench_knn.py [--out results/bench/knn.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from asd.io import write_json
from asd.knn import CosineKNN

CASES = [
    {"name": "dcase", "bank": 1_100, "queries": 200, "repeats": 7},
    {"name": "large", "bank": 1_000_000, "queries": 10_000, "repeats": 1},
]
DIM, K = 128, 1


def timed(fn, repeats: int):
    """Median wall time over ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def run_case(case: dict, rng: np.random.Generator) -> dict:
    bank = rng.standard_normal((case["bank"], DIM), dtype=np.float32)
    queries = rng.standard_normal((case["queries"], DIM), dtype=np.float32)

    # Fit time counts on both sides: each normalises / validates the bank once.
    ours_s, (ours_dist, ours_idx) = timed(lambda: CosineKNN(name="bench").fit(bank).neighbours(queries, K), case["repeats"])
    sk_s, (sk_dist, sk_idx) = timed(
        lambda: NearestNeighbors(n_neighbors=K, metric="cosine", algorithm="brute").fit(bank).kneighbors(queries),
        case["repeats"],
    )
    same_index = ours_idx == sk_idx  # [Q, K]
    # A differing index is only acceptable as a float32 near-tie (equal distance within 1e-6).
    ties_only = bool(np.all(np.abs(ours_dist - sk_dist)[~same_index] <= 1e-6))
    return {
        "bank_rows": case["bank"],
        "queries": case["queries"],
        "dim": DIM,
        "k": K,
        "repeats": case["repeats"],
        "cosine_knn_s": ours_s,
        "sklearn_s": sk_s,
        "speedup": sk_s / ours_s,
        "same_neighbour_fraction": float(same_index.mean()),
        "max_abs_distance_diff": float(np.abs(ours_dist - sk_dist).max()),
        "identical": bool(same_index.all() or ties_only),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench/knn.json")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    results = {case["name"]: run_case(case, rng) for case in CASES}
    report = {
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "cases": results,
    }
    print(f"{'case':<6} {'bank':>9} {'queries':>7} {'CosineKNN s':>12} {'sklearn s':>10} {'speed-up':>9} {'identical':>9}")
    for name, row in results.items():
        print(
            f"{name:<6} {row['bank_rows']:>9} {row['queries']:>7} {row['cosine_knn_s']:>12.4f} "
            f"{row['sklearn_s']:>10.4f} {row['speedup']:>8.2f}x {str(row['identical']):>9}"
        )
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
