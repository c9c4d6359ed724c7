"""Shared fixtures: an isolated MEDXFER_HOME (secret), the pydicom test files, ../shared/data."""
from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def medxfer_home(tmp_path_factory, monkeypatch):
    """Each test session gets its own secret; nothing touches the user's ~/.medxfer."""
    home = tmp_path_factory.getbasetemp() / "medxfer_home"
    monkeypatch.setenv("MEDXFER_HOME", str(home))
    return home


@dataclass
class DentalCohort:
    root: Path
    manifest: Path
    identifiers: list[str]


@pytest.fixture(scope="session")
def dental_cohort(tmp_path_factory) -> DentalCohort:
    """A small ingested, split dental cohort: 16 patients (PX panoramics + ceph DX, fake identifiers
    in the headers), labels joined by PatientID, 4 patient-level folds."""
    from medxfer import synthetic

    root = tmp_path_factory.mktemp("dental")
    manifest, info = synthetic.dental_cohort(root, n_patients=16, folds=4)
    return DentalCohort(root=root, manifest=manifest, identifiers=info.identifiers)


@pytest.fixture(scope="session")
def mammography_cohort(tmp_path_factory) -> DentalCohort:
    """A small ingested, split screening-mammography cohort: 12 patients × CC/MLO of both breasts
    (48 MG images, fake identifiers), per-image labels pathology / malignant / density joined by
    file path, 4 patient-level folds."""
    from medxfer import synthetic

    root = tmp_path_factory.mktemp("mammo")
    manifest, info = synthetic.mammography_cohort(root, n_patients=12, folds=4)
    return DentalCohort(root=root, manifest=manifest, identifiers=info.identifiers)


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test (restored after): tiny networks on a shared CPU, where two
    threads spin against each other. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A SQLite MLflow store in the test's folder, set as ``MLFLOW_TRACKING_URI``; cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store with its tables made once (creating them costs seconds per store)."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(mlflow_store, migrated_mlflow_db) -> str:
    """``mlflow_store`` (cwd = tmp_path, $MLFLOW_TRACKING_URI set) starting from a copy of the migrated store."""
    shutil.copyfile(migrated_mlflow_db, mlflow_store.removeprefix("sqlite:///"))
    return mlflow_store


@pytest.fixture(scope="session")
def pydicom_test_files() -> Path:
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $MEDXFER_SHARED_DATA); tests using it skip with a message when absent."""
    root = Path(os.environ.get("MEDXFER_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"shared real data not found at {root} (set MEDXFER_SHARED_DATA)")
    return root


def all_output_bytes(root: Path):
    """(path, bytes) of every file under ``root``, gzip members decompressed."""
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.suffix == ".gz" or data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            yield p, data


def _torch_load(path: Path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _strings(obj) -> list[str]:
    """Every string (keys included) in a nested checkpoint structure."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in _strings(k) + _strings(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v)]
    return []


def find_identifiers(root: Path, identifiers: list[str], skip_suffixes: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Every (file, identifier) where an identifier occurs in any output file (case-insensitive).

    ``skip_suffixes``: files with no text fields (PNG figures) whose compressed bytes can match a
    4-byte name part by chance; base64 images inside HTML are skipped alike, and checkpoints
    (``.pt``) are searched in their strings, not their float bytes."""
    import json
    import re

    # each identifier as UTF-8 and as JSON writes non-ASCII text (\uXXXX escapes, ensure_ascii)
    # 4 bytes: a 2-character CJK name part (6 bytes) is searched, a 2-letter Latin one is not
    needles = [(s, form) for s in identifiers if len(s.encode()) >= 4
               for form in {s.lower().encode(), json.dumps(s.lower())[1:-1].encode()}]
    hits = []
    for p, data in all_output_bytes(root):
        if p.suffix in skip_suffixes:
            continue
        if p.suffix == ".html":
            data = re.sub(rb"data:image/png;base64,[A-Za-z0-9+/=]+", b"", data)
        if p.suffix == ".pt":  # a checkpoint: its text (provenance, names), not its float bytes
            data = "\n".join(_strings(_torch_load(p))).encode()
        low = data.lower()
        hits.extend((str(p.relative_to(root)), s) for s, n in needles if n in low)
    return sorted(set(hits))


from tests.tracking_server import shared_store, shared_tracking_server  # noqa: E402,F401
