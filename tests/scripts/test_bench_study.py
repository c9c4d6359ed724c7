"""The study benchmark runs end to end on a tiny cohort (slow: run with `pytest -m slow`)."""
import math
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
    assert all(len(fields) == 2 and fields[1].endswith("x") for fields in rows.values()), rows  # seconds, speed-up
    seconds = {row: float(fields[0]) for row, fields in rows.items()}
    for row in ("per-cell", "cached"):
        speedup = float(rows[row][1].removesuffix("x"))
        # both grids were timed in this run, and the speed-up is computed from the two timings
        assert math.isfinite(speedup) and speedup > 0 and seconds[row] > 0, rows
        rounding = speedup * (0.05 / seconds["baseline"] + 0.05 / seconds[row]) + 0.005  # s to 0.1, x to 0.01
        assert speedup == pytest.approx(seconds["baseline"] / seconds[row], abs=rounding), rows
