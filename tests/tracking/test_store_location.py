"""Where runs go: one store from every folder and process, an absolute URI, and ``medxfer ui``
refusing a store with nothing to show instead of creating one."""
from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from medxfer.cli import main
from medxfer.tracking import (EmptyStoreError, check_store_has_runs, client, describe_store, experiment_id,
                              open_runs_command, resolve_tracking_uri, tracking_uri)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """$MEDXFER_HOME in the test's folder and no $MLFLOW_TRACKING_URI: the default store applies."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def exec_calls(monkeypatch):
    """``os.execve`` replaced by a recorder: ``medxfer ui`` ends instead of becoming MLflow."""
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, list(argv), dict(env))))
    return calls


def _folders(tmp_path: Path, *names: str) -> list[Path]:
    for name in names:
        (tmp_path / name).mkdir()
    return [tmp_path / name for name in names]


def test_runs_started_from_two_folders_land_in_one_store(home, tmp_path, monkeypatch, migrated_mlflow_db):
    """A training started in the cohort's folder and one started in an examples folder write to the same
    database; the artifact root is absolute beside it; neither working folder gets an ``mlruns/``."""
    cohort, examples = _folders(tmp_path, "cohort", "examples")
    (home / "mlruns").mkdir(parents=True)
    shutil.copyfile(migrated_mlflow_db, home / "mlruns" / "mlflow.db")
    run_ids = []
    for folder in (cohort, examples):
        monkeypatch.chdir(folder)
        c = client()
        run_ids.append(c.create_run(experiment_id(c, "medxfer/train")).info.run_id)
    with sqlite3.connect(home / "mlruns" / "mlflow.db") as con:
        stored = {row[0] for row in con.execute("SELECT run_uuid FROM runs")}
    assert stored == set(run_ids)
    assert {mlflow.MlflowClient(tracking_uri()).get_run(r).info.artifact_uri for r in run_ids} == {
        (home / "mlruns" / "artifacts" / r / "artifacts").as_uri() for r in run_ids}
    assert list(cohort.iterdir()) == [] and list(examples.iterdir()) == []


def test_another_process_in_another_folder_resolves_the_same_absolute_store(home, tmp_path):
    """What MONAI's runner (``python -m monai.bundle run``, its own process, started anywhere) resolves is
    what ``medxfer train`` resolves here: one absolute URI under $MEDXFER_HOME."""
    (elsewhere,) = _folders(tmp_path, "elsewhere")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    code = "from medxfer.tracking import resolve_tracking_uri; print(resolve_tracking_uri())"
    printed = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                             timeout=60, check=True).stdout
    here = resolve_tracking_uri()
    assert printed.strip() == here == "sqlite:///" + str(home / "mlruns" / "mlflow.db")
    assert Path(here.removeprefix("sqlite:///")).is_absolute()


def test_the_environment_wins_and_a_relative_sqlite_path_is_made_absolute(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/mlflow.db")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://db.example.org/mlflow")
    assert tracking_uri() == "postgresql://db.example.org/mlflow"
    assert not home.exists()  # the default store is not made when the environment names another


def test_an_empty_store_is_refused_with_the_store_and_how_to_name_another(home, tmp_path, migrated_mlflow_db):
    """No database, or one without a run: EmptyStoreError naming the absolute store and how to point
    elsewhere; looking creates nothing. A store holding a run passes."""
    with pytest.raises(EmptyStoreError) as err:
        check_store_has_runs()
    message = str(err.value)
    assert str(home / "mlruns" / "mlflow.db") in message and "does not exist" in message
    assert "MLFLOW_TRACKING_URI=" in message and "MEDXFER_HOME=" in message and "\n" not in message
    assert not home.exists()

    empty = tmp_path / "empty" / "mlflow.db"
    empty.parent.mkdir()
    shutil.copyfile(migrated_mlflow_db, empty)
    before = empty.read_bytes()
    with pytest.raises(EmptyStoreError, match="holds no run"):
        check_store_has_runs(f"sqlite:///{empty}")
    assert empty.read_bytes() == before and sorted(p.name for p in empty.parent.iterdir()) == ["mlflow.db"]

    not_mlflow = tmp_path / "notes.db"
    sqlite3.connect(not_mlflow).close()
    with pytest.raises(EmptyStoreError, match="not an MLflow database"):
        check_store_has_runs(f"sqlite:///{not_mlflow}")

    c = mlflow.MlflowClient(f"sqlite:///{empty}")
    c.create_run(c.create_experiment("x", artifact_location=(tmp_path / "artifacts").as_uri()))
    assert check_store_has_runs(f"sqlite:///{empty}") == f"sqlite:///{empty}"


def test_a_file_store_is_checked_for_runs_too(tmp_path):
    with pytest.raises(EmptyStoreError, match="does not exist"):
        check_store_has_runs((tmp_path / "mlruns").as_uri())
    (tmp_path / "mlruns" / "0").mkdir(parents=True)
    (tmp_path / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
    with pytest.raises(EmptyStoreError, match="holds no run"):
        check_store_has_runs(str(tmp_path / "mlruns"))
    (tmp_path / "mlruns" / "0" / "f00d").mkdir()
    (tmp_path / "mlruns" / "0" / "f00d" / "meta.yaml").write_text("run_id: f00d\n")
    assert check_store_has_runs(str(tmp_path / "mlruns")) == str(tmp_path / "mlruns")


def test_medxfer_ui_on_an_empty_store_exits_with_the_hint_and_creates_nothing(home, tmp_path, monkeypatch,
                                                                             exec_calls):
    (elsewhere,) = _folders(tmp_path, "elsewhere")
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(main, ["ui"])
    assert result.exit_code == 2 and exec_calls == []
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medxfer: error: the MLflow store sqlite:///")
    assert str(home / "mlruns" / "mlflow.db") in lines[0] and "MLFLOW_TRACKING_URI=" in lines[0]
    assert not home.exists() and list(elsewhere.iterdir()) == []


def test_medxfer_ui_serves_the_absolute_store_it_prints(home, tmp_path, monkeypatch, exec_calls, db_with_a_run):
    """From any folder: the server gets the absolute default store (artifacts beside it) and the printed
    line names that same absolute URI."""
    (home / "mlruns").mkdir(parents=True)
    shutil.copyfile(db_with_a_run, home / "mlruns" / "mlflow.db")
    (elsewhere,) = _folders(tmp_path, "elsewhere")
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(main, ["ui"])
    assert result.exit_code == 0, result.output
    uri = f"sqlite:///{home / 'mlruns' / 'mlflow.db'}"
    assert f"(store {uri} (the default store in MEDXFER_HOME={home}))" in result.stderr
    (_, _, env), = exec_calls
    assert env["MLFLOW_BACKEND_STORE_URI"] == uri
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == str(home / "mlruns" / "artifacts")
    assert list(elsewhere.iterdir()) == []


def test_describe_and_open_command_name_the_store_without_credentials(home, tmp_path, monkeypatch):
    """The printed store is absolute and says where it comes from; the command that opens a store is exact
    (shell-quoted) for a local one and never spells out a password."""
    assert describe_store() == f"sqlite:///{home / 'mlruns' / 'mlflow.db'} (the default store in MEDXFER_HOME={home})"
    spaced = f"sqlite:///{tmp_path / 'my runs' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", spaced)
    assert describe_store() == f"{spaced} (from MLFLOW_TRACKING_URI)"
    assert shlex.split(open_runs_command(spaced)) == [f"MLFLOW_TRACKING_URI={spaced}", "medxfer", "ui"]
    secret = "postgresql://u:pw-9x@db.example.org/mlflow"
    assert "pw-9x" not in open_runs_command(secret) and "medxfer ui" in open_runs_command(secret)
    assert "pw-9x" not in describe_store(secret)
    assert open_runs_command("https://mlflow.example.org").startswith("open https://mlflow.example.org")
