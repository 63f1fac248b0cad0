#!/usr/bin/env bash
# `make bench-gpu` on a lent GPU machine that has its own python3 with PyTorch and no network (this
# workplace's nvidia-h200: Python 3.12, torch 2.11): install the wheels `make gpu-wheels` put in .whl/
# (the few packages that machine lacks), then run bench/bench_gpu.py on this checkout's src/, writing
# gpu.json and gpu.md to $OUT (else results/bench). Extra arguments go to bench_gpu.py.
#   here:   make gpu-wheels
#   there:  bash bench/gpu_device.sh            (the device tool: carry .whl, timeout_s 600)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
wheels=${WHEELS:-.whl}
site=${SITE:-/tmp/asd-site}
if ! ls "$wheels"/*.whl > /dev/null 2>&1; then
  echo "gpu_device.sh: no wheels in $wheels/; run 'make gpu-wheels' here and carry .whl to the GPU machine" >&2
  exit 1
fi
"$python" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
export PYTHONPATH="$PWD/src:$site${PYTHONPATH:+:$PYTHONPATH}"
"$python" - <<'PY'
import importlib.metadata as m, platform, torch
cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"peft {m.version('peft')}: {cuda}")
PY
out=${OUT:-results/bench}
mkdir -p "$out"
"$python" bench/bench_gpu.py --out "$out/gpu.json" "$@"
