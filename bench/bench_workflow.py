"""Benchmark: Snakemake workflow overhead, ``snakemake -n`` (dry run) on the full-size config.

config.yaml alone is the full size (2 folds, 15 machine types, 30 epochs, ~1,000 jobs). Its data
roots need not exist: only the ``index`` job reads them, at run time, so a dry run plans the whole
DAG without data. It runs with ``--directory`` in a temporary folder, so the repository's
.snakemake/ and results/ are never touched. Target: under 10 s wall time.

    .venv/bin/python bench/bench_workflow.py [--rounds 3] [--out results/bench/workflow.json]
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, standalone, target

WALL_TARGET_S = 10.0


def dry_run(workdir: Path) -> dict:
    """One ``snakemake -n`` on config.yaml: wall time, CPU time of the child, and the planned jobs."""
    snakemake = Path(sys.executable).with_name("snakemake")
    command = [str(snakemake), "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode:
        raise RuntimeError(f"snakemake -n failed (exit {completed.returncode}):\n{completed.stderr[-2000:]}")
    output = completed.stdout + completed.stderr
    total = re.search(r"^total\s+(\d+)$", output, flags=re.MULTILINE)
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", output.split("Job stats:", 1)[1], flags=re.MULTILINE)) if "Job stats:" in output else {}
    return {"wall_s": wall, "cpu_s": (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime),
            "total_jobs": int(total[1]) if total else None, "jobs": {k: int(v) for k, v in jobs.items() if k != "total"}}


def run(*, rounds: int = 3) -> dict:
    with tempfile.TemporaryDirectory(prefix="asd-bench-workflow-") as tmp:
        runs = [dry_run(Path(tmp)) for _ in range(rounds)]
    best = min(runs, key=lambda r: r["wall_s"])
    return {
        "machine": machine(),
        "setup": {"config": "config.yaml (no overlay)", "rounds": rounds},
        "best_wall_s": best["wall_s"],
        "best_cpu_s": min(r["cpu_s"] for r in runs),
        "wall_s": [r["wall_s"] for r in runs],
        "total_jobs": best["total_jobs"],
        "jobs": best["jobs"],
        "targets": [target("snakemake -n on the full-size config", best["wall_s"], WALL_TARGET_S, unit="s",
                           higher_is_better=False)],
    }


def markdown(result: dict) -> str:
    jobs = ", ".join(f"{name} {count}" for name, count in result["jobs"].items())
    return "\n".join([
        "### Workflow overhead (`snakemake -n`, config.yaml: 2 folds, 15 machine types, 30 epochs)",
        "",
        f"Best of {result['setup']['rounds']}: {result['best_wall_s']:.2f} s wall, {result['best_cpu_s']:.2f} s CPU, "
        f"planning {result['total_jobs']} jobs ({jobs}). The dataset roots do not exist: a dry run needs no data.",
    ])


if __name__ == "__main__":
    standalone(name="workflow", doc=__doc__, run=run, markdown=markdown, options={"rounds": 3})
