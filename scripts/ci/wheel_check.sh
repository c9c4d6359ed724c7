#!/usr/bin/env bash
# CI: a normal (non-editable) install trains. Builds the wheel from the committed sources, installs
# it into a fresh virtual environment, and from a folder outside the repository checks that
# `medxfer` comes from that environment, verifies the shipped bundle metadata offline, and trains
# one epoch of the classification bundle on a generated dental cohort.
#
#   scripts/ci/wheel_check.sh            # torch==2.13.0 + the wheel and its requirements, resolved by pip
#   MEDXFER_TORCH_SPEC="torch==2.13.0+cu128 --index-url <mirror>" scripts/ci/wheel_check.sh
#   MEDXFER_WHEEL_ENV=overlay scripts/ci/wheel_check.sh   # no index at hand: see below
#
# MEDXFER_WHEEL_ENV=overlay: the new environment installs only the wheel (--no-deps) and sees the
# dependencies of the project's .venv through a .pth line; .pth files in that folder are not run, so
# the editable medxfer of .venv stays invisible (checked below) and `pip check` proves the wheel's
# requirements are met. The default (fresh) also proves they resolve from the index.
# Prints the time of each step. Measured on 2 CPU cores: fresh about 2.5 min idle (the install about 70 s
# from a local index), overlay about 1 min; both more when the machine is shared.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
project_python="${MEDXFER_PROJECT_PYTHON:-$here/.venv/bin/python}"
torch_spec="${MEDXFER_TORCH_SPEC:-torch==2.13.0}"
mode="${MEDXFER_WHEEL_ENV:-fresh}"
work="$(mktemp -d "${TMPDIR:-/tmp}/medxfer-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$SECONDS
step() { echo "wheel_check: [$((SECONDS - start))s] $*" >&2; }

# 1. the wheel, built from a clean copy of the sources (an in-tree build/ could carry deleted files)
step "building the wheel"
mkdir "$work/src"
(cd "$here" && git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf -) | tar -xf - -C "$work/src"
"$project_python" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$work/src" >/dev/null
wheel="$(ls "$work"/dist/medxfer-*.whl)"
"$project_python" -c "import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); \
sys.exit(0 if all(f'medxfer/bundles/{b}/configs/train.json' in names for b in ('classification', 'segmentation')) \
else 'wheel_check: the wheel lacks the bundles')" "$wheel"

# 2. a new environment holding the wheel
step "installing $(basename "$wheel") into a new environment ($mode)"
env="$work/venv"
base_python="$("$project_python" -c "import sys, pathlib; print(pathlib.Path(sys.base_exec_prefix, 'bin', 'python3'))")"
"$base_python" -m venv "$env"
pip=("$env/bin/python" -m pip --disable-pip-version-check -q)
case "$mode" in
  fresh)
    # shellcheck disable=SC2086  # the spec may carry pip options (e.g. --index-url)
    "${pip[@]}" install $torch_spec
    "${pip[@]}" install "$wheel" ;;
  overlay)
    deps="$("$project_python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
    echo "$deps" > "$("$env/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/project-deps.pth"
    "${pip[@]}" install --no-deps "$wheel"
    # only the wheel's own requirements: the new venv's bundled setuptools shadows .venv's (torch wants a newer one)
    if "${pip[@]}" check | grep "^medxfer "; then echo "wheel_check: the wheel's requirements are not met" >&2; exit 1; fi ;;
  *) echo "wheel_check: MEDXFER_WHEEL_ENV is fresh or overlay, not '$mode'" >&2; exit 2 ;;
esac

# 3. from outside the repository: the installed package, its bundles, one epoch
cd "$work"
export MEDXFER_HOME="$work/home" MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"
unset MEDXFER_BUNDLES PYTHONPATH
step "checking the installed package"
"$env/bin/python" - "$env" <<'EOF'
import sys
from pathlib import Path

import medxfer
from medxfer.engine.bundles import bundle_path

env = Path(sys.argv[1]).resolve()
where = Path(medxfer.__file__).resolve()
assert where.is_relative_to(env), f"medxfer imported from {where}, not from the wheel in {env}"
for name in ("classification", "segmentation"):
    assert bundle_path(name).is_relative_to(env), bundle_path(name)
print(f"wheel_check: medxfer from {where.parent}", file=sys.stderr)
EOF
bundles="$("$env/bin/python" -c "from medxfer.engine.bundles import bundles_dir; print(bundles_dir())")"
for name in classification segmentation; do
  # offline: the schema named in metadata.json ships beside the bundles (MONAI skips the download)
  verified="$("$env/bin/python" -m monai.bundle verify_metadata --meta_file "$bundles/$name/configs/metadata.json" \
    --filepath "$bundles/meta_schema_20240725.json" --hash_val 76e1add273836515d0bbb3bc71962474 2>&1)" || true
  grep -q "metadata is verified with no error" <<<"$verified" \
    || { echo "$verified" >&2; echo "wheel_check: $name metadata does not verify" >&2; exit 1; }
done

step "generating a dental cohort"
"$env/bin/python" -c "from medxfer import synthetic; print(synthetic.dental_cohort('data', n_patients=8, folds=4)[0])"
step "training one epoch with the installed medxfer"
"$env/bin/medxfer" train classification --manifest data/cohort/manifest.csv --label supernumerary \
  --encoder mobilenet_v1_025 --fold 1 --epochs 1 --image_size 64 --modalities '["PX"]' --batch_size 4 \
  | tee "$work/train.log"
grep -q "test_auc" "$work/train.log" || { echo "wheel_check: no test metrics from the training run" >&2; exit 1; }
step "passed"
