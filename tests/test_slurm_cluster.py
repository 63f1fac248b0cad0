"""Real SLURM jobs on a private local cluster: plain sbatch, accounting, and Snakemake through slurm/config.yaml."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_cluster import REPO, LocalSlurm, write_test_profile

pytestmark = pytest.mark.slurm

TINY_SNAKEFILE = """\
rule all:
    input: "model.txt"

rule prepare:
    output: "data.txt"
    resources: gpu=0
    shell: "echo prepared > {output}"

rule train:
    input: "data.txt"
    output: "model.txt"
    resources: gpu=1
    shell: "cat {input} > {output}; echo job=$SLURM_JOB_ID >> {output}"
"""


@pytest.fixture(scope="module")
def cluster():
    started = time.monotonic()
    with LocalSlurm() as local:
        print(f"\nlocal SLURM cluster up in {time.monotonic() - started:.1f} s")
        yield local


def test_sbatch_job_is_accounted_and_unknown_accounts_are_refused(cluster: LocalSlurm, tmp_path: Path) -> None:
    out = tmp_path / "hi.out"
    submitted = cluster.run(["sbatch", "--parsable", "-A", cluster.account, "-o", str(out), "--wrap", "echo hi"])
    job_id = submitted.stdout.strip().split(";")[0]
    assert cluster.wait_for_job(job_id, timeout_s=60) == "COMPLETED"
    assert out.read_text() == "hi\n"
    account = cluster.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "Account"]).stdout.strip()
    assert account == cluster.account

    refused = cluster.run(["sbatch", "-A", "no_such_account", "--wrap", "true"], check=False)
    assert refused.returncode != 0 and "Invalid account" in refused.stderr


def test_snakemake_runs_dependent_rules_as_slurm_jobs_through_the_profile(cluster: LocalSlurm, tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(TINY_SNAKEFILE)
    profile = write_test_profile(
        source=REPO / "slurm",
        dest=tmp_path / "profile",
        cluster=cluster,
        # Poll every second instead of after 40 s, and keep the sbatch logs to inspect them.
        settings={"jobs": 2, "retries": 0, "latency-wait": 5, "seconds-between-status-checks": 1,
                  "slurm-init-seconds-before-status-checks": 1, "slurm-keep-successful-logs": True},
    )
    started = time.monotonic()
    run = _snakemake(["--profile", str(profile)], cwd=tmp_path, cluster=cluster)
    print(f"\ntiny two-rule workflow via SLURM in {time.monotonic() - started:.1f} s")
    assert run.returncode == 0, f"{run.stderr[-6000:]}\n{_sbatch_logs(tmp_path)}\n{cluster.log_tails()}"

    # One sbatch log per rule, named by its SLURM job id; both jobs completed in the accounting.
    job_ids = {}
    for rule in ("prepare", "train"):
        logs = list((tmp_path / "slurm-logs" / f"rule_{rule}").glob("*.log"))
        assert len(logs) == 1, f"rule {rule}: sbatch logs {logs}"
        job_ids[rule] = logs[0].stem
    sacct = ["sacct", "-X", "-n", "-P", "-o", "State,Account,Partition,AllocTRES", "-j"]
    accounting = {rule: cluster.run([*sacct, job_id]).stdout.strip() for rule, job_id in job_ids.items()}
    for rule, row in accounting.items():
        state, account, partition, _ = row.split("|")
        assert (state, account, partition) == ("COMPLETED", cluster.account, cluster.partition), (rule, row)
    # gpu=1 became `sbatch --gpus=1` (the profile's train entry); gpu=0 requested none.
    assert "gres/gpu=1" in accounting["train"]
    assert "gres/gpu" not in accounting["prepare"]
    assert (tmp_path / "data.txt").read_text() == "prepared\n"
    assert (tmp_path / "model.txt").read_text() == f"prepared\njob={job_ids['train']}\n"


def test_untouched_profile_stops_at_the_account_placeholder_before_submitting(cluster: LocalSlurm, tmp_path: Path) -> None:
    """slurm/config.yaml as shipped: the plugin rejects slurm_account CHANGE_ME and lists the real accounts."""
    (tmp_path / "Snakefile").write_text(TINY_SNAKEFILE)
    jobs_before = cluster.run(["sacct", "-X", "-n", "-o", "JobID"]).stdout.split()
    # A flag on the command line replaces only that key of the profile; 1 s instead of the
    # profile's 40 s initial status wait, which Snakemake also sits out before exiting.
    run = _snakemake(["--profile", str(REPO / "slurm"), "--slurm-init-seconds-before-status-checks", "1"],
                     cwd=tmp_path, cluster=cluster)
    assert run.returncode != 0
    assert "The given account CHANGE_ME appears to be invalid" in run.stderr, run.stderr[-4000:]
    assert cluster.account in run.stderr.split("Available accounts:")[1]
    assert cluster.run(["sacct", "-X", "-n", "-o", "JobID"]).stdout.split() == jobs_before
    assert not (tmp_path / "data.txt").exists()


def _snakemake(args: list[str], *, cwd: Path, cluster: LocalSlurm, timeout_s: float = 240.0) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=cluster.env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as error:  # its captured output is bytes, whatever text=True says
        stderr = (error.stderr or b"").decode(errors="replace")[-6000:]
        pytest.fail(f"snakemake did not finish in {timeout_s:.0f} s:\n{stderr}\n{_sbatch_logs(cwd)}\n{cluster.log_tails()}")


def _sbatch_logs(workdir: Path) -> str:
    """The jobs' own output (the sbatch --output files), where a failing rule explains itself."""
    logs = sorted((workdir / "slurm-logs").rglob("*.log"))
    return "\n".join(f"--- {log.relative_to(workdir)} ---\n{log.read_text(errors='replace')[-3000:]}" for log in logs)
