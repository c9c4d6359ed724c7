"""A small ingested, split dental cohort (PX panoramics + ceph DX, fake identifiers in headers)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class DentalCohort:
    root: Path
    manifest: Path
    identifiers: list[str]


@pytest.fixture(scope="session")
def dental_cohort(tmp_path_factory) -> DentalCohort:
    from medxfer import synthetic
    from medxfer.ingest import ingest, split

    root = tmp_path_factory.mktemp("dental")
    info = synthetic.write_dental_export(root / "export", n_patients=16, labels_csv=root / "labels.csv")
    out = root / "cohort"
    ingest(root / "export", out, labels=root / "labels.csv", key="PatientID", workers=1)
    split(out, 4, stratify="supernumerary", seed=0)
    return DentalCohort(root=root, manifest=out / "manifest.csv", identifiers=info.identifiers)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A SQLite MLflow store in the test's folder, set as ``MLFLOW_TRACKING_URI``; cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
