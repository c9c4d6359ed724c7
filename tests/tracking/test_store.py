"""The MLflow store helpers: where the store is, run and artifact look-ups, experiments, paged searches."""
from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import mlflow
import pytest

from medxfer.core import MedxferError
from medxfer.tracking import (RunNotFound, client, download_run_artifact, experiment_id, get_run, search_all_runs,
                              tracking_uri)

MISSING = "0" * 32


def _run_with_artifact(tmp_path):
    """A run of the test store holding ``checkpoint/medxfer_checkpoint.pt`` and ``metrics.json``."""
    c = client()
    run = c.create_run(experiment_id(c, "medxfer/store-test"), run_name="with-artifacts")
    (tmp_path / "src").mkdir()
    ckpt = tmp_path / "src" / "medxfer_checkpoint.pt"
    ckpt.write_bytes(b"weights" * 100)
    (tmp_path / "src" / "metrics.json").write_text('{"test_auc": 0.5}')
    c.log_artifact(run.info.run_id, str(ckpt), artifact_path="checkpoint")
    c.log_artifact(run.info.run_id, str(tmp_path / "src" / "metrics.json"))
    return run.info.run_id


def test_tracking_uri_follows_the_environment(store, tmp_path):
    """$MLFLOW_TRACKING_URI is the store; no default ``mlruns/`` folder appears next to it."""
    assert tracking_uri() == store
    assert client().tracking_uri == store
    assert not (tmp_path / "mlruns").exists()


def test_the_default_store_lives_under_medxfer_home(tmp_path, monkeypatch, migrated_mlflow_db):
    """Without $MLFLOW_TRACKING_URI: ``$MEDXFER_HOME/mlruns/mlflow.db`` as an absolute URI, artifacts in
    ``$MEDXFER_HOME/mlruns/artifacts``; nothing in the working folder."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert tracking_uri() == f"sqlite:////{str(tmp_path).lstrip('/')}/home/mlruns/mlflow.db"
    assert (tmp_path / "home" / "mlruns").is_dir()
    shutil.copyfile(migrated_mlflow_db, tmp_path / "home" / "mlruns" / "mlflow.db")
    c = client()
    exp = c.get_experiment(experiment_id(c, "medxfer/train"))
    assert exp.artifact_location == (tmp_path / "home" / "mlruns" / "artifacts").as_uri()
    assert list((tmp_path / "work").iterdir()) == []


def test_get_run_finds_a_run_and_names_an_unknown_one(store, tmp_path):
    """A known run comes back; an unknown id is a one-line RunNotFound (a MedxferError and ValueError) that
    names the id and does not repeat the store's location."""
    run_id = _run_with_artifact(tmp_path)
    assert get_run(run_id).info.run_name == "with-artifacts"
    with pytest.raises(RunNotFound) as err:
        get_run(MISSING)
    assert isinstance(err.value, MedxferError) and isinstance(err.value, ValueError)
    message = str(err.value)
    assert MISSING in message and "no such MLflow run" in message
    assert "\n" not in message
    assert str(tmp_path) not in message and "mlflow.db" not in message


def test_get_run_never_reveals_server_credentials(tmp_path, monkeypatch):
    """A tracking server URL can carry a user and password: an error about a run never repeats them."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cr3t-pw@127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(RunNotFound) as err:
        get_run(MISSING)
    assert "s3cr3t-pw" not in str(err.value)


def test_download_run_artifact_fetches_the_file(store, tmp_path):
    """An artifact of a run is downloaded into the folder asked for (or a fresh temporary folder)."""
    run_id = _run_with_artifact(tmp_path)
    got = download_run_artifact(run_id, "checkpoint/medxfer_checkpoint.pt", tmp_path / "dst")
    assert got.is_file() and got.read_bytes() == b"weights" * 100
    assert tmp_path / "dst" in got.parents
    anywhere = download_run_artifact(run_id, "metrics.json")
    try:
        assert anywhere.read_text() == '{"test_auc": 0.5}'
        assert anywhere.parent.name.startswith("medxfer-run-")
    finally:
        shutil.rmtree(anywhere.parent)


def test_download_run_artifact_names_what_is_missing(store, tmp_path):
    """A run without the artifact, or no such run: RunNotFound naming the run and the artifact or the run."""
    run_id = _run_with_artifact(tmp_path)
    with pytest.raises(RunNotFound) as err:
        download_run_artifact(run_id, "checkpoint/other.pt", tmp_path / "dst")
    assert run_id in str(err.value) and "'checkpoint/other.pt'" in str(err.value)
    with pytest.raises(RunNotFound, match="no such MLflow run"):
        download_run_artifact(MISSING, "checkpoint/medxfer_checkpoint.pt", tmp_path / "dst2")


def test_experiment_id_creates_only_when_asked(store):
    """``create=False`` looks up and never creates; ``create=True`` creates once and then finds the same id."""
    c = client()
    assert experiment_id(c, "medxfer/new", create=False) is None
    assert c.get_experiment_by_name("medxfer/new") is None
    created = experiment_id(c, "medxfer/new")
    assert created is not None and c.get_experiment(created).name == "medxfer/new"
    assert experiment_id(c, "medxfer/new") == experiment_id(c, "medxfer/new", create=False) == created


def test_experiment_id_when_another_process_creates_it_first(store):
    """Two runners starting together: the one that loses the creation race gets the winner's experiment."""
    other = mlflow.MlflowClient(store)

    class LateClient(mlflow.MlflowClient):
        looked_up = 0

        def get_experiment_by_name(self, name):
            self.looked_up += 1
            if self.looked_up == 1:  # absent when looked up; created by the other process right after
                other.create_experiment(name)
                return None
            return super().get_experiment_by_name(name)

    late = LateClient(store)
    got = experiment_id(late, "medxfer/raced")
    assert got == other.get_experiment_by_name("medxfer/raced").experiment_id
    assert [e.name for e in other.search_experiments() if e.name == "medxfer/raced"] == ["medxfer/raced"]


def test_search_all_runs_follows_every_page(store):
    """Every matching active run comes back even when the server pages its answer (a page here holds 2
    runs); deleted and non-matching runs do not."""
    c = client()
    exp = experiment_id(c, "medxfer/paged")
    wanted = []
    for i in range(5):
        run = c.create_run(exp, run_name=f"cell-{i}", tags={"kind": "cell"})
        wanted.append(run.info.run_id)
    c.create_run(exp, run_name="other", tags={"kind": "study"})
    deleted = c.create_run(exp, run_name="deleted", tags={"kind": "cell"})
    c.delete_run(deleted.info.run_id)

    class SmallPages(mlflow.MlflowClient):
        pages = 0

        def search_runs(self, *args, **kwargs):
            self.pages += 1
            return super().search_runs(*args, **{**kwargs, "max_results": 2})

    paged = SmallPages(store)
    runs = search_all_runs(paged, exp, "tags.kind = 'cell'", order_by=["attributes.run_name DESC"])
    assert [r.info.run_name for r in runs] == [f"cell-{i}" for i in reversed(range(5))]
    assert sorted(r.info.run_id for r in runs) == sorted(wanted)
    assert paged.pages == 3
    assert search_all_runs(c, exp, "tags.kind = 'nothing'") == []


def test_the_first_use_of_a_database_store_is_locked_beside_it(tmp_path):
    """Where the lock that serialises a new store's creation lives (tests/tracking/test_store_lock.py
    races two processes on it): beside a SQLite file, in the temp folder for a database server, none
    for a tracking server or in-memory SQLite; the URI's credentials never appear in its name."""
    from medxfer.tracking.store import ensure_store, store_lock_path

    assert store_lock_path(f"sqlite:///{tmp_path}/mlflow.db") == tmp_path / "mlflow.db.lock"
    assert store_lock_path("sqlite:///mlruns/mlflow.db") == Path("mlruns/mlflow.db.lock")
    server = store_lock_path("postgresql://user:secret@db.example/mlflow")
    assert server.parent == Path(tempfile.gettempdir()) and "secret" not in str(server)
    assert store_lock_path("sqlite://") is None and store_lock_path("sqlite:///:memory:") is None
    assert store_lock_path("http://user:pw@mlflow.example:5000") is None and store_lock_path("file:///x") is None
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert ensure_store(uri) == uri and (tmp_path / "mlflow.db").is_file()
    assert mlflow.MlflowClient(uri).search_experiments()  # the tables exist: the default experiment


@pytest.mark.parametrize("uri, shown", [
    ("postgresql://mlflow:s3cret@db:5432/mlflow", "postgresql://db:5432/mlflow"),
    ("postgresql://mlflow:s3/cr3t@db:5432/mlflow", "postgresql://db:5432/mlflow"),  # "/" in the password
    ("mysql://db:3306/mlflow?user=u&password=s3cret&ssl=1", "mysql://db:3306/mlflow?user=u&password=***&ssl=1"),
    ("sqlite:///mlruns/mlflow.db", "sqlite:///mlruns/mlflow.db"),
    ("http://tracking.example.org/api", "http://tracking.example.org/api"),
])
def test_credentials_are_redacted_in_every_spelling(uri, shown):
    from medxfer.tracking.store import redact_credentials

    assert redact_credentials(f"cannot reach {uri} now") == f"cannot reach {shown} now"
