"""The training benchmark runs end to end on a tiny cohort (slow: run with `pytest -m slow`)."""
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
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.split()[:1] in (["baseline"], ["bundle"])}
    assert set(rows) == {"baseline", "bundle"}
    assert float(rows["bundle"][0]) > 0 and float(rows["baseline"][1]) == 1.0
