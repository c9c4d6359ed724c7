"""Fixtures for the encoder and weights tests: a private weights registry per test."""
from __future__ import annotations

import pytest

import medxfer.engine.run_weights  # noqa: F401 - the run: weights source, as `import medxfer.engine` registers it


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh ``$MEDXFER_HOME`` (empty weights registry) for this test."""
    path = tmp_path / "medxfer_home"
    monkeypatch.setenv("MEDXFER_HOME", str(path))
    return path


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A SQLite MLflow store in the test's folder, set as ``MLFLOW_TRACKING_URI``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def log_checkpoint_run(uri: str, checkpoint, tmp_path) -> str:
    """An MLflow run holding ``checkpoint`` at medxfer's checkpoint artifact path; returns its id."""
    import mlflow

    from medxfer.tracking.layout import CHECKPOINT_ARTIFACT

    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        exp = client.create_experiment("weights-test", artifact_location=(tmp_path / "artifacts").as_uri())
    except mlflow.exceptions.MlflowException:
        exp = client.get_experiment_by_name("weights-test").experiment_id
    run = client.create_run(exp)
    client.log_artifact(run.info.run_id, str(checkpoint), artifact_path=CHECKPOINT_ARTIFACT.rsplit("/", 1)[0])
    client.set_terminated(run.info.run_id)
    return run.info.run_id
