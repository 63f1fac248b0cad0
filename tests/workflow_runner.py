"""Run the real workflow (the tiny test overlay) in a scratch directory, for the workflow tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
OVERLAYS = [str(REPO / "config" / "demo.yaml"), str(REPO / "tests" / "config" / "ci.yaml")]


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
