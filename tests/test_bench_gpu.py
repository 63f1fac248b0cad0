"""bench/bench_gpu.py: without CUDA it stops naming CUDA; ``--device cpu --tiny`` runs every section end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "bench_gpu.py"
# One torch thread: on a loaded 2-core machine two spinning threads slow small ops down many times over.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def bench_gpu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: the default run would benchmark it")
def test_without_cuda_the_default_run_fails_with_one_message_naming_cuda():
    completed = bench_gpu()
    assert completed.returncode != 0
    assert "needs a usable CUDA GPU" in completed.stderr and "--device cpu --tiny" in completed.stderr
    assert "Traceback" not in completed.stderr and not completed.stdout


def test_tiny_cpu_run_writes_every_section_and_passes_its_checks(tmp_path):
    out = tmp_path / "gpu.json"
    completed = bench_gpu("--device", "cpu", "--tiny", "--out", str(out))
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "tiny" and result["device"]["device"] == "cpu"
    assert result["matmul_peak"]["gflops"] > 0 and len(result["matmul_peak"]["by_shape"]) == 3
    step = result["training_step"]
    assert step["clips_per_s"] > 0 and step["counted_flops"] > 0 and 0 < step["fraction_of_peak"]
    embedding = result["embedding"]
    assert embedding["clips"] == 16 and embedding["clips_per_s"] > 0
    assert set(embedding["parts_s"]) == {"load_features", "mean_spectrum", "model"}
    correctness = result["correctness"]
    assert set(correctness["attention"]) == {"bf16", "fp32"}
    assert all(len(check["tensors"]) == 5 for check in correctness["attention"].values())
    assert correctness["bf16_embeddings"]["passed"] and correctness["training_run"]["passed"]
    assert correctness["passed"]
    assert [row["met"] for row in result["targets"]] == [None, None, None]  # tiny sizes are never judged
    markdown = (tmp_path / "gpu.md").read_text()
    assert markdown in completed.stdout and "| target | measured | goal | met |" in markdown
