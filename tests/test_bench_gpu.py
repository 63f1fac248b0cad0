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
    # Training (values and the gradients of q, k, v, gate) and inference (no gradients: another kernel on GPUs).
    assert all(list(check["tensors"]) == ["output", "grad q", "grad k", "grad v", "grad gate", "output, no grad"]
               for check in correctness["attention"].values())
    assert correctness["bf16_embeddings"]["passed"] and correctness["training_run"]["passed"]
    assert correctness["passed"]
    assert [row["met"] for row in result["targets"]] == [None, None, None]  # tiny sizes are never judged
    markdown = (tmp_path / "gpu.md").read_text()
    assert markdown in completed.stdout and "| target | measured | goal | met |" in markdown


# ----------------------------------------------------------------------------- bench/gpu_device.sh

DEVICE_SCRIPT = REPO / "bench" / "gpu_device.sh"


def gpu_device(tmp_path: Path, wheels: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**ENV, "PYTHON": sys.executable, "WHEELS": str(wheels), "SITE": str(tmp_path / "site"),
           "OUT": str(tmp_path / "out")}
    return subprocess.run(["bash", str(DEVICE_SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_device_script_without_wheels_names_make_gpu_wheels(tmp_path):
    completed = gpu_device(tmp_path, tmp_path / "missing")
    assert completed.returncode == 1
    assert "run 'make gpu-wheels' here and carry .whl" in completed.stderr
    assert not (tmp_path / "out").exists()


def test_device_script_installs_the_carried_wheels_then_runs_the_benchmark(tmp_path):
    # A stand-in for the carried wheels: one built here, offline, that the benchmark's imports can see.
    project = tmp_path / "probe"
    (project / "asd_device_probe").mkdir(parents=True)
    (project / "asd_device_probe" / "__init__.py").write_text("CARRIED = True\n")
    (project / "pyproject.toml").write_text('[project]\nname = "asd-device-probe"\nversion = "1.0"\n')
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheels"), str(project)], check=True, capture_output=True, timeout=300)
    completed = gpu_device(tmp_path, tmp_path / "wheels", "--device", "cpu", "--tiny")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "site" / "asd_device_probe" / "__init__.py").is_file()
    assert completed.stdout.startswith("python 3.") and "no CUDA device" in completed.stdout.splitlines()[0]
    result = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert result["mode"] == "tiny" and result["correctness"]["passed"]
    assert (tmp_path / "out" / "gpu.md").is_file()
