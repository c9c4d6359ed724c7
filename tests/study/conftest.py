"""Study tests: each test's MLflow store (``mlflow_store`` from tests/conftest.py) comes with a
weights registry of its own (``MEDXFER_HOME``), so imported names never meet across tests."""
from __future__ import annotations

import pytest


@pytest.fixture
def mlflow_store(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    return mlflow_store
