"""Study tests: each test's MLflow store (``mlflow_store`` from tests/conftest.py) comes with a
weights registry of its own (``MEDXFER_HOME``), so imported names never meet across tests."""
from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest


def write_rows(path: Path, rows: list[dict]) -> Path:
    """``rows`` as a CSV file with their keys as the header (the first row's order)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_manifest(tmp_path: Path, columns: dict[str, Callable[[int], object]]) -> Path:
    """``cohort/manifest.csv`` under ``tmp_path``: 20 items in 5 folds plus ``columns`` (name -> value of item i)."""
    path = tmp_path / "cohort" / "manifest.csv"
    path.parent.mkdir()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "image", "fold", *columns])
        for i in range(20):
            w.writerow([f"i{i}", f"images/i{i}.nii", i % 5, *(value(i) for value in columns.values())])
    return path


@pytest.fixture
def mlflow_store(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    return mlflow_store
