"""The README's walk-through runs as written: its ``readme-sequence`` bash blocks, in order, on pydicom's
real test files (the DICOMDIR CD included), exit 0 and leave the outputs the README names.

Nothing is substituted: the blocks find the pydicom files themselves, and run in a temporary folder
with ``MEDXFER_HOME`` and ``MLFLOW_TRACKING_URI`` there and this interpreter's ``bin/`` on ``PATH``.
Only commands that start a server (``medxfer ui``) are left out.
"""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- readme-sequence -->"
SERVER_COMMANDS = ("medxfer ui",)  # they never exit: not run
WORK = "walkthrough"  # the folder the README's first block creates and enters


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def readme_sequence(readme: Path = REPO / "README.md") -> list[str]:
    """The ``bash`` blocks that follow a ``readme-sequence`` marker, in README order, without server commands."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    blocks: list[str] = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = next(j for j in range(i + 1, len(lines)) if lines[j].strip())
        assert lines[fence].strip() == "```bash", f"README line {fence + 1}: {MARKER} must precede a ```bash block"
        end = next(j for j in range(fence + 1, len(lines)) if lines[j].strip() == "```")
        body = [cmd for cmd in lines[fence + 1:end] if not cmd.lstrip().startswith(SERVER_COMMANDS)]
        blocks.append("\n".join(body))
    return blocks


def sequence_script(blocks: list[str]) -> str:
    """One bash script: every block in order, stopping at the first failing command (pipes included),
    with a marker line before each block so that a failure names its block."""
    parts = ["set -euo pipefail"]
    for n, block in enumerate(blocks, 1):
        parts += [f"echo '::readme-block {n}::' >&2", block]
    return "\n".join(parts) + "\n"


def test_readme_sequence_is_marked_and_parses():
    blocks = readme_sequence()
    commands = "\n".join(blocks)
    # the walk-through covers ingest, split, train, study run, report and predict
    for step in ("medxfer ingest", "medxfer split", "medxfer train", "medxfer study run", "medxfer study report",
                 "medxfer predict"):
        assert step in commands, f"the README's walk-through has no `{step}`"
    assert "medxfer ui" not in commands
    result = subprocess.run(["bash", "-n"], input=sequence_script(blocks), text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


# not marked slow (about 1.5 min on 2 idle cores): CI runs the README's sequence (issue 18's acceptance)
def test_readme_sequence_runs_on_the_pydicom_files(tmp_path):
    pytest.importorskip("pydicom.data")
    env = {**os.environ,
           "MEDXFER_HOME": str(tmp_path / "home"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-c", sequence_script(readme_sequence())], cwd=tmp_path, env=env,
                            text=True, capture_output=True, timeout=1800)
    reached = re.findall(r"::readme-block (\d+)::", result.stderr)
    assert result.returncode == 0, (f"README block {reached[-1] if reached else '?'} failed "
                                    f"(exit {result.returncode}):\n{result.stderr[-4000:]}")

    work = tmp_path / WORK
    labels = {row["SeriesInstanceUID"]: row["cross_sectional"] for row in read_csv(work / "labels.csv")}
    assert set(labels.values()) == {"0", "1"}
    manifest = read_csv(work / "cohort" / "manifest.csv")
    # the toy label joined onto the items agrees with each item's own modality header
    labelled = [r for r in manifest if r["cross_sectional"] != ""]
    assert len({r["patient"] for r in labelled}) >= 3
    assert all(float(r["cross_sectional"]) == float(r["modality"] in ("CT", "MR")) for r in labelled)
    assert {r["fold"] for r in manifest} == {"0", "1", "2"}

    run_id = re.search(r"\(([0-9a-f]{32})\)", (work / "train.log").read_text()).group(1)
    assert (work / "report" / "report.html").stat().st_size > 0
    assert read_csv(work / "report" / "results.csv")
    predictions = read_csv(work / "cd" / "predictions" / run_id / "predictions.csv")
    assert predictions and "predicted" in predictions[0]
