#!/usr/bin/env bash
# AdrenalMNIST3D as 2.5D slices (docs/results.md, "AdrenalMNIST3D"): convert the real 64³ .npz →
# ingest → the official split → import the ImageNet MobileNet → study → report.
#
#   examples/real/run_adrenal.sh          (about 35 min on 2 CPU cores)
#
# DATA (MEDXFER_SHARED_DATA, default ../shared/data): medmnist3d/adrenalmnist3d_64.npz and
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
start=$(date +%s)
medxfer convert medmnist data/medmnist3d/adrenalmnist3d_64.npz --out converted/adrenal \
    --label-names normal,hyperplasia
medxfer ingest converted/adrenal/images --out cohorts/adrenal --labels converted/adrenal/labels.csv --key image \
    --modality OT                                                 # 0/255 shape masks: the 8-bit /255 preset
medxfer split cohorts/adrenal --from-column split --order test,val,train   # MedMNIST's official split
if ! medxfer weights list --json | python -c 'import json,sys; sys.exit(not any(w["name"] == "imagenet" and w["arch"] == "mobilenet_v1_025" for w in json.load(sys.stdin)))'; then
  medxfer weights import data/weights_keras_mobilenet025/mobilenet_2_5_224_tf_no_top.h5 --name imagenet \
      --arch mobilenet_v1_025 --note "keras-applications MobileNet v1 alpha=0.25, ImageNet, no top (keras 2.0.4)"
fi
medxfer study run "$here/adrenal-2p5d.yaml" 2>&1 | tee logs/adrenal-2p5d.log
medxfer study report adrenal-2p5d --out reports/adrenal-2p5d
printf 'adrenal-2p5d\t%s\t%s\n' "$(( $(date +%s) - start ))" "$(nproc) cores, $(uname -m)" >> logs/timing.tsv
