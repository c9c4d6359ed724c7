"""Shared fixtures: an isolated MEDXFER_HOME (secret), the pydicom test files, ../shared/data."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def medxfer_home(tmp_path_factory, monkeypatch):
    """Each test session gets its own secret; nothing touches the user's ~/.medxfer."""
    home = tmp_path_factory.getbasetemp() / "medxfer_home"
    monkeypatch.setenv("MEDXFER_HOME", str(home))
    return home


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


def find_identifiers(root: Path, identifiers: list[str]) -> list[tuple[str, str]]:
    """Every (file, identifier) where an identifier occurs in any output file (case-insensitive)."""
    needles = [(s, s.lower().encode()) for s in identifiers if len(s) >= 4]
    hits = []
    for p, data in all_output_bytes(root):
        low = data.lower()
        hits.extend((str(p.relative_to(root)), s) for s, n in needles if n in low)
    return hits
