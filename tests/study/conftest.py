"""A generated, ingested and split dental cohort for study runs; a private MLflow store per test."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class StudyCohort:
    root: Path
    manifest: Path
    identifiers: list[str]


@pytest.fixture(scope="session")
def study_cohort(tmp_path_factory) -> StudyCohort:
    """16 patients (PX + ceph), labels joined by PatientID, 4 patient-level folds."""
    import numpy as np

    from medxfer import synthetic
    from medxfer.ingest import ingest, split

    root = tmp_path_factory.mktemp("study_cohort")
    info = synthetic.write_dental_export(root / "export", n_patients=16, labels_csv=root / "labels.csv",
                                         rng=np.random.default_rng(3))
    ingest(root / "export", root / "cohort", labels=root / "labels.csv", key="PatientID", workers=1)
    split(root / "cohort", 4, stratify="supernumerary", seed=0)
    return StudyCohort(root=root, manifest=root / "cohort" / "manifest.csv", identifiers=info.identifiers)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A SQLite MLflow store in the test's folder as ``MLFLOW_TRACKING_URI``; cwd is tmp_path; a
    weights registry of the test's own (``MEDXFER_HOME``)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
