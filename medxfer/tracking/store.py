"""MLflow store location and small helpers shared by training, studies and weight sources.

Where runs go, from any folder and any process:

1. ``$MLFLOW_TRACKING_URI`` when set (a tracking server, a database, a SQLite file; a relative
   ``sqlite:///`` path is made absolute against the current folder once, here);
2. otherwise the user's store ``sqlite:////<MEDXFER_HOME>/mlruns/mlflow.db``
   (:func:`default_tracking_uri`; ``MEDXFER_HOME`` defaults to ``~/.medxfer``).

Why ``$MEDXFER_HOME`` and not a project root: a clinical researcher runs medxfer from several
folders — the cohort's, an examples folder, ``$HOME`` in a Slurm job, the bundle folder for
``python -m monai.bundle run`` — and expects ``medxfer ui`` from any of them to show every run.
A project root has to be guessed (a git root is often absent, or an unrelated repository such as
a dotfiles one; a marker file needs a set-up step nobody remembers), and a command run outside
the tree would silently fall back to a second store: the very split this module prevents.
``$MEDXFER_HOME`` is already the one per-user place medxfer reads (the pseudonymisation secret,
the weights registry that ``run:``/named weights resolve against), so the runs live beside the
weights they name. Keep projects apart with experiments (one per study) or by setting
``MLFLOW_TRACKING_URI`` (or ``MEDXFER_HOME``) per project; on a cluster, where SQLite on a
network file system is fragile under concurrent writers, point ``MLFLOW_TRACKING_URI`` at a
tracking server or database.

The artifacts of a local SQLite store live beside its database, ``<database folder>/artifacts``
(:func:`artifact_root`), fixed as an absolute path when medxfer creates an experiment — never the
current folder of whichever process happened to create it (MLflow's own default).

The first use of a database store in a process goes through :func:`ensure_store`: MLflow creates
a new database's tables (and migrates an old one) when a client first opens it, and two processes
doing that at once (two shards started together) break the store. A file lock — beside a SQLite
file, in the temporary folder for a database server — lets one process create it at a time.

``medxfer ui`` looks before it serves: :func:`check_store_has_runs` refuses a store that does not
exist or holds no run (naming the store it looked at and how to point at another one) instead of
letting MLflow create an empty one.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import sqlite3
import tempfile
import threading
from contextlib import closing
from pathlib import Path

from ..core.errors import MedxferError
from .layout import EXPERIMENT_KIND_TRAINING, TAG_EXPERIMENT_KIND
from ..core.home import medxfer_home

STORE_FOLDER = "mlruns"  # the default store's folder under $MEDXFER_HOME
DATABASE_FILE = "mlflow.db"
ARTIFACTS_FOLDER = "artifacts"  # beside the database of a local SQLite store


def sqlite_uri(path: str | os.PathLike) -> str:
    """The ``sqlite:///`` URI of the database file ``path``, made absolute (``sqlite:////abs/mlflow.db``)."""
    return f"sqlite:///{Path(path).expanduser().absolute()}"


def default_tracking_uri() -> str:
    """The user's store when ``$MLFLOW_TRACKING_URI`` is unset: ``$MEDXFER_HOME/mlruns/mlflow.db`` (absolute)."""
    return sqlite_uri(medxfer_home() / STORE_FOLDER / DATABASE_FILE)


def _sqlite_file(uri: str) -> str | None:
    """The database path written in a ``sqlite:`` URI as given (maybe relative); None for another scheme
    and for in-memory SQLite."""
    if uri.split(":", 1)[0].split("+", 1)[0].lower() != "sqlite":
        return None
    path = uri.split("://", 1)[1].split("?", 1)[0] if "://" in uri else ""
    path = path[1:] if path.startswith("/") else path  # sqlite:///rel, sqlite:////abs
    return None if path in ("", ":memory:") else path


def sqlite_path(uri: str) -> Path | None:
    """The absolute database file of a local SQLite store URI; None for any other store."""
    path = _sqlite_file(uri)
    return Path(path).expanduser().absolute() if path is not None else None


def resolve_tracking_uri() -> str:
    """Where runs go, without touching the disk: ``$MLFLOW_TRACKING_URI`` (a relative SQLite path made
    absolute) or :func:`default_tracking_uri`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return default_tracking_uri()
    path = _sqlite_file(uri)
    if path is not None and not Path(path).expanduser().is_absolute():
        query = uri.split("?", 1)[1] if "?" in uri.split("://", 1)[-1] else ""
        return sqlite_uri(path) + (f"?{query}" if query else "")
    return uri


def tracking_uri() -> str:
    """:func:`resolve_tracking_uri`, with the default store's folder created (for a process about to write)."""
    uri = resolve_tracking_uri()
    path = sqlite_path(uri)
    if path is not None and not os.environ.get("MLFLOW_TRACKING_URI"):
        path.parent.mkdir(parents=True, exist_ok=True)
    return uri


def artifact_root(uri: str | None = None) -> Path | None:
    """Where a local SQLite store (default :func:`resolve_tracking_uri`) keeps artifacts:
    ``<database folder>/artifacts``; None for any other store (a server or database keeps its own)."""
    path = sqlite_path(uri or resolve_tracking_uri())
    return path.parent / ARTIFACTS_FOLDER if path is not None else None


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
        path = _sqlite_file(uri)
        return Path(path).with_name(Path(path).name + ".lock") if path is not None else None
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
    """The id of experiment ``name``; created when absent and ``create`` (artifacts in the absolute
    :func:`artifact_root` of a local SQLite store), else None. Safe when another process creates it
    concurrently."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if not create:
        return None
    root = artifact_root(getattr(mlflow_client, "tracking_uri", None) or resolve_tracking_uri())
    location = root.as_uri() if root is not None else None  # runs are <root>/<run id>/artifacts
    try:
        # typed for model training: MLflow 3's UI would open it in its GenAI view (see medxfer.tracking.ui)
        return mlflow_client.create_experiment(name, artifact_location=location,
                                               tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING})
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
    root = artifact_root(uri)
    if root is not None:  # artifacts the UI itself creates go beside the database, not into its ./mlartifacts
        env.setdefault("MLFLOW_ARTIFACTS_DESTINATION", str(root))
    return [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port)], env


class EmptyStoreError(StoreError):
    """A local store that does not exist or holds no run: ``medxfer ui`` would show (and create) an empty one."""


def describe_store(uri: str | None = None) -> str:
    """The store ``uri`` (default :func:`resolve_tracking_uri`) as printed for the user: credentials
    removed, and where it comes from — ``$MLFLOW_TRACKING_URI`` or the default under ``$MEDXFER_HOME``."""
    uri = uri or resolve_tracking_uri()
    if os.environ.get("MLFLOW_TRACKING_URI") and uri == resolve_tracking_uri():
        origin = "from MLFLOW_TRACKING_URI"
    elif uri == default_tracking_uri():
        origin = f"the default store in MEDXFER_HOME={medxfer_home()}"
    else:
        origin = ""
    return redact_credentials(uri) + (f" ({origin})" if origin else "")


def _store_problem(uri: str) -> str | None:
    """Why the local store ``uri`` has nothing to show (None when it holds a run, or cannot be told
    without connecting: a database server, a tracking server)."""
    db = sqlite_path(uri)
    if db is not None:
        if not db.is_file():
            return "does not exist"
        try:  # read-only: looking must neither create nor migrate anything
            with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
                has_run = con.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is not None
        except sqlite3.Error:
            return "is not an MLflow database"
        return None if has_run else "holds no run"
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("", "file"):  # an MLflow file store: <root>/<experiment id>/<run id>/meta.yaml
        root = Path(uri.split("://", 1)[1] if scheme else uri).expanduser()
        if not root.is_dir():
            return "does not exist"
        runs = (p for p in root.glob("*/*/meta.yaml") if p.parts[-3] != ".trash")
        return None if next(runs, None) is not None else "holds no run"
    return None


def check_store_has_runs(uri: str | None = None) -> str:
    """``uri`` (default :func:`resolve_tracking_uri`) when it holds at least one run, else
    :class:`EmptyStoreError` naming the store looked at and how to point at another one. Creates
    nothing; a database or tracking server is not checked (that would connect to it)."""
    uri = uri or resolve_tracking_uri()
    problem = _store_problem(uri)
    if problem is None:
        return uri
    raise EmptyStoreError(
        f"the MLflow store {describe_store(uri)} {problem}: nothing to show. Runs of `medxfer train`, "
        "`medxfer study run` and `python -m monai.bundle run` go there; to open a store elsewhere, name it: "
        "MLFLOW_TRACKING_URI=sqlite:////path/to/mlflow.db medxfer ui (or MEDXFER_HOME=/path/to/home medxfer ui)")


def open_runs_command(uri: str | None = None) -> str:
    """The shell command that opens the runs of store ``uri`` (default :func:`resolve_tracking_uri`) from
    any folder: ``MLFLOW_TRACKING_URI=<uri> medxfer ui``; for a tracking server, its address. A URI with
    credentials is not spelled out (``medxfer ui`` with ``MLFLOW_TRACKING_URI`` set as now)."""
    uri = uri or resolve_tracking_uri()
    shown = redact_credentials(uri)
    if uri.split("://", 1)[0].lower() in ("http", "https"):
        return f"open {shown} (the tracking server's own UI)"
    if shown != uri:
        return "medxfer ui   (with MLFLOW_TRACKING_URI set as now)"
    return f"MLFLOW_TRACKING_URI={shlex.quote(uri)} medxfer ui"
