"""$MEDXFER_HOME: where the secret and the weights registry live."""
from __future__ import annotations

from pathlib import Path

from medxfer.core import medxfer_home


def test_medxfer_home_honours_the_environment(tmp_path, monkeypatch):
    """$MEDXFER_HOME wins (tests and shared installs never touch ~/.medxfer)."""
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "state"))
    assert medxfer_home() == tmp_path / "state"


def test_medxfer_home_defaults_to_dot_medxfer_in_the_user_home(tmp_path, monkeypatch):
    """Unset or empty $MEDXFER_HOME means ~/.medxfer of the current user."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MEDXFER_HOME", raising=False)
    assert medxfer_home() == Path(tmp_path) / ".medxfer"
    monkeypatch.setenv("MEDXFER_HOME", "")
    assert medxfer_home() == Path(tmp_path) / ".medxfer"
