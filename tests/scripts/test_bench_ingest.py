"""The ingest benchmark runs end to end on a tiny export (slow: run with `pytest -m slow`)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_ingest_prints_every_row(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts/bench/ingest.py"), "--ct-series", "1", "--slices", "8",
         "--radiographs", "4", "--repeat", "1", "--data", str(tmp_path), "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, check=True, timeout=600)
    for row in ("baseline", "MONAI LoadImage", "--workers 1", "--workers 2", "again (unchanged source)"):
        assert row in out.stdout
    figures = json.loads((tmp_path / "r.json").read_text())
    assert figures["files"] == 12 and figures["reingest_speedup"] > 1  # a re-run that decodes nothing is faster
