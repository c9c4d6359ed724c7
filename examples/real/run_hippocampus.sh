#!/usr/bin/env bash
# MSD Task04 Hippocampus, native 3D (docs/results.md, "MSD Hippocampus, native 3D"): labels CSV →
# ingest (label volumes as the mask column) → 5-fold split → study → report.
#
#   examples/real/run_hippocampus.sh                 (reduced configuration: under 60 min on 2 CPU cores)
#   SPEC=hippocampus-3d-full examples/real/run_hippocampus.sh     (the full configuration, for a GPU)
#
# DATA (MEDXFER_SHARED_DATA, default ../shared/data): msd_hippocampus_mr/{images,labels}. WORK
# (MEDXFER_REAL_WORK, default ./real-work) as run_real.sh: nothing is written into the repository, and
# every step is resumable.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
data=$(cd "${MEDXFER_SHARED_DATA:-$here/../../../shared/data}" && pwd)
work=${MEDXFER_REAL_WORK:-$PWD/real-work}
spec=${SPEC:-hippocampus-3d}
mkdir -p "$work/logs" "$work/mlruns" && cd "$work"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$work/mlruns/mlflow.db}
export MEDXFER_HOME=${MEDXFER_HOME:-$work/home}
start=$(date +%s)
python "$here/hippocampus_labels.py" "$data/msd_hippocampus_mr" hippocampus_labels.csv
medxfer ingest "$data/msd_hippocampus_mr/images" --out cohorts/hippocampus --labels hippocampus_labels.csv \
    --key image --modality MR
medxfer split cohorts/hippocampus --folds 5 --seed 0
medxfer study run "$here/$spec.yaml" 2>&1 | tee "logs/$spec.log"
medxfer study report "$spec" --out "reports/$spec"
printf '%s\t%s\t%s\n' "$spec" "$(( $(date +%s) - start ))" "$(nproc) cores, $(uname -m)" >> logs/timing.tsv
