"""Run the real workflow (the tiny test overlay) in a scratch directory, for the workflow tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
OVERLAYS = [str(REPO / "config" / "demo.yaml"), str(REPO / "tests" / "config" / "ci.yaml")]
# How outputs abbreviate the shipped demo backbone's digest (`make pretrain` rewrites the file and its digest).
DEMO_BACKBONE_SHA = (REPO / "models" / "demo_backbone.pt.sha256").read_text().split()[0][:12]


def snakemake_command(workdir: Path, *args: str, cores: int = 2) -> list[str]:
    return [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", str(cores),
            "--configfile", *OVERLAYS, "--quiet", "rules", *args]


def run_workflow(workdir: Path, *args: str, check: bool = True, env: dict | None = None,
                 timeout: int = 900) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(snakemake_command(workdir, *args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def result_files(workdir: Path, *patterns: str) -> dict[str, bytes]:
    """Relative path -> bytes of every file matching the patterns under workdir/results."""
    files = {}
    for pattern in patterns:
        for path in sorted((workdir / "results").glob(pattern)):
            files[str(path.relative_to(workdir))] = path.read_bytes()
    return files


COMPARED = ["scores/**/*.csv", "tables/**/*.csv", "tables/**/*.md", "banks/**/*.json", "metrics/**/*.json"]


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> number of jobs `snakemake -n` plans (the "Job stats" table); {} when nothing is to be done."""
    out = run_workflow(workdir, "-n", *args).stdout
    if "Job stats:" not in out:
        return {}
    table = out.split("Job stats:")[1].split("total")[0].splitlines()[3:]
    return {rule: int(count) for rule, count in (line.split() for line in table if line.strip())}


def planned_outputs(workdir: Path, *args: str) -> set[str]:
    """Every output file of the jobs `snakemake -n` plans."""
    command = [a for a in snakemake_command(workdir, "-n", *args) if a not in ("--quiet", "rules")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout
    return {path for line in out.splitlines() if line.strip().startswith("output:")
            for path in line.split(":", 1)[1].replace(",", " ").split()}
