"""A study's tracking settings (spec ``tracking: {uri, artifact_root}`` / environment): validated and passed
to worker processes, an explicit artifact root that new experiments use, a database server without one
refused, SQLite on a network filesystem refused; and a real shared store (PostgreSQL behind an MLflow
server with a served artifact store) used by several processes."""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from pathlib import Path

import mlflow
import pytest

from medxfer.tracking import store
from medxfer.tracking.store import (ARTIFACT_ROOT_ENV, StoreError, check_store_filesystem, client, ensure_store,
                                    experiment_id, is_network_filesystem, mount_of, new_experiment_artifact_location,
                                    resolve_tracking_uri, use_tracking)

# id parent major:minor root mount-point options [optional fields] - fstype source super-options
MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:50 / /nfshome rw,relatime shared:20 - nfs4 fileserver:/export/home rw,vers=4.2
41 40 254:3 / /nfshome/alice/localdisk rw,relatime - ext4 /dev/vdb rw
42 22 0:51 / /scratch rw,relatime - lustre 10.0.0.1@tcp:/scratch rw
43 22 0:52 / /mnt/lab\\040share rw,relatime - cifs //nas/lab rw
44 22 0:53 / /remote rw,nosuid - fuse.sshfs alice@login:/data rw
"""


@pytest.fixture
def tracking_env(monkeypatch, tmp_path) -> Path:
    """Neither tracking variable set (both restored after the test, even if the code under test sets them),
    ``MEDXFER_HOME`` in the test's folder, cwd = tmp_path."""
    for name in ("MLFLOW_TRACKING_URI", ARTIFACT_ROOT_ENV, "MEDXFER_ALLOW_NETWORK_STORE",
                 "MEDXFER_ALLOW_NETWORK_SQLITE"):
        monkeypatch.setenv(name, "")  # records the original value, so that the test's writes are undone
        monkeypatch.delenv(name)
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_use_tracking_sets_the_variables_worker_processes_inherit(tracking_env, monkeypatch):
    """A relative SQLite path is made absolute once, so a worker started in another folder opens the same file."""
    use_tracking("sqlite:///stores/mlflow.db", str(tracking_env / "shared" / ".." / "artifacts"))
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tracking_env / 'stores' / 'mlflow.db'}"
    assert os.environ[ARTIFACT_ROOT_ENV] == str(tracking_env / "artifacts")
    (tracking_env / "elsewhere").mkdir()
    monkeypatch.chdir(tracking_env / "elsewhere")
    assert resolve_tracking_uri() == f"sqlite:///{tracking_env / 'stores' / 'mlflow.db'}"


def test_the_spec_wins_over_the_environment_and_none_leaves_it(tracking_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-server:5000")
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, "s3://env-bucket/medxfer")
    use_tracking("https://team-server.example:443", None)
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://team-server.example:443"
    assert os.environ[ARTIFACT_ROOT_ENV] == "s3://env-bucket/medxfer"
    use_tracking(None, "gs://spec-bucket/runs")
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://team-server.example:443"
    assert os.environ[ARTIFACT_ROOT_ENV] == "gs://spec-bucket/runs"


@pytest.mark.parametrize("uri, root, expected", [
    ("mlruns", None, "no scheme"),
    ("ftp://host/mlruns", None, "unsupported scheme 'ftp'"),
    ("sqlite:///:memory:", None, "in-memory"),
    ("http://:5000", None, "names no host"),
    ("sqlite:////abs/mlflow.db", "artifacts", "relative path"),
    ("sqlite:////abs/mlflow.db", "  ", "empty"),
    ("sqlite:////abs/mlflow.db", "file:artifacts", "absolute path"),
])
def test_invalid_settings_are_refused_and_nothing_is_set(tracking_env, uri, root, expected):
    with pytest.raises(StoreError, match=expected):
        use_tracking(uri, root)
    assert "MLFLOW_TRACKING_URI" not in os.environ and ARTIFACT_ROOT_ENV not in os.environ


def test_artifact_root_holds_the_artifacts_of_a_new_experiment_in_the_default_store(tracking_env, migrated_mlflow_db):
    """With the default SQLite store under $MEDXFER_HOME and a shared root, a run's artifact is written under
    the root (not beside the database, not in the current folder)."""
    default_db = tracking_env / "home" / "mlruns" / "mlflow.db"
    default_db.parent.mkdir(parents=True)
    shutil.copyfile(migrated_mlflow_db, default_db)
    shared = tracking_env / "team" / "artifacts"
    use_tracking(None, str(shared))
    c = client()
    assert c.tracking_uri == f"sqlite:///{default_db}"
    exp = c.get_experiment(experiment_id(c, "medxfer/root-test"))
    assert exp.artifact_location == shared.as_uri()
    run_id = c.create_run(exp.experiment_id).info.run_id
    c.log_text(run_id, "fold 1", "notes/fold.txt")
    assert (shared / run_id / "artifacts" / "notes" / "fold.txt").read_text() == "fold 1"
    assert not (default_db.parent / "artifacts").exists() and not (tracking_env / "mlruns").exists()


class _RecordingClient:
    """Stands in for an MlflowClient on a store that is never contacted: no experiment yet, creations recorded."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri, self.created = tracking_uri, []

    def get_experiment_by_name(self, name):
        return None

    def create_experiment(self, name, artifact_location=None, tags=None):
        self.created.append((name, artifact_location))
        return "1"


def test_a_database_server_without_artifact_root_is_refused_before_connecting(tracking_env):
    """db.invalid cannot resolve: a refusal naming the fix (not a connection error) proves nothing connected."""
    uri = "postgresql://medxfer:s3cret@db.invalid:5432/mlflow"
    with pytest.raises(StoreError) as refused:
        use_tracking(uri, None)
    message = str(refused.value)
    assert "./mlruns" in message and "tracking.artifact_root" in message and ARTIFACT_ROOT_ENV in message
    assert "--serve-artifacts" in message and "s3cret" not in message
    assert "MLFLOW_TRACKING_URI" not in os.environ

    fake = _RecordingClient(uri)
    with pytest.raises(StoreError, match="no artifact root"):
        experiment_id(fake, "medxfer/study")
    assert fake.created == []

    use_tracking(uri, str(tracking_env / "shared"))  # with a root: accepted, and new experiments go there
    assert os.environ["MLFLOW_TRACKING_URI"] == uri
    assert experiment_id(fake, "medxfer/study") == "1"
    assert fake.created == [("medxfer/study", (tracking_env / "shared").as_uri())]


def test_a_tracking_server_keeps_its_own_artifact_root_unless_one_is_given(tracking_env, monkeypatch):
    assert new_experiment_artifact_location("http://tracking:5000") is None
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, "s3://bucket/medxfer")
    assert new_experiment_artifact_location("http://tracking:5000") == "s3://bucket/medxfer"
    assert new_experiment_artifact_location("mysql://u@db/mlflow") == "s3://bucket/medxfer"


@pytest.mark.parametrize("path, fstype, point", [
    ("/nfshome/alice/.medxfer/mlruns", "nfs4", "/nfshome"),
    ("/nfshome/alice/localdisk/mlruns", "ext4", "/nfshome/alice/localdisk"),  # a local disk mounted inside
    ("/nfshomework/mlruns", "ext4", "/"),  # a prefix of the name is not a parent folder
    ("/scratch", "lustre", "/scratch"),
    ("/mnt/lab share/mlruns", "cifs", "/mnt/lab share"),  # \040 in mountinfo is a space
    ("/remote/x", "fuse.sshfs", "/remote"),
])
def test_mount_of_finds_the_filesystem_holding_a_folder(path, fstype, point):
    mount = mount_of(path, MOUNTINFO)
    assert (mount.fstype, mount.point) == (fstype, point)


def test_network_filesystem_types():
    assert all(map(is_network_filesystem, ["nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "glusterfs",
                                            "fuse.sshfs", "ceph", "fuse.cephfs", "9p", "afs"]))
    assert not any(map(is_network_filesystem, ["ext4", "xfs", "btrfs", "zfs", "tmpfs", "overlay", "fuseblk"]))


def test_sqlite_on_a_network_filesystem_is_refused_with_the_reason_and_the_fix(tracking_env, monkeypatch):
    uri = "sqlite:////nfshome/alice/.medxfer/mlruns/mlflow.db"
    with pytest.raises(StoreError) as refused:
        check_store_filesystem(uri, MOUNTINFO)
    message = str(refused.value)
    assert message.startswith("/nfshome/alice/.medxfer/mlruns/mlflow.db: ")
    assert "nfs4 fileserver:/export/home mounted at /nfshome" in message
    assert "file locking" in message and "tracking server" in message and "MEDXFER_ALLOW_NETWORK_STORE=1" in message
    check_store_filesystem("sqlite:////nfshome/alice/localdisk/mlflow.db", MOUNTINFO)  # local disk: fine
    check_store_filesystem("http://tracking:5000", MOUNTINFO)  # a server: not its business
    check_store_filesystem("postgresql://db.invalid/mlflow", MOUNTINFO)
    monkeypatch.setenv("MEDXFER_ALLOW_NETWORK_STORE", "1")  # a single runner who knows
    check_store_filesystem(uri, MOUNTINFO)
    monkeypatch.delenv("MEDXFER_ALLOW_NETWORK_STORE")
    monkeypatch.setenv("MEDXFER_ALLOW_NETWORK_SQLITE", "1")  # the variable's earlier name still works
    check_store_filesystem(uri, MOUNTINFO)


@pytest.mark.parametrize("uri", ["file:///nfshome/alice/mlruns", "file:/scratch/study/mlruns", "/mnt/lab share/mlruns",
                                 "file://localhost/scratch/mlruns", "file:///mnt/lab%20share/mlruns"])
def test_a_file_store_on_a_network_filesystem_is_refused_too(uri, tracking_env):
    """MLflow's file store: a claim is a new folder, which another node's cached listing may not show yet."""
    with pytest.raises(StoreError) as refused:
        check_store_filesystem(uri, MOUNTINFO)
    message = str(refused.value)
    assert "the MLflow file store is on a network filesystem" in message and "claim" in message
    assert "tracking server" in message and "MEDXFER_ALLOW_NETWORK_STORE=1" in message
    check_store_filesystem("file:///nfshome/alice/localdisk/mlruns", MOUNTINFO)  # a local disk inside: fine
    check_store_filesystem("databricks", MOUNTINFO)  # MLflow's one bare word that is not a folder


def test_ensure_store_refuses_a_sqlite_store_on_a_network_filesystem(tracking_env, monkeypatch):
    """This process's mount table says the store's folder is NFS: no database is created there."""
    folder = tracking_env / "on-nfs"
    folder.mkdir()
    real_mount_of = store.mount_of
    monkeypatch.setattr(store, "mount_of", lambda path, mountinfo=None: real_mount_of(
        path, MOUNTINFO + f"50 22 0:60 / {os.path.realpath(folder)} rw - nfs server:/x rw\n"))
    with pytest.raises(StoreError, match="network filesystem"):
        ensure_store(f"sqlite:///{folder}/mlflow.db")
    assert list(folder.iterdir()) == []


# --- a real shared store: PostgreSQL behind an MLflow tracking server that serves the artifacts ---

def test_runs_and_artifacts_go_through_the_shared_tracking_server(shared_store, shared_tracking_server, tmp_path):
    """A run logged by medxfer's client keeps its artifact in the server's artifact store (nothing written in
    the current folder) and downloads back through the server."""
    c = client()
    exp_id = experiment_id(c, f"medxfer/shared-{tmp_path.name}")
    run_id = c.create_run(exp_id).info.run_id
    c.log_text(run_id, "auc 0.91", "report/summary.txt")
    c.set_terminated(run_id)
    assert c.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    on_server = list(shared_tracking_server.artifacts.rglob("summary.txt"))
    assert [p.read_text() for p in on_server] == ["auc 0.91"] and run_id in str(on_server[0])

    downloaded = store.download_run_artifact(run_id, "report/summary.txt", tmp_path / "download")
    assert downloaded.read_text() == "auc 0.91"
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()


def _create_experiments(names: list[str], barrier, results) -> None:
    """One runner: the experiment ids of ``names``, created at the same moment as the other runner."""
    try:
        c = client()  # connected before the start line: only the creations race
        barrier.wait(timeout=120)
        results.put([experiment_id(c, name) for name in names])
    except BaseException as exc:  # noqa: BLE001 - reported to the parent process
        results.put(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")


def test_two_processes_creating_one_experiment_at_once_get_the_same_id(shared_store, tmp_path):
    names = [f"medxfer/race-{tmp_path.name}-{i}" for i in range(5)]
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_create_experiments, args=(names, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(isinstance(o, list) for o in outcomes), outcomes
    assert outcomes[0] == outcomes[1] and None not in outcomes[0]
    c = mlflow.MlflowClient(shared_store)
    for name, exp_id in zip(names, outcomes[0]):
        assert [e.experiment_id for e in c.search_experiments(filter_string=f"name = '{name}'")] == [exp_id]
