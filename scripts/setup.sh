#!/usr/bin/env bash
# Create a virtual environment and install medxfer into it, torch first.
#
#   scripts/setup.sh            # .venv with the CPU torch 2.13.0 and medxfer[dev]
#   MEDXFER_TORCH_SPEC="torch==2.13.0+cu128 --index-url <your mirror>" scripts/setup.sh
#
# torch is installed before the package because a bare `torch` requirement resolved by pip
# with no torch present pulls the newest CUDA build (several GB). MEDXFER_TORCH_SPEC lets a
# user choose another build (a CUDA wheel, a local file); MEDXFER_VENV another location.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MEDXFER_VENV:-$here/.venv}"
torch_spec="${MEDXFER_TORCH_SPEC:-torch==2.13.0}"
extras="${MEDXFER_EXTRAS:-dev}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "setup: creating virtual environment $venv" >&2
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip setuptools wheel >/dev/null
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing $torch_spec" >&2
  # shellcheck disable=SC2086  # the spec may carry pip options (e.g. --index-url)
  "${pip[@]}" install $torch_spec
fi
echo "setup: installing medxfer[$extras]" >&2
"${pip[@]}" install -e "$here[$extras]"
echo "setup: done; activate with: source $venv/bin/activate" >&2
