"""Run every benchmark; write results/bench/<name>.json and results/bench/summary.md (`make bench`).

    .venv/bin/python bench/run_all.py [--quick] [--only backbone train ...]

``--quick`` uses smaller batches and fewer rounds and skips the 1,000,000-row KNN case (minutes).
``end_to_end`` runs the whole demo (`make demo`'s command) in a temporary directory: 1–6 minutes,
depending on the machine's load. A full run of everything has a target of its own: under 15 minutes
on 2 cores (bf16 variants are skipped on a CPU without native bf16, where they would only be emulated).
"""

from __future__ import annotations

import argparse
import os
import time

import bench_backbone
import bench_end_to_end
import bench_features
import bench_knn
import bench_train
import bench_workflow
from asd.io import write_json, write_text
from common import RESULTS, machine, target

# name -> (module, settings for a full run, settings for --quick)
BENCHMARKS = {
    "workflow": (bench_workflow, {"rounds": 3}, {"rounds": 2}),
    "backbone": (bench_backbone, {"batch": 4, "rounds": 6}, {"batch": 2, "rounds": 4}),
    "train": (bench_train, {"batch": 8, "rounds": 5}, {"batch": 4, "rounds": 3}),
    "features": (bench_features, {"clips": 64, "batch": 8, "rounds": 3}, {"clips": 16, "batch": 4, "rounds": 2}),
    "knn": (bench_knn, {"quick": False}, {"quick": True}),
    "end_to_end": (bench_end_to_end, {"rounds": 3}, {"rounds": 3}),
}
FULL_RUN_TARGET_MIN = 15.0  # every benchmark, full settings, 2 cores


def verdict(row: dict) -> str:
    return row["no_verdict"] if row["met"] is None else ("yes" if row["met"] else "**no**")


def summary(results: dict[str, dict], *, started: dict, minutes: dict[str, float], quick: bool) -> str:
    rows = [row for result in results.values() for row in result["targets"]]
    total = sum(minutes.values())
    if not quick and len(results) == len(BENCHMARKS):
        rows.append(target(f"`make bench` wall time, all benchmarks, {started['cpu_count']} cores", total,
                           FULL_RUN_TARGET_MIN, unit="min", higher_is_better=False))
    bf16 = "yes" if started["native_bf16"] else "no, bf16 variants skipped"
    lines = [
        "# Benchmarks",
        "",
        f"CPU: {started['cpu']}, native bf16: {bf16} (AVX512-BF16 {started['avx512_bf16']}, AMX {started['amx_bf16']}); "
        f"{started['cpu_count']} cores, torch {started['torch']} ({started['torch_threads']} threads). Load average "
        f"(1/5/15 min) at start {started['load_average_1_5_15']}, at end {list(round(x, 2) for x in os.getloadavg())}; "
        f"{'quick' if quick else 'full'} run, {total:.1f} min ("
        + ", ".join(f"{name} {spent:.1f}" for name, spent in minutes.items()) + ").",
        "",
        "| target | measured | goal | met |",
        "| --- | ---: | ---: | --- |",
        *[f"| {row['what']} | {row['measured']} | {row['target']} | {verdict(row)} |" for row in rows],
        "",
        "Load caveat: this machine is shared with other jobs. Each figure is a ratio of timings taken in "
        "the same run, interleaved round by round, best round kept, so background load cancels to first "
        "order; absolute seconds and GFLOP/s are lower than on an idle machine. A model step (hundreds of "
        "ops, each waiting for both cores) suffers more from a competing process than one long matmul, "
        "so under load the fractions of peak err low.",
    ]
    modules = {name: module for name, (module, _, _) in BENCHMARKS.items()}
    for name, result in results.items():
        lines += ["", modules[name].markdown(result)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes; skip the 1,000,000-row KNN case")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    args = parser.parse_args()
    started = machine()
    results, minutes = {}, {}
    for name, (module, full, quick) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        results[name] = module.run(**(quick if args.quick else full))
        minutes[name] = (time.perf_counter() - start) / 60
        write_json(RESULTS / f"{name}.json", results[name])
        print(module.markdown(results[name]), flush=True)
    text = summary(results, started=started, minutes=minutes, quick=args.quick)
    write_text(RESULTS / "summary.md", text)
    print(f"wrote {RESULTS}/summary.md")


if __name__ == "__main__":
    main()
