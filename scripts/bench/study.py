#!/usr/bin/env python
"""A 6-cell ``freeze: all`` study grid with the frozen-encoder feature cache against the same grid
recomputing features, same run.

    python scripts/bench/study.py                        # 96 panoramics, ResNet18 at 128^2, 10 epochs
    python scripts/bench/study.py --encoder resnet50 --image-size 224
    python scripts/bench/study.py --device cuda          # on a GPU machine

Grid: one encoder, weights scratch, freeze all, lr × dropout = 3 × 2 = 6 cells, fold 0, seed 0.
Every row trains the same heads on the same (unaugmented) images through `medxfer.study.run_study`
or the same bundle, each into its own fresh MLflow store and cache folder.

Rows (wall-clock seconds for the whole grid; speed-up = baseline seconds / row seconds):
  baseline       no cache (`feature_cache: false`): each cell trains through the frozen encoder,
                 computing every image's features in every epoch (what a frozen cell costs
                 without the cache)
  per-cell       the cache, emptied before each cell: features computed once per cell
  cached         the cache shared by the grid: features computed once for all 6 cells
Target (issue 5): cached is >= 5x faster than the baseline.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def spec_for(args, manifest: Path, name: str, cache_dir: Path, use_cache: bool):
    from medxfer.study import parse_spec

    train = {"epochs": args.epochs, "image_size": args.image_size, "batch_size": args.batch_size,
             "augment": False, "feature_cache": use_cache, "feature_cache_dir": str(cache_dir),
             "num_workers": 0, "amp": False}  # the device: CUDA_VISIBLE_DEVICES (main)
    return parse_spec({"name": name, "bundle": "classification",
                       "data": {"manifest": str(manifest), "label": "supernumerary", "folds": [0]},
                       "grid": {"encoder": [args.encoder], "weights": ["scratch"], "freeze": ["all"],
                                "lr": [1e-3, 3e-4, 1e-4], "dropout": [0.0, 0.3]},
                       "seeds": [0], "train": train})


def timed_grid(args, manifest: Path, work: Path, row: str) -> float:
    """Seconds for the 6 cells of ``row`` in a fresh MLflow store and cache folder."""
    from medxfer.engine import train_bundle
    from medxfer.study import expand, run_study

    store = work / f"store-{row}"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    cache = store / "features"
    spec = spec_for(args, manifest, f"bench-{row}", cache, use_cache=row != "baseline")
    start = time.perf_counter()
    if row == "per-cell":  # the bundle the runner would call, the cache emptied before each cell
        for planned in expand(spec):
            shutil.rmtree(cache, ignore_errors=True)
            overrides = {k: v for k, v in planned.overrides.items() if k != "feature_cache"}
            train_bundle("classification", config="train_features", experiment=spec.experiment,
                         output_dir=str(store / "runs" / planned.name.replace("/", "_")), **overrides)
    else:
        outcome = run_study(spec, runs_dir=store / "runs")
        if outcome.failed or len(outcome.ran) != 6:
            raise SystemExit(f"{row}: {outcome.failed or outcome.ran}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=96)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the cohort here between invocations.")
    args = parser.parse_args()
    if args.device == "cpu":  # a spec holds data, not a device expression: hide the GPUs instead
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import logging

    import torch

    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="medxfer-bench-study-"))
    os.environ.setdefault("MEDXFER_HOME", str(work / "home"))
    from medxfer.synthetic import dental_cohort

    manifest, _ = dental_cohort(work, n_patients=args.patients, ceph=False, workers=2)
    os.chdir(work)
    print(f"# {args.patients} patients, {args.encoder} at {args.image_size}^2, {args.epochs} epochs, batch "
          f"{args.batch_size}, device {args.device}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    seconds = {row: timed_grid(args, manifest, work, row) for row in ("baseline", "per-cell", "cached")}
    print(f"{'row':<10} {'seconds':>8} {'speed-up':>9}")
    for row, s in seconds.items():
        print(f"{row:<10} {s:8.1f} {seconds['baseline'] / s:8.2f}x")


if __name__ == "__main__":
    main()
