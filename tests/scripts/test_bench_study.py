"""The study benchmark runs end to end on a tiny cohort (slow: run with `pytest -m slow`)."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_study_prints_three_rows(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts/bench/study.py"), "--patients", "20", "--epochs", "2",
         "--image-size", "64", "--workdir", str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=900)
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()
            if line.split()[:1] in (["baseline"], ["per-cell"], ["cached"])}
    assert set(rows) == {"baseline", "per-cell", "cached"}
    assert rows["baseline"][1] == "1.00x" and float(rows["cached"][0]) > 0
