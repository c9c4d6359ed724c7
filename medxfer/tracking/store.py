"""MLflow store location and small helpers shared by training, studies and weight sources.

Default store: ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts``
(relative to the working directory); ``MLFLOW_TRACKING_URI`` overrides (a remote server works
unchanged).

The first use of a database store in a process goes through :func:`ensure_store`: MLflow creates
a new database's tables (and migrates an old one) when a client first opens it, and two processes
doing that at once (two shards started together) break the store. A file lock — beside a SQLite
file, in the temporary folder for a database server — lets one process create it at a time.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path

from ..core.errors import MedxferError

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_ARTIFACT_ROOT = "mlruns/artifacts"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the project default; creates ``mlruns/`` for the default."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri == DEFAULT_TRACKING_URI:
        Path("mlruns").mkdir(exist_ok=True)
    return uri


# user@ or user:password@ (a password may hold an unencoded "/"), and password=… in a query string
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?:[^/@\s]+|[^@\s]*:[^@\s]*)@")
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:password|passwd|pwd|token|secret)=)[^&\s]+", re.IGNORECASE)


def redact_credentials(text: str) -> str:
    """``text`` with the ``user:password@`` part and query-string passwords of every URL in it removed."""
    return _QUERY_SECRET.sub(lambda m: m.group("key") + "***", _CREDENTIALS.sub(lambda m: m.group("scheme"), text))


class RunNotFound(MedxferError, ValueError):
    """An MLflow run id that the store does not hold, or a run without the artifact asked for."""


class StoreError(MedxferError, RuntimeError):
    """A tracking store that cannot be opened (its creation lock is held too long)."""


STORE_LOCK_SECONDS = 600.0  # how long a process waits for another one creating the store
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_ready: set[str] = set()
_ready_guard = threading.Lock()


def store_lock_path(uri: str) -> Path | None:
    """The lock file that serialises the first use of database store ``uri``: ``<file>.lock`` beside
    a SQLite file, ``medxfer-store-<digest>.lock`` in the temporary folder for a database server
    (so it serialises processes of one machine only); None for in-memory SQLite, a tracking server
    (``http(s)://``, it creates its store itself) and file stores."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in _DATABASE_SCHEMES:
        return None
    if scheme == "sqlite":
        path = uri.split("://", 1)[1].split("?", 1)[0] if "://" in uri else ""
        path = path[1:] if path.startswith("/") else path  # sqlite:///rel, sqlite:////abs
        if path in ("", ":memory:"):
            return None
        return Path(path).with_name(Path(path).name + ".lock")
    return Path(tempfile.gettempdir()) / f"medxfer-store-{hashlib.sha256(uri.encode()).hexdigest()[:16]}.lock"


def ensure_store(uri: str | None = None) -> str:
    """Open the store ``uri`` (default :func:`tracking_uri`) once per process under its
    :func:`store_lock_path`, so that concurrent first uses of a new database create its tables one
    after the other; returns the URI. Later calls in the process cost nothing."""
    import mlflow
    from filelock import FileLock, Timeout

    uri = uri or tracking_uri()
    lock = store_lock_path(uri)
    key = str(lock.resolve()) if lock is not None else uri
    with _ready_guard:
        if key in _ready:
            return uri
        if lock is not None and lock.parent.is_dir():
            try:
                with FileLock(str(lock), timeout=STORE_LOCK_SECONDS):
                    mlflow.MlflowClient(tracking_uri=uri)  # opening the store creates or migrates its tables
            except Timeout:
                raise StoreError(f"{lock}: another process has held the tracking store's creation lock for "
                                 f"{STORE_LOCK_SECONDS:.0f} s; is a medxfer or mlflow process stuck?") from None
        _ready.add(key)
    return uri


def get_run(run_id: str):
    """The MLflow run ``run_id`` of the project store; :class:`RunNotFound` if it has none."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_run(run_id)
    except MlflowException as exc:
        # MLflow's text may hold the server URL: a server URI can carry credentials
        detail = redact_credentials(exc.message.splitlines()[0])
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RunNotFound(f"run:{run_id}: no such MLflow run in the tracking store ({detail})") from None
        raise RunNotFound(f"run:{run_id}: the tracking store could not be read ({detail})") from None


def download_run_artifact(run_id: str, artifact_path: str, dst: str | os.PathLike | None = None) -> Path:
    """Download one artifact of ``run_id`` from the tracking store; a clear error if absent."""
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr for real messages
    get_run(run_id)
    dst = Path(dst) if dst else Path(tempfile.mkdtemp(prefix="medxfer-run-"))
    try:
        return Path(client().download_artifacts(run_id, artifact_path, str(dst)))
    except (MlflowException, OSError) as exc:
        detail = redact_credentials(str(exc).splitlines()[0])
        raise RunNotFound(f"run:{run_id}: the run has no artifact {artifact_path!r} ({detail})") from None


def client():
    """An ``MlflowClient`` on the project store (never the fluent global API: several runs, one process);
    the store's first use in the process is serialised with other processes (:func:`ensure_store`)."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=ensure_store(tracking_uri()))


def experiment_id(mlflow_client, name: str, create: bool = True) -> str | None:
    """The id of experiment ``name``; created (artifacts under ``mlruns/artifacts`` for the default
    store) when absent and ``create``, else None. Safe when another process creates it concurrently."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if not create:
        return None
    location = None
    if (os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI) == DEFAULT_TRACKING_URI:
        location = Path(DEFAULT_ARTIFACT_ROOT).resolve().as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - created concurrently by another process
        return mlflow_client.get_experiment_by_name(name).experiment_id


def search_all_runs(mlflow_client, experiment_id: str, filter_string: str, order_by: list[str] | None = None) -> list:
    """Every active run of an experiment matching ``filter_string`` (all pages)."""
    from mlflow.entities import ViewType

    out, token = [], None
    while True:
        page = mlflow_client.search_runs([experiment_id], filter_string=filter_string,
                                         run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, order_by=order_by,
                                         page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow ui`` command line bound to ``host`` and the environment to run it in.

    The store's URI (which may hold a database password) travels in the environment as
    ``MLFLOW_BACKEND_STORE_URI`` — the variable ``mlflow ui``/``mlflow server`` reads for
    ``--backend-store-uri`` — never on the command line, which every user of the machine sees (``ps``).
    """
    import sys

    uri = tracking_uri()
    if uri.startswith("sqlite:"):  # a new local store is created under its lock: no race with new shards
        ensure_store(uri)
    env = dict(os.environ, MLFLOW_BACKEND_STORE_URI=uri)
    return [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port)], env
