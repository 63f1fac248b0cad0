"""The embedded demo as `make demo` runs it (config/demo.yaml, the shipped demo backbone, the paper's recipe):
fine-tuning scores above the frozen backbone on the dev fold.

Measured on a 2-core AMD EPYC: frozen 65.52, ensemble 67.52 with bf16 autocast; 65.54 and 67.58 in fp32
(train.precision: fp32, what CPUs without bf16 run). On the eval fold the two are level (61.6), so the
test holds the dev fold only; bench/accuracy.py reports both folds and a second draw.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from asd.evaluation.metrics import official_score
from workflow_runner import REPO, SNAKEMAKE

pytestmark = pytest.mark.slow
MIN_GAIN = 1.0  # official-score points; measured +2.0 in both precisions


def test_fine_tuning_beats_the_frozen_backbone_on_the_demo_dev_fold(tmp_path):
    targets = [f"results/metrics/dev/{system}.json" for system in ("frozen", "ensemble")]
    run = subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--cores",
                          "2", "--configfile", str(REPO / "config" / "demo.yaml"), "--quiet", "rules", "--", *targets],
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-4000:]
    machines = {system: json.loads((tmp_path / target).read_text())["machines"]
                for system, target in zip(("frozen", "ensemble"), targets)}
    official = {system: 100 * official_score(rows) for system, rows in machines.items()}
    print(f"demo dev fold, official score: {official}")
    assert [row["machine"] for row in machines["ensemble"]] == ["bearing", "fan", "valve"]
    assert 60 < official["frozen"] < 75  # the pre-trained backbone alone detects (random init: about 53)
    assert official["ensemble"] >= official["frozen"] + MIN_GAIN
    # The gain is in the source domain, where the 24 training clips per machine type teach the attribute classes.
    mean_auc_source = {system: sum(row["AUC_source"] for row in rows) / len(rows) for system, rows in machines.items()}
    assert mean_auc_source["ensemble"] > mean_auc_source["frozen"]
