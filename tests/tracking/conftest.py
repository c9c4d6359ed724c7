"""A store that holds one run (``medxfer ui`` refuses an empty one), made once and copied per test."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def db_with_a_run(migrated_mlflow_db, tmp_path_factory) -> Path:
    """An MLflow SQLite database holding experiment ``medxfer/ui-test`` with one run."""
    import mlflow

    path = tmp_path_factory.mktemp("store_with_a_run") / "mlflow.db"
    shutil.copyfile(migrated_mlflow_db, path)
    c = mlflow.MlflowClient(f"sqlite:///{path}")
    c.create_run(c.create_experiment("medxfer/ui-test", artifact_location=(path.parent / "artifacts").as_uri()))
    return path


@pytest.fixture
def store_with_a_run(mlflow_store, db_with_a_run) -> str:
    """``mlflow_store`` (cwd = tmp_path, $MLFLOW_TRACKING_URI set) holding one run."""
    shutil.copyfile(db_with_a_run, mlflow_store.removeprefix("sqlite:///"))
    return mlflow_store
