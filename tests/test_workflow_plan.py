"""What the full configuration plans (`snakemake -n`, no job runs): a few dozen well-sized jobs, few on GPUs,
fewer still submitted to SLURM; GPU rules that request no GPU when train.device is cpu."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from workflow_runner import REPO, SNAKEMAKE

RULE = re.compile(r"^(?:local)?rule (\w+):$", re.M)
# The light rules common.smk declares local (they run on the submit host under a cluster profile).
LOCAL_RULES = set(re.search(r"^localrules:\n((?:    \w+,\n)+)", (REPO / "workflow/rules/common.smk").read_text(),
                            re.M).group(1).replace(",", "").split())


@pytest.fixture(scope="module")
def full_data(tmp_path_factory) -> Path:
    """config.yaml's 15 machine types as folders with one (empty) clip per split: enough to plan, nothing to run."""
    root = tmp_path_factory.mktemp("full")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for dataset, spec in config["datasets"].items():
        for machine in spec["machine_types"]:
            for split in ("train", "test"):
                (root / dataset / machine / split).mkdir(parents=True)
                (root / dataset / machine / split / "section_00_0000.wav").touch()
    (root / "overlay.yaml").write_text(yaml.safe_dump({"datasets": {d: {"root": str(root / d)} for d in config["datasets"]}}))
    return root


def plan(workdir: Path, *args: str) -> str:
    """stdout + stderr of `snakemake -n` on the overlay in workdir."""
    proc = subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "-n",
                           "--configfile", str(workdir / "overlay.yaml"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_full_config_plans_a_few_dozen_jobs_and_few_gpu_jobs(full_data):
    out = plan(full_data, "--cores", "8")
    jobs = RULE.findall(out)
    gpu_jobs = re.findall(r"resources: .*\bgpu=1\b", out)
    assert len(jobs) <= 60 and len(gpu_jobs) <= 20, (len(jobs), len(gpu_jobs))
    counts = {rule: jobs.count(rule) for rule in set(jobs)}
    # one feature, embedding and scoring job per machine type; one training job per fold
    assert counts["features"] == counts["embed"] == counts["score"] == 15 and counts["train"] == 2
    assert len(gpu_jobs) == counts["train"] + counts["embed"] == 17


def test_full_config_under_the_slurm_profile_submits_at_most_40_jobs(full_data):
    jobs = RULE.findall(plan(full_data, "--profile", str(REPO / "slurm")))
    submitted = [rule for rule in jobs if rule not in LOCAL_RULES]
    # the light rules (scoring included) and the download (it needs the internet) run on the submit host
    assert {"download", "score", "evaluate", "submission"} <= LOCAL_RULES
    assert sorted(set(submitted)) == ["embed", "features", "train"] and len(submitted) == 32


ONE_GPU = "GPU jobs run one at a time (--resources gpu=1)"


def test_a_workstation_runs_one_gpu_job_at_a_time_unless_told_otherwise(full_data):
    assert ONE_GPU in plan(full_data, "--cores", "8")
    assert ONE_GPU not in plan(full_data, "--cores", "8", "--resources", "gpu=2")
    assert ONE_GPU not in plan(full_data, "--profile", str(REPO / "slurm"))  # the cluster shares its GPUs


def test_cpu_device_requests_no_gpu(full_data, tmp_path):
    overlay = yaml.safe_load((full_data / "overlay.yaml").read_text()) | {"train": {"device": "cpu"}}
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    out = plan(tmp_path, "--cores", "8")
    assert "rule train:" in out and not re.findall(r"\bgpu=[1-9]", out) and ONE_GPU not in out
