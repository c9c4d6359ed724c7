"""The 3D benchmark runs end to end on tiny synthetic volumes (slow: run with `pytest -m slow`)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_3d_prints_patch_and_training_rows(tmp_path):
    env = dict(os.environ, MEDXFER_SHARED_DATA=str(tmp_path / "no_shared_data"), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts/bench/bench_3d.py"), "--workdir", str(tmp_path / "work"),
         "--synthetic-volumes", "5", "--synthetic-size", "40", "--synthetic-rois", "32", "--synthetic-epochs", "1",
         "--num-samples", "2", "--repeat", "1", "--prototype", "shared-indices", "--train-iters", "2",
         "--train-warmup", "1", "--train-batch", "2", "--decoder-channels", "16", "16", "8", "8", "8",
         "--device", "cpu", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, check=True, timeout=600, env=env)
    assert "hippocampus: skipped" in out.stdout  # no shared data: said so, and the synthetic rows still ran
    figures = json.loads((tmp_path / "r.json").read_text())
    patches = {row["side"]: row for row in figures["patches"]}
    assert set(patches) == {"monai", "medxfer", "medxfer+shared-indices"}
    assert patches["monai"]["ratio"] == 1.0
    for row in patches.values():  # both sides measured in this run; the ratio computed from them
        assert math.isfinite(row["patches_per_s"]) and row["patches_per_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["ratio"] == pytest.approx(row["patches_per_s"] / patches["monai"]["patches_per_s"])
    # medxfer caches the fg/bg indices with the volume: more cached bytes than MONAI's tutorial pipeline
    assert patches["medxfer"]["cache_mb"] > patches["monai"]["cache_mb"]
    assert "patches max |medxfer+shared-indices - medxfer| = 0" in out.stdout  # the prototype keeps every patch
    training = {row["side"]: row for row in figures["training"]}
    assert set(training) == {"bare", "trainer"}
    assert training["trainer"]["ratio"] == pytest.approx(training["trainer"]["iters_per_s"]
                                                         / training["bare"]["iters_per_s"])
    assert all(row["gpu_peak_mb"] is None for row in training.values())  # CPU run: no GPU figure invented
    if not torch.cuda.is_available():
        assert "no GPU" in out.stdout
