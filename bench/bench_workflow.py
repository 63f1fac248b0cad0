"""Benchmark: what the full-size config plans, and how long planning it takes (``snakemake -n``).

config.yaml alone is the full size (2 folds, 15 machine types, 30 epochs). The ``features`` rule lists
a machine type's WAV files as its inputs, and a missing dataset root plans a ``download`` checkpoint
instead, so the dry run needs the data's layout: it plans against a temporary tree holding one empty
WAV per split of config.yaml's 15 machine types (an overlay points the dataset roots there; nothing
is read, nothing runs). Everything happens under a temporary ``--directory``, so the repository's
.snakemake/ and results/ are never touched.

Reported against the project's limits: jobs planned (≤ 60), jobs requesting a GPU (``gpu=1`` in the
dry run's resources lines, ≤ 20), sbatch submissions under ``--profile slurm`` (≤ 40: jobs of the
rules not declared ``localrules`` in workflow/rules/common.smk, a group job counting once) and the
wall time of the dry run (< 10 s, best of --rounds).

    .venv/bin/python bench/bench_workflow.py [--rounds 3] [--out results/bench/workflow.json]
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from pathlib import Path

import yaml

from common import REPO, machine, run_snakemake, standalone, target

WALL_TARGET_S = 10.0
JOBS_LIMIT = 60
GPU_JOBS_LIMIT = 20
SBATCH_LIMIT = 40

# One job of the dry run: "rule X:" or "localrule X:" at the line start; jobs inside a group job are indented.
JOB = re.compile(r"^(\s*)(?:local)?rule (\w+):$", re.MULTILINE)
GPU_JOB = re.compile(r"^\s*resources: .*\bgpu=1\b", re.MULTILINE)
GROUP_JOB = re.compile(r"\bGroup job (\w+)\b")


def local_rules() -> set[str]:
    """The rules workflow/rules/common.smk declares ``localrules:`` (run on the submit host under a cluster profile)."""
    text = (REPO / "workflow" / "rules" / "common.smk").read_text()
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?[ \t]*\n)+)", text, flags=re.MULTILINE)
    if block is None:
        raise RuntimeError("no 'localrules:' block found in workflow/rules/common.smk")
    return set(block[1].replace(",", " ").split())


def fake_data(root: Path) -> Path:
    """config.yaml's machine types as folders with one empty clip per split, and an overlay pointing there."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for dataset, spec in config["datasets"].items():
        for machine_type in spec["machine_types"]:
            for split in ("train", "test"):
                (root / "data" / dataset / machine_type / split).mkdir(parents=True)
                (root / "data" / dataset / machine_type / split / "section_00_0000.wav").touch()
    overlay = root / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"datasets": {d: {"root": str(root / "data" / d)} for d in config["datasets"]}}))
    return overlay


def dry_run(workdir: Path, overlay: Path, *args: str) -> dict:
    """One ``snakemake -n`` on config.yaml + the overlay: wall time, CPU time of the child, and the planned jobs."""
    output, wall, cpu = run_snakemake("-n", "--directory", str(workdir), "--configfile", str(overlay), *args)
    jobs = JOB.findall(output)
    return {"wall_s": wall, "cpu_s": cpu,
            "jobs": dict(Counter(rule for _, rule in jobs)),
            "top_level": dict(Counter(rule for indent, rule in jobs if not indent)),
            "gpu_jobs": len(GPU_JOB.findall(output)), "groups": dict(Counter(GROUP_JOB.findall(output))),
            "downloads_planned": "download" in {rule for _, rule in jobs}}


def run(*, rounds: int = 3) -> dict:
    with tempfile.TemporaryDirectory(prefix="asd-bench-workflow-") as tmp:
        overlay = fake_data(Path(tmp))
        (Path(tmp) / "work").mkdir()
        runs = [dry_run(Path(tmp) / "work", overlay, "--cores", "2") for _ in range(rounds)]
        slurm = dry_run(Path(tmp) / "work", overlay, "--profile", str(REPO / "slurm"))
    best = min(runs, key=lambda r: r["wall_s"])
    local = local_rules()
    # sbatch jobs: every top-level job of a non-local rule (jobs inside a group are indented), plus one per group job
    submitted = {rule: n for rule, n in slurm["top_level"].items() if rule not in local}
    sbatch = sum(submitted.values()) + sum(slurm["groups"].values())
    total_jobs = sum(best["jobs"].values())
    return {
        "machine": machine(),
        "setup": {"config": "config.yaml + overlay: dataset roots -> temporary tree of empty WAVs (15 machine types)",
                  "rounds": rounds},
        "best_wall_s": best["wall_s"],
        "best_cpu_s": min(r["cpu_s"] for r in runs),
        "wall_s": [r["wall_s"] for r in runs],
        "total_jobs": total_jobs,
        "jobs": best["jobs"],
        "gpu_jobs": best["gpu_jobs"],
        "downloads_planned": best["downloads_planned"],
        "slurm": {"wall_s": slurm["wall_s"], "sbatch_jobs": sbatch, "submitted_by_rule": submitted,
                  "group_jobs": slurm["groups"], "local_rules": sorted(local),
                  "local_jobs": sum(n for rule, n in slurm["top_level"].items() if rule in local)},
        "targets": [
            target("jobs planned, full config", total_jobs, JOBS_LIMIT, unit="", higher_is_better=False, at_most=True),
            target("GPU jobs planned, full config", best["gpu_jobs"], GPU_JOBS_LIMIT, unit="", higher_is_better=False,
                   at_most=True),
            target("sbatch submissions, full config, --profile slurm", sbatch, SBATCH_LIMIT, unit="",
                   higher_is_better=False, at_most=True),
            target("snakemake -n on the full-size config", best["wall_s"], WALL_TARGET_S, unit="s", higher_is_better=False),
        ],
    }


def markdown(result: dict) -> str:
    jobs = ", ".join(f"{name} {count}" for name, count in result["jobs"].items())
    slurm = result["slurm"]
    submitted = ", ".join(f"{name} {count}" for name, count in slurm["submitted_by_rule"].items())
    groups = ", ".join(f"{count} × group '{name}'" for name, count in slurm["group_jobs"].items()) or "no group jobs"
    return "\n".join([
        "### Workflow plan (`snakemake -n`, config.yaml: 2 folds, 15 machine types, 30 epochs)",
        "",
        "| | measured | limit |",
        "| --- | ---: | ---: |",
        f"| jobs planned (`--cores 2`) | {result['total_jobs']} | ≤ {JOBS_LIMIT} |",
        f"| jobs requesting a GPU (`gpu=1`) | {result['gpu_jobs']} | ≤ {GPU_JOBS_LIMIT} |",
        f"| sbatch submissions (`--profile slurm`) | {slurm['sbatch_jobs']} | ≤ {SBATCH_LIMIT} |",
        f"| dry-run wall time, best of {result['setup']['rounds']} | {result['best_wall_s']:.2f} s | < {WALL_TARGET_S:g} s |",
        "",
        f"Jobs: {jobs}. Under the SLURM profile: {submitted} and {groups} go to sbatch; "
        f"{slurm['local_jobs']} jobs of local rules ({', '.join(slurm['local_rules'])}) run on the submit host "
        f"(dry run {slurm['wall_s']:.2f} s). Dry-run CPU time {result['best_cpu_s']:.2f} s. Planned against a temporary tree "
        f"of empty WAVs at the 15 machine types' paths"
        + (" (a download checkpoint was planned: the tree was not found)." if result["downloads_planned"] else "."),
    ])


if __name__ == "__main__":
    standalone(name="workflow", doc=__doc__, run=run, markdown=markdown, options={"rounds": 3})
