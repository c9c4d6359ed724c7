"""The training benchmark runs end to end on a tiny cohort (slow: run with `pytest -m slow`)."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_train_prints_both_rows(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts/bench/train.py"), "--patients", "20", "--epochs", "2", "--repeats", "1",
         "--image-size", "64", "--workdir", str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=600)
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()
            if line.split()[:1] in (["baseline"], ["bundle"])}
    assert set(rows) == {"baseline", "bundle"}
    assert all(len(fields) == 2 for fields in rows.values()), rows  # img/s, ratio
    base, bundle, ratio = float(rows["baseline"][0]), float(rows["bundle"][0]), float(rows["bundle"][1])
    # both throughputs were measured in this run, and the bundle's ratio is computed from them
    for value in (base, bundle, ratio):
        assert math.isfinite(value) and value > 0, rows
    rounding = ratio * (0.05 / base + 0.05 / bundle) + 0.005  # img/s printed to 0.1, the ratio to 0.01
    assert ratio == pytest.approx(bundle / base, abs=rounding), rows
