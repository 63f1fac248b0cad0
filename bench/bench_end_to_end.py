"""Benchmark: wall time of the demo (`make demo`), split by rule, from the rules' ``benchmark:`` TSVs.

Reads results/benchmarks/<rule>/**/*.tsv as a finished demo run left them (it does not run the
demo). Per rule: jobs, summed wall seconds, summed CPU seconds, the slowest job. The jobs ran up to
--cores at a time, so the sum over rules exceeds the demo's wall time; the span from the first
benchmarked job's start (file time minus its duration) to the last one's end bounds it from below.
Only the heavy rules (features, train, embed, knn) write a benchmark file.

    .venv/bin/python bench/bench_end_to_end.py [--benchmarks results/benchmarks] [--out results/bench/end_to_end.json]
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common import REPO, machine, standalone

BENCHMARKS = REPO / "results" / "benchmarks"


def run(*, benchmarks: Path = BENCHMARKS) -> dict:
    files = sorted(benchmarks.glob("*/**/*.tsv"))
    if not files:
        return {"machine": machine(), "found": False, "benchmarks": str(benchmarks), "targets": []}
    rows = []
    for path in files:
        table = pd.read_csv(path, sep="\t")
        end = path.stat().st_mtime  # Snakemake writes the file when the job ends
        rows.append({"rule": path.relative_to(benchmarks).parts[0], "job": str(path.relative_to(benchmarks)),
                     "wall_s": float(table["s"].iloc[-1]), "cpu_s": float(table["cpu_time"].iloc[-1]),
                     "start": end - float(table["s"].iloc[-1]), "end": end})
    jobs = pd.DataFrame(rows)
    by_rule = jobs.groupby("rule").agg(jobs=("job", "size"), wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"),
                                       slowest_s=("wall_s", "max")).sort_values("wall_s", ascending=False)
    total = float(by_rule["wall_s"].sum())
    by_rule["share"] = by_rule["wall_s"] / total
    return {
        "machine": machine(),
        "found": True,
        "benchmarks": str(benchmarks),
        "rules": by_rule.reset_index().to_dict(orient="records"),
        "summed_wall_s": total,
        "span_s": float(jobs["end"].max() - jobs["start"].min()),
        "jobs": len(jobs),
        "targets": [],
    }


def markdown(result: dict) -> str:
    title = "### End to end: the demo, split by rule (from results/benchmarks/*.tsv)"
    if not result["found"]:
        return f"{title}\n\nNo benchmark files under {result['benchmarks']}: no demo run's results are present (run `make demo` first)."
    lines = [title, "", "| rule | jobs | wall s (sum) | share | CPU s (sum) | slowest job s |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["rules"]:
        lines.append(f"| {row['rule']} | {row['jobs']} | {row['wall_s']:.1f} | {row['share'] * 100:.0f} % | "
                     f"{row['cpu_s']:.1f} | {row['slowest_s']:.1f} |")
    lines += ["", f"{result['jobs']} benchmarked jobs, {result['summed_wall_s']:.1f} s summed; first start to last end "
                  f"{result['span_s']:.1f} s (a lower bound on the demo's wall time; light rules write no benchmark file)."]
    return "\n".join(lines)


if __name__ == "__main__":
    standalone(name="end_to_end", doc=__doc__, run=run, markdown=markdown, options={"benchmarks": BENCHMARKS})
