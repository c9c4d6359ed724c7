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

A study (or a team) names its store and artifact root explicitly with :func:`use_tracking` (the spec's
``tracking: {uri, artifact_root}``, which wins over ``$MLFLOW_TRACKING_URI`` / ``$MEDXFER_ARTIFACT_ROOT``):
it validates them and sets both environment variables, so that every worker process (a process pool, a
Ray worker) inherits the same store. When ``$MEDXFER_ARTIFACT_ROOT`` is set, a new experiment keeps its
artifacts there, whatever the store (:func:`new_experiment_artifact_location`). A database server
(PostgreSQL, MySQL, SQL Server) has no artifact store of its own: without a root MLflow would write to
``./mlruns`` of whichever process created the experiment, so medxfer refuses to create one. SQLite on a
network filesystem (NFS, CIFS, Lustre…) is refused too (:func:`check_store_filesystem`): its file
locking is unreliable there, and concurrent runners corrupt or lock the store; so is an MLflow file store
there (folder listings are cached per client: a claim made on one node is not seen at once on another).

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
import time
from contextlib import closing
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

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


def file_store_path(uri: str) -> Path | None:
    """The absolute folder of an MLflow file store (``file:///path``, or a bare path as MLflow takes one);
    None for any other store."""
    if uri.split(":", 1)[0].lower() in ("databricks", "databricks-uc"):  # MLflow's scheme-less exceptions
        return None
    scheme = _URI_SCHEME.match(uri)
    if scheme and len(scheme.group("scheme")) > 1:  # a URI (one letter: a Windows drive, a path)
        if scheme.group("scheme").lower() != "file":
            return None
        # file:///abs, file://localhost/abs, file:/abs, file:rel; %20 is a space; a host is ignored, as
        # MLflow's own file store ignores it (local_file_uri_to_path)
        path = unquote(urlsplit(uri).path)
    else:
        path = uri
    return Path(path).expanduser().absolute() if path else None


def resolve_tracking_uri() -> str:
    """Where runs go, without touching the disk: ``$MLFLOW_TRACKING_URI`` (a relative SQLite path made
    absolute) or :func:`default_tracking_uri`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return default_tracking_uri()
    path = _sqlite_file(uri)
    return _absolute_sqlite_uri(uri, path) if path is not None else uri


def _absolute_sqlite_uri(uri: str, path: str) -> str:
    """SQLite ``uri`` (database file ``path`` as written in it) with a relative path made absolute."""
    if Path(path).expanduser().is_absolute():
        return uri
    query = uri.split("?", 1)[1] if "?" in uri.split("://", 1)[-1] else ""
    return sqlite_uri(path) + (f"?{query}" if query else "")


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


_SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "token", "secret", "access_token", "api_key"})


def without_password(value: str) -> str | None:
    """``value`` with a URI's password (``user:password@`` → ``user@``) and secret query parameters
    (``password=``, ``token=``…) left out: the user name stays, so a node's own ``~/.pgpass`` or
    ``MLFLOW_TRACKING_PASSWORD`` still matches (the Ray executor sends URIs to a cluster this way). None when
    the URI cannot be taken apart safely: leave the value out. A value that is not a URI comes back as it is."""
    if "://" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")  # a password may hold an unencoded "@"
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    elif "@" in value.split("://", 1)[1].split("?", 1)[0]:
        return None  # an "@" outside the netloc (a password with an unencoded "/"): cannot tell what is what
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k.lower() not in _SECRET_QUERY_KEYS]
    query = urlencode(kept) if len(kept) < len(pairs) else parts.query
    if netloc == parts.netloc and query == parts.query:
        return value  # nothing secret: exactly as given
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class RunNotFound(MedxferError, ValueError):
    """An MLflow run id that the store does not hold, or a run without the artifact asked for."""


class StoreError(MedxferError, RuntimeError):
    """A tracking store or artifact root that medxfer cannot use: an invalid URI, a database server
    without an artifact root, SQLite or a file store on a network filesystem, a creation lock held too long."""


TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
ARTIFACT_ROOT_ENV = "MEDXFER_ARTIFACT_ROOT"  # the shared artifact root of new experiments, any store
ALLOW_NETWORK_STORE_ENV = "MEDXFER_ALLOW_NETWORK_STORE"
_ALLOW_NETWORK_SQLITE_ENV_OLD = "MEDXFER_ALLOW_NETWORK_SQLITE"  # its earlier name, still read
_SERVER_DATABASES = ("postgresql", "mysql", "mssql")  # database servers: no artifact store of their own
_TRACKING_SCHEMES = ("sqlite", *_SERVER_DATABASES, "http", "https", "file", "databricks")
_URI_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")


def _scheme(uri: str) -> str:
    """The scheme of ``uri`` without its driver (``postgresql+psycopg2`` → ``postgresql``), lower case; "" if none."""
    match = _URI_SCHEME.match(uri)
    return match.group("scheme").split("+", 1)[0].lower() if match else ""


def _checked_tracking_uri(uri: str) -> str:
    """``uri`` validated as a tracking store every process can reach: a relative SQLite path made absolute."""
    uri = uri.strip()
    shown = redact_credentials(uri)
    scheme = "databricks" if uri.lower() == "databricks" else _scheme(uri)  # MLflow's bare "databricks"
    if scheme not in _TRACKING_SCHEMES:
        kind = f"an unsupported scheme {scheme!r}" if scheme else "no scheme"
        raise StoreError(f"tracking URI {shown!r} has {kind}: use sqlite:////abs/path/mlflow.db, "
                         "postgresql://user@host/db (or mysql://, mssql://), http(s)://tracking-server:5000, "
                         "file:///abs/mlruns or databricks")
    if scheme == "sqlite":
        path = _sqlite_file(uri)
        if path is None:  # each process would get its own empty database
            raise StoreError(f"tracking URI {shown!r} is an in-memory SQLite store, private to each process: "
                             "name a database file, sqlite:////abs/path/mlflow.db")
        return _absolute_sqlite_uri(uri, path)
    if scheme in ("http", "https") and not urlsplit(uri).hostname:
        raise StoreError(f"tracking URI {shown!r} names no host: write {scheme}://host:port")
    if scheme in _SERVER_DATABASES and "://" not in uri:
        raise StoreError(f"tracking URI {shown!r} is not a database URL: write {scheme}://user@host:port/database")
    if scheme == "file" and not urlsplit(uri).path.startswith("/"):
        raise StoreError(f"tracking URI {shown!r}: a file store needs an absolute path, file:///abs/mlruns")
    return uri


def _checked_artifact_root(root: str) -> str:
    """``root`` validated as an artifact root every process agrees on: a URI (``s3://…``,
    ``file:///…``, ``mlflow-artifacts:/…``) as given, or an absolute path (``~`` expanded), normalised."""
    root = root.strip()
    if not root:
        raise StoreError("the artifact root is empty: give an absolute path or a URI such as s3://bucket/medxfer")
    match = _URI_SCHEME.match(root)
    if match and len(match.group("scheme")) > 1:  # a URI (a one-letter "scheme" would be a Windows drive)
        if match.group("scheme").lower() == "file" and not urlsplit(root).path.startswith("/"):
            raise StoreError(f"artifact root {root!r}: a file URI needs an absolute path, file:///abs/artifacts")
        return root
    path = Path(root).expanduser()
    if not path.is_absolute():  # each process would resolve it against its own current folder
        raise StoreError(f"artifact root {root!r} is a relative path: each process would put artifacts under its "
                         "own current folder; give an absolute path (on storage all runners share) or a URI")
    return os.path.normpath(path)


def use_tracking(uri: str | None, artifact_root: str | None) -> None:
    """Use tracking store ``uri`` and artifact root ``artifact_root`` (a study spec's ``tracking:``) in this
    process and every process it starts: validated, then set as ``$MLFLOW_TRACKING_URI`` and
    ``$MEDXFER_ARTIFACT_ROOT`` (the spec wins over the environment; None leaves a variable as it is).

    Refuses (:class:`StoreError`, before connecting to anything) an invalid URI, a relative artifact root,
    and a database server store (PostgreSQL, MySQL, SQL Server) with no artifact root at all."""
    checked_uri = _checked_tracking_uri(uri) if uri is not None else None
    checked_root = _checked_artifact_root(artifact_root) if artifact_root is not None else None
    effective_uri = checked_uri or resolve_tracking_uri()
    new_experiment_artifact_location(effective_uri, checked_root)  # refuse now, not in a worker later
    if checked_uri is not None:
        os.environ[TRACKING_URI_ENV] = checked_uri
    if checked_root is not None:
        os.environ[ARTIFACT_ROOT_ENV] = checked_root


def shared_artifact_root() -> str | None:
    """``$MEDXFER_ARTIFACT_ROOT`` validated (an absolute path or a URI); None when unset."""
    root = os.environ.get(ARTIFACT_ROOT_ENV, "")
    return _checked_artifact_root(root) if root.strip() else None


def new_experiment_artifact_location(uri: str | None = None, root: str | None = None) -> str | None:
    """The ``artifact_location`` medxfer gives a new experiment of store ``uri`` (default
    :func:`resolve_tracking_uri`); runs then keep their artifacts in ``<location>/<run id>/artifacts``.

    ``root`` (default ``$MEDXFER_ARTIFACT_ROOT``) when given, for any store; otherwise the absolute
    :func:`artifact_root` beside a local SQLite database; None for a tracking server (``http(s)://``, its
    own default, e.g. ``--serve-artifacts``) and a file store. A database server without a root is
    refused: MLflow would put the artifacts in ``./mlruns`` of whichever process created the experiment."""
    uri = uri or resolve_tracking_uri()
    root = _checked_artifact_root(root) if root is not None else shared_artifact_root()
    if root is not None:
        return root if len(_scheme(root)) > 1 else Path(root).as_uri()
    if _scheme(uri) in _SERVER_DATABASES:
        raise StoreError(
            f"the tracking store {redact_credentials(uri)} is a database server with no artifact root: MLflow "
            "would put each new experiment's artifacts in ./mlruns of whichever process created it, which the other "
            "runners (and you, later) cannot see. Name a root all runners share: tracking.artifact_root in the study "
            f"spec or {ARTIFACT_ROOT_ENV}=/shared/path (or s3://bucket/prefix), or run an MLflow tracking server "
            "(mlflow server --backend-store-uri <this database> --serve-artifacts --artifacts-destination <root>) "
            "and set the tracking URI to http://host:port")
    local_root = artifact_root(uri)
    return local_root.as_uri() if local_root is not None else None


# the network filesystems on which SQLite's file locking cannot be trusted (fstype of /proc/self/mountinfo;
# a FUSE one also as fuse.<name>)
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smb2", "smbfs", "ncpfs", "9p", "afs", "lustre", "gpfs", "beegfs", "glusterfs",
    "ceph", "cephfs", "sshfs", "davfs", "s3fs", "gcsfuse", "rclone", "juicefs", "wekafs", "panfs", "pvfs2",
    "orangefs", "quobyte",
})


class Mount(NamedTuple):
    """One line of ``/proc/self/mountinfo``: where a filesystem is mounted, its type and its source."""

    point: str
    fstype: str
    source: str


def _unescape_mount_field(field: str) -> str:
    """A mountinfo field with its octal escapes (``\\040`` for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_of(path: str | os.PathLike, mountinfo: str | None = None) -> Mount | None:
    """The mount holding ``path`` (symlinks resolved; it need not exist yet): the longest mount point
    that is a prefix of it in ``mountinfo`` (default: this process's ``/proc/self/mountinfo``; the last
    one of equal length, mounted on top). None when there is no mount table (not Linux)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best: Mount | None = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)  # id parent dev root point options [optional…] - fstype source superoptions
        point = _unescape_mount_field(fields[4])
        inside = point == "/" or target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(fields) > sep + 1 and (best is None or len(point) >= len(best.point)):
            source = _unescape_mount_field(fields[sep + 2]) if len(fields) > sep + 2 else ""
            best = Mount(point, fields[sep + 1], source)
    return best


def is_network_filesystem(fstype: str) -> bool:
    """Whether a mountinfo filesystem type is a network or cluster one (``nfs4``, ``fuse.sshfs``, ``lustre``…)."""
    fstype = fstype.lower()
    return fstype in NETWORK_FILESYSTEMS or fstype.removeprefix("fuse.") in NETWORK_FILESYSTEMS


def check_store_filesystem(uri: str, mountinfo: str | None = None) -> None:
    """Refuse (:class:`StoreError`) a SQLite store or an MLflow file store ``uri`` on a network filesystem
    (by ``mountinfo``, default this process's mount table), unless ``$MEDXFER_ALLOW_NETWORK_STORE=1``.
    Any other store (a tracking server, a database server) passes."""
    db, folder = sqlite_path(uri), file_store_path(uri)
    where = db.parent if db is not None else folder
    allowed = os.environ.get(ALLOW_NETWORK_STORE_ENV) or os.environ.get(_ALLOW_NETWORK_SQLITE_ENV_OLD)
    if where is None or allowed == "1":
        return
    mount = mount_of(where, mountinfo)
    if mount is None or not is_network_filesystem(mount.fstype):
        return
    if db is not None:
        what, why = (f"{db}: the MLflow SQLite store", "SQLite's file locking is unreliable over NFS, CIFS, Lustre "
                     "and other network filesystems: concurrent runners corrupt the store or lock each other out.")
    else:
        what, why = (f"{folder}: the MLflow file store", "a network filesystem's client caches folder listings "
                     "(NFS: up to acdirmax, 60 s by default), so a runner on another node may not see a run just "
                     "created there, and two runners could both claim one configuration.")
    raise StoreError(
        f"{what} is on a network filesystem ({mount.fstype} {mount.source} mounted at {mount.point}). {why} "
        "Use a tracking server (mlflow server with a PostgreSQL backend and --serve-artifacts; set the study "
        "spec's tracking.uri or MLFLOW_TRACKING_URI to http://host:port) or a database server, or keep the store "
        "on a local disk (MLFLOW_TRACKING_URI=sqlite:////local/disk/mlflow.db). A single runner that knows no "
        f"other process writes this store may set {ALLOW_NETWORK_STORE_ENV}=1.")


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
    after the other; returns the URI. Later calls in the process cost nothing. A SQLite store on a
    network filesystem is refused first, as is a file store there (:func:`check_store_filesystem`)."""
    import mlflow
    from filelock import FileLock, Timeout

    uri = uri or tracking_uri()
    lock = store_lock_path(uri)
    key = str(lock.resolve()) if lock is not None else uri
    with _ready_guard:
        if key in _ready:
            return uri
        check_store_filesystem(uri)  # before the lock: a lock file on NFS is no better
        if lock is not None and lock.parent.is_dir():
            try:
                with FileLock(str(lock), timeout=STORE_LOCK_SECONDS):
                    mlflow.MlflowClient(tracking_uri=uri)  # opening the store creates or migrates its tables
            except Timeout:
                raise StoreError(f"{lock}: another process has held the tracking store's creation lock for "
                                 f"{STORE_LOCK_SECONDS:.0f} s; is a medxfer or mlflow process stuck?") from None
        _ready.add(key)
    return uri


_CONFLICT_MARKERS = ("UniqueViolation", "IntegrityError", "UNIQUE constraint", "duplicate key")


def retry_on_conflict(call, *args, attempts: int = 5, **kwargs):
    """``call(*args, **kwargs)`` again when the store reports a write conflict: MLflow's SQL store sets a
    tag as read-then-insert, so two runners setting one tag at once (an experiment's view, a study's parent
    run, an orphan both reset) make one of them fail with a duplicate key (PostgreSQL) or a UNIQUE
    constraint (SQLite); the retry finds the row and updates it."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except MlflowException as exc:
            if attempt == attempts - 1 or not any(m in str(exc) for m in _CONFLICT_MARKERS):
                raise
            time.sleep(0.05 * (attempt + 1))


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
    """The id of experiment ``name``; created when absent and ``create``, else None. A new experiment keeps
    its artifacts in :func:`new_experiment_artifact_location` (``$MEDXFER_ARTIFACT_ROOT``, or the absolute
    :func:`artifact_root` of a local SQLite store; a database server without a root is refused). Safe
    when another process creates it concurrently."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if not create:
        return None
    # runs are <location>/<run id>/artifacts
    location = new_experiment_artifact_location(getattr(mlflow_client, "tracking_uri", None) or resolve_tracking_uri())
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


def describe_store(uri: str | None = None, origin: str | None = None) -> str:
    """The store ``uri`` (default :func:`resolve_tracking_uri`) as printed for the user: credentials
    removed, and where it comes from — ``origin`` when given (e.g. a study spec's ``tracking.uri``), else
    ``$MLFLOW_TRACKING_URI`` or the default under ``$MEDXFER_HOME``."""
    uri = uri or resolve_tracking_uri()
    if origin is None and os.environ.get("MLFLOW_TRACKING_URI") and uri == resolve_tracking_uri():
        origin = "from MLFLOW_TRACKING_URI"
    elif origin is None and uri == default_tracking_uri():
        origin = f"the default store in MEDXFER_HOME={medxfer_home()}"
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
