"""Study tests: each test's MLflow store (``mlflow_store`` from tests/conftest.py) comes with a
weights registry of its own (``MEDXFER_HOME``), so imported names never meet across tests."""
from __future__ import annotations

import contextlib
import csv
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def write_rows(path: Path, rows: list[dict]) -> Path:
    """``rows`` as a CSV file with their keys as the header (the first row's order)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_manifest(tmp_path: Path, columns: dict[str, Callable[[int], object]], prefix: str = "i") -> Path:
    """``cohort/manifest.csv`` under ``tmp_path``: 20 items ``<prefix>0…`` in 5 folds plus ``columns`` (name -> value
    of item i). Another ``prefix`` makes a cohort of other items (a pretraining source that shares no test item)."""
    path = tmp_path / "cohort" / "manifest.csv"
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "image", "fold", *columns])
        for i in range(20):
            w.writerow([f"{prefix}{i}", f"images/{prefix}{i}.nii", i % 5, *(value(i) for value in columns.values())])
    return path


@pytest.fixture
def mlflow_store(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    return mlflow_store


@contextlib.contextmanager
def fabricated_store(folder: Path, migrated_mlflow_db: Path) -> Iterator:
    """A copy of the migrated MLflow database in ``folder`` (a module's fabricated study writes it once): while the
    block runs, the working folder is ``folder`` and ``MLFLOW_TRACKING_URI`` names the copy; yields its client."""
    import mlflow

    shutil.copyfile(migrated_mlflow_db, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield mlflow.MlflowClient(tracking_uri=uri)


class FabricatedStudy:
    """A study made without training, as ``docs/study-mlflow-layout.md`` lays it out: experiment
    ``medxfer/<name>``, a parent run with ``spec_text`` as its spec.yaml, and :meth:`child` runs with a
    test metric and their predictions.csv / per_case.csv rows."""

    def __init__(self, client, name: str, staging: Path, spec_text: str = "",
                 grid_keys: tuple[str, ...] = ("encoder", "weights", "freeze", "lr")):
        self.client, self.name, self.staging, self.grid_keys = client, name, staging, grid_keys
        self.experiment = client.create_experiment(f"medxfer/{name}")
        self.parent = client.create_run(self.experiment, run_name=f"study/{name}", tags={
            "medxfer.study": name, "medxfer.role": "study", "medxfer.spec_hash": "0" * 16}).info.run_id
        spec = staging / self.parent / "spec.yaml"
        spec.parent.mkdir(parents=True)
        spec.write_text(spec_text or f"name: {name}\n")
        client.log_artifact(self.parent, str(spec))

    def child(self, grid: dict[str, str], fold: int, seed: int, rows: list[dict], metric: float,
              task: str = "classification") -> str:
        """A FINISHED child run of the cell ``grid`` (its values in grid-key order name it); returns its id."""
        import hashlib

        cell = "/".join([task, *(str(grid[k]) for k in self.grid_keys)])
        config_hash = hashlib.sha1(f"{cell}/{fold}/{seed}".encode()).hexdigest()[:20]
        tags = {"medxfer.study": self.name, "medxfer.role": "cell", "task": task, "cell": cell,
                "config_hash": config_hash, "fold": str(fold), "seed": str(seed), "mlflow.parentRunId": self.parent,
                "medxfer.grid_keys": ",".join(self.grid_keys), **grid}
        run = self.client.create_run(self.experiment, run_name=f"{cell}/fold{fold}/seed{seed}", tags=tags).info.run_id
        self.client.log_metric(run, "test_auc" if task == "classification" else "test_dice", metric)
        folder = self.staging / run
        folder.mkdir()
        artifact = "predictions.csv" if task == "classification" else "per_case.csv"
        self.client.log_artifact(run, str(write_rows(folder / artifact, rows)))
        self.client.set_terminated(run, "FINISHED")
        return run
