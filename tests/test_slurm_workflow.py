"""The demo workflow (tiny test overlay) through `--profile slurm` on a real one-node SLURM cluster:
every job is a SLURM job, and the results equal a local run's."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from slurm_cluster import REPO, LocalSlurm, write_test_profile
from workflow_runner import COMPARED, OVERLAYS, result_files

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_demo_workflow_through_slurm_profile_equals_local_run(reference_run, tmp_path):
    with LocalSlurm() as cluster:
        # The repository's profile, pointed at the local cluster's account and partition; fast polling.
        profile = write_test_profile(source=REPO / "slurm", dest=tmp_path / "profile", cluster=cluster,
                                     settings={"jobs": 4, "retries": 0, "latency-wait": 5,
                                               "seconds-between-status-checks": 1,
                                               "slurm-init-seconds-before-status-checks": 1,
                                               "slurm-keep-successful-logs": True})
        workdir = tmp_path / "run"
        workdir.mkdir()
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                               "--cores", "8", "--profile", str(profile), "--configfile", *OVERLAYS],
                              cwd=workdir, env=cluster.env, capture_output=True, text=True, timeout=1500)
        print(f"\nworkflow via SLURM in {time.monotonic() - started:.0f} s")
        assert proc.returncode == 0, f"{proc.stderr[-6000:]}\n{cluster.log_tails()}"
        sbatch_logs = {log.stem: log for log in (workdir / "slurm-logs").rglob("*.log")}
        accounted = cluster.run(["sacct", "-X", "-n", "-P", "-o", "JobID,JobName,State"]).stdout.split()
    # The heavy rules ran as sbatch jobs and completed; the light ones (demo data, scoring, evaluation,
    # plots, submission) ran on the submit host.
    submitted = [log.relative_to(workdir / "slurm-logs").parts[0] for log in sbatch_logs.values()]
    assert sorted(set(submitted)) == ["rule_embed", "rule_features", "rule_train"]
    assert len(submitted) == 3 + 2 + 3  # features, train, embed
    completed = {row.split("|")[0] for row in accounted if row.split("|")[2] == "COMPLETED"}
    assert set(sbatch_logs) <= completed, "every job id in the logs is COMPLETED in sacct"
    local_log = (workdir / "results" / "logs" / "train" / "dev.log").read_text()
    assert "epoch 2:" in local_log
    local, remote = result_files(reference_run, *COMPARED), result_files(workdir, *COMPARED)
    assert local.keys() == remote.keys()
    assert [k for k in local if local[k] != remote[k]] == []
