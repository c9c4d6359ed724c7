#!/usr/bin/env bash
# The real-data results (docs/results.md) from the public datasets in ../shared/data, with medxfer
# alone: convert → ingest → split → import the ImageNet weights → three studies → three reports.
#
#   examples/real/run_real.sh [reduced|full]      (default: reduced, < 60 min on 2 CPU cores)
#
# DATA  (MEDXFER_SHARED_DATA, default ../shared/data beside the repository): busi/, ddti_thyroid/,
#       medmnist/, weights_keras_mobilenet025/ as described in its README.
# WORK  (MEDXFER_REAL_WORK, default ./real-work): cohorts, run outputs, the MLflow store
#       (sqlite WORK/mlruns/mlflow.db unless MLFLOW_TRACKING_URI is set), the weights registry
#       (MEDXFER_HOME, default WORK/home) and the reports (WORK/reports/<study>/). Nothing is written
#       into the repository. Every step is resumable: run it again after an interruption.
# The full configuration also needs ImageNet weights for resnet18/resnet50/densenet121, which are
# not in DATA: import torchvision's files first (see busi-classification.yaml's header); without
# them those cells fail with that reason and the rest complete.
set -euo pipefail
config=${1:-reduced}
case "$config" in reduced) suffix=-reduced ;; full) suffix= ;; *) echo "usage: $0 [reduced|full]" >&2; exit 2 ;; esac
here=$(cd "$(dirname "$0")" && pwd)
data=$(cd "${MEDXFER_SHARED_DATA:-$here/../../../shared/data}" && pwd)
work=${MEDXFER_REAL_WORK:-$PWD/real-work}
mkdir -p "$work/logs" && cd "$work"
ln -sfn "$data" data                      # the specs' mask_root: data/busi
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$work/mlruns/mlflow.db}
export MEDXFER_HOME=${MEDXFER_HOME:-$work/home}
mkdir -p mlruns
start=$(date +%s)

# 1. cohorts: BUSI as shipped; DDTI and PneumoniaMNIST through `medxfer convert` first
medxfer ingest data/busi/images_256 --out cohorts/busi --labels data/busi/labels.csv --key image --modality US
medxfer split cohorts/busi --folds 5 --stratify label              # image-level: BUSI has no patient IDs
medxfer convert ddti data/ddti_thyroid --out converted/ddti
medxfer ingest data/ddti_thyroid/images --out cohorts/thyroid --labels converted/ddti/labels.csv --key image \
    --patient-column case --modality US
medxfer split cohorts/thyroid --folds 5 --stratify tirads          # patient (case) level
medxfer convert medmnist data/medmnist/pneumoniamnist_reconstructed.npz --out converted/pneumonia \
    --label-names normal,pneumonia
medxfer ingest converted/pneumonia/images --out cohorts/pneumonia --labels converted/pneumonia/labels.csv \
    --key image --modality CR
medxfer split cohorts/pneumonia --folds 5 --stratify label

# 2. the only real ImageNet weights available offline: Keras MobileNet v1 alpha=0.25
if ! medxfer weights list --json | python -c 'import json,sys; sys.exit(not any(w["name"] == "imagenet" and w["arch"] == "mobilenet_v1_025" for w in json.load(sys.stdin)))'; then
  medxfer weights import data/weights_keras_mobilenet025/mobilenet_2_5_224_tf_no_top.h5 --name imagenet \
      --arch mobilenet_v1_025 --note "keras-applications MobileNet v1 alpha=0.25, ImageNet, no top (keras 2.0.4)"
fi

# 3. studies and reports; wall time per study in logs/timing.tsv
status=0
for spec in busi-classification ddti-tirads busi-segmentation; do
  file="$here/$spec$suffix.yaml"
  name=$(sed -n 's/^name: *//p' "$file")
  t0=$(date +%s)
  medxfer study run "$file" 2>&1 | tee "logs/$name.log" || status=1
  medxfer study report "$name" --out "reports/$name" || status=1
  printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" "$(nproc) cores, $(uname -m)" >> logs/timing.tsv
done
printf 'total\t%s\n' "$(( $(date +%s) - start ))" >> logs/timing.tsv
echo "reports: $work/reports/*/report.html; timing: $work/logs/timing.tsv" >&2
exit $status
