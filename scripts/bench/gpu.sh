#!/usr/bin/env bash
# One-command GPU benchmark (issue 16): training images/s of the classification bundle (ResNet50 at 224²,
# bf16 autocast, its real data path on 2,000 synthetic PNGs) against the same model on tensors already on
# the GPU, appended with the GPU model and this command to docs/benchmarks.md.
#
#   bash scripts/bench/gpu.sh                         # measure and record
#   bash scripts/bench/gpu.sh --images 4000 --epochs 8   # options of scripts/bench/gpu_train.py
#   MEDXFER_VENV=/path/to/venv bash scripts/bench/gpu.sh # another environment (one with a CUDA torch)
#
# Without a GPU it prints "no GPU: nothing measured" and exits 0. Without the environment it runs
# scripts/setup.sh first (MEDXFER_TORCH_SPEC chooses the torch build there).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${MEDXFER_VENV:-$repo/.venv}"
cd "$repo"

has_gpu_driver() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }

if ! has_gpu_driver && [[ ! -x "$venv/bin/python" ]]; then
  echo "no GPU: nothing measured"   # no driver, and no environment to ask torch: nothing to set up for
  exit 0
fi
if [[ ! -x "$venv/bin/python" ]]; then
  MEDXFER_VENV="$venv" bash scripts/setup.sh
fi
python="$venv/bin/python"
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  if has_gpu_driver; then
    cuda="$("$python" -c 'import torch; print(torch.version.cuda)' 2>/dev/null || echo '?')"
    echo "a GPU is installed but torch in $venv cannot use it (torch.version.cuda: $cuda). Install a CUDA" \
         "build, e.g. MEDXFER_VENV=.venv-gpu MEDXFER_TORCH_SPEC='torch==2.13.0' bash scripts/setup.sh, then" \
         "MEDXFER_VENV=.venv-gpu bash scripts/bench/gpu.sh" >&2
    exit 1
  fi
  echo "no GPU: nothing measured"
  exit 0
fi
exec "$python" scripts/bench/gpu_train.py --docs docs/benchmarks.md \
  --command "bash scripts/bench/gpu.sh${*:+ $*}" "$@"
