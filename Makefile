# One-command entry points. Each target creates .venv with the pinned dependencies first
# (idempotent: reinstalls only when requirements.txt or pyproject.toml change).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
# A torch build for your CUDA driver: the pinned PyPI wheel is built for CUDA 13 and needs a driver
# that supports it (`nvidia-smi` shows "CUDA Version: 13.x"). For a CUDA 12 driver, e.g.
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
# installs the same torch/torchaudio versions from PyTorch's index for that CUDA release first.
TORCH_INDEX ?=
TORCH_PINS := $(shell grep -E '^torch(audio)?==' requirements.txt)

.PHONY: setup demo test test-fast lint bench gpu-check clean-results

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet --index-url $(TORCH_INDEX) $(TORCH_PINS))
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

## the whole workflow on the embedded demo dataset (random-init backbone)
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml

## the full test suite (unit tests, conformance, workflow, SLURM integration)
test: $(STAMP)
	$(BIN)/pytest -q

## unit tests only (no end-to-end workflow or SLURM runs)
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow and not slurm"

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile config/demo.yaml

## benchmarks: JSON + Markdown under results/bench/
bench: $(STAMP)
	$(BIN)/python bench/run_all.py

## accuracy report: the demo recipe on two synthetic draws, every system beside a log-mel 1-NN, with
## bootstrap sds and the issue's goal (results/bench/accuracy.{json,md}; 10-20 min on 2 cores)
.PHONY: bench-accuracy
bench-accuracy: $(STAMP)
	$(BIN)/python bench/accuracy.py --cores $(CORES)

## GPU benchmark and on-device checks (run it on a GPU node; under 5 min on one H100/H200; stops without CUDA):
## bf16 matmul peak, the training step, embedding throughput from HDF5, SDPA vs plain attention, bf16 vs fp32
## embeddings, a short training run (results/bench/gpu.{json,md})
.PHONY: bench-gpu
bench-gpu: $(STAMP)
	$(BIN)/python bench/bench_gpu.py

## wheels of what a lent GPU machine without network lacks (Python 3.12), for bench/gpu_device.sh
DEVICE_WHEELS := soundfile cffi pycparser jsonschema jsonschema-specifications referencing rpds-py
.PHONY: gpu-wheels
gpu-wheels: $(STAMP)
	rm -rf .whl && mkdir .whl
	for name in $(DEVICE_WHEELS); do \
	  version=$$($(BIN)/python -m pip show $$name | sed -n 's/^Version: //p'); \
	  $(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	    -d .whl "$$name==$$version" || exit 1; \
	done
	ls .whl

## what torch sees: its CUDA build, the driver's GPUs, bf16 support (run it on a GPU node)
gpu-check: $(STAMP)
	$(BIN)/python -c "import torch; print('torch', torch.__version__, 'built for CUDA', torch.version.cuda); \
	ok = torch.cuda.is_available(); print('CUDA available:', ok); \
	ok and print('GPU:', torch.cuda.get_device_name(0), 'capability', torch.cuda.get_device_capability(0))"

clean-results:
	rm -rf results .snakemake

## rebuild the shipped demo backbone models/demo_backbone.pt (+ .sha256, .json report): the BEATs
## architecture at DEMO size pre-trained on synthetic machine sounds — not BEATs. Same bytes on the
## same torch build and kind of CPU (1 torch thread; CORES corpus processes); minutes on a 2-core machine.
.PHONY: pretrain
pretrain: $(STAMP)
	$(BIN)/asd pretrain --out models/demo_backbone.pt --seed 0 --threads 1 --workers $(CORES)
	cd models && sha256sum -c demo_backbone.pt.sha256
