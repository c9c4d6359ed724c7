#!/usr/bin/env bash
# AdrenalMNIST3D as 2.5D slices (docs/results.md, "AdrenalMNIST3D"): import the ImageNet MobileNet,
# then for the real 64³ and 28³ .npz: convert → ingest → the official split → study → report.
#
#   examples/real/run_adrenal.sh          (about 15 min on 2 CPU cores: 64³ about 10, 28³ about 5)
#
# DATA (MEDXFER_SHARED_DATA, default ../shared/data): medmnist3d/adrenalmnist3d{_64,}.npz and
# weights_keras_mobilenet025/. WORK (MEDXFER_REAL_WORK, default ./real-work) as run_real.sh: nothing is
# written into the repository, and every step is resumable.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
data=$(cd "${MEDXFER_SHARED_DATA:-$here/../../../shared/data}" && pwd)
work=${MEDXFER_REAL_WORK:-$PWD/real-work}
mkdir -p "$work/logs" "$work/mlruns" && cd "$work"
ln -sfn "$data" data
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$work/mlruns/mlflow.db}
export MEDXFER_HOME=${MEDXFER_HOME:-$work/home}
if ! medxfer weights list --json | python -c 'import json,sys; sys.exit(not any(w["name"] == "imagenet" and w["arch"] == "mobilenet_v1_025" for w in json.load(sys.stdin)))'; then
  medxfer weights import data/weights_keras_mobilenet025/mobilenet_2_5_224_tf_no_top.h5 --name imagenet \
      --arch mobilenet_v1_025 --note "keras-applications MobileNet v1 alpha=0.25, ImageNet, no top (keras 2.0.4)"
fi
# 64³ (the issue's study) and 28³ (the resolution of the paper's published benchmark), same settings
for pair in adrenalmnist3d_64:adrenal adrenalmnist3d:adrenal28; do
  npz=${pair%%:*} cohort=${pair##*:} study=${pair##*:}-2p5d
  start=$(date +%s)
  medxfer convert medmnist "data/medmnist3d/$npz.npz" --out "converted/$cohort" --label-names normal,hyperplasia
  medxfer ingest "converted/$cohort/images" --out "cohorts/$cohort" --labels "converted/$cohort/labels.csv" \
      --key image --modality OT                                  # 0/255 shape masks: the 8-bit /255 preset
  medxfer split "cohorts/$cohort" --from-column split --order test,val,train   # MedMNIST's official split
  medxfer study run "$here/$study.yaml" 2>&1 | tee "logs/$study.log"
  medxfer study report "$study" --out "reports/$study"
  printf '%s\t%s\t%s\n' "$study" "$(( $(date +%s) - start ))" "$(nproc) cores, $(uname -m)" >> logs/timing.tsv
done
