"""A shared MLflow store as a team runs it: PostgreSQL (Debian's package) behind an MLflow tracking server
with a served artifact store, both on loopback, started once per test session.

``shared_tracking_server`` skips (with the reason) where PostgreSQL is not installed or cannot start;
``scripts/ci/postgres.sh`` installs it in CI. The server lives for the whole session and every test
shares it: name experiments uniquely per test (e.g. with ``tmp_path.name``)."""
from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER_START_SECONDS = 180.0  # mlflow server imports and migrates a new database: seconds idle, more on a busy CI
INSTALL_HINT = "scripts/ci/postgres.sh installs Debian's package"


@dataclass(frozen=True)
class TrackingServer:
    """A running MLflow tracking server: ``uri`` for clients, the PostgreSQL URL behind it, its artifact folder."""

    uri: str
    backend_uri: str
    artifacts: Path


def _postgres_bin() -> Path | None:
    """The folder of PostgreSQL's programs (initdb, pg_ctl, createdb): initdb's on PATH (links resolved),
    else Debian's ``/usr/lib/postgresql/<version>/bin`` (newest version)."""
    on_path = shutil.which("initdb")
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                    key=lambda p: [int(n) for n in re.findall(r"\d+", Path(p).parts[-2])], reverse=True)
    candidates = ([Path(on_path).resolve().parent] if on_path else []) + [Path(p) for p in debian]
    return next((c for c in candidates if all((c / prog).is_file() for prog in ("initdb", "pg_ctl", "createdb"))),
                None)


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for a failure message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Postgres:
    """A throw-away PostgreSQL cluster in a temporary folder, on 127.0.0.1 only, trust authentication."""

    def __init__(self, bin_dir: Path, folder: Path):
        self.bin_dir, self.folder = bin_dir, folder
        self.data, self.log = folder / "data", folder / "postgres.log"
        self.port = _free_port()
        self.started = False
        # initdb refuses root: run the server programs as Debian's postgres user
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                owner = None
            if runuser is None or owner is None:
                raise RuntimeError("running as root, and no 'postgres' user (or runuser) to run PostgreSQL as")
            os.chown(folder, owner.pw_uid, owner.pw_gid)
            self.as_user = [runuser, "-u", "postgres", "--"]

    def _run(self, program: str, *args: str) -> None:
        cmd = [*self.as_user, str(self.bin_dir / program), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.folder)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{program} failed ({done.returncode}): {' '.join(detail)} {_tail(self.log, 5)}")

    def start(self) -> str:
        """initdb, start, create database ``mlflow``; the SQLAlchemy URL of that database."""
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "medxfer", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        # a test server: durability off makes MLflow's migrations and writes fast
        options = (f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-s", "-t", "60", "start")
        self.started = True
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "medxfer", "mlflow")
        # the psycopg2 driver named explicitly: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3
        return f"postgresql+psycopg2://medxfer@127.0.0.1:{self.port}/mlflow"

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-s", "stop")
            self.started = False


def _start_mlflow_server(backend_uri: str, artifacts: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` (this interpreter's MLflow) on a free loopback port with ``backend_uri`` and a
    served artifact store in ``artifacts``; returns the process (leader of its own process group) and its URL."""
    port = _free_port()
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1",
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job runner process: nothing here needs it
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_uri, "--serve-artifacts", "--artifacts-destination", str(artifacts)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _wait_until_answers(proc: subprocess.Popen, uri: str, log: Path) -> None:
    """Poll ``<uri>/health`` until it answers 200; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({proc.returncode}):\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"mlflow server did not answer at {uri} within {SERVER_START_SECONDS:.0f} s:\n{_tail(log)}")


def _stop_process_group(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and the workers it started (its own process group): SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def shared_tracking_server():
    """PostgreSQL plus an MLflow tracking server (``--serve-artifacts``) on loopback for the session;
    yields a :class:`TrackingServer` (``.uri`` = ``http://127.0.0.1:PORT``). Skips where PostgreSQL
    is not installed or cannot start; fails if MLflow's server does not come up."""
    if importlib.util.find_spec("psycopg2") is None:  # the MLflow server's PostgreSQL driver
        pytest.skip("psycopg2 is not installed (pip install -e '.[dev]' installs psycopg2-binary)")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL is not installed ({INSTALL_HINT})")
    # a folder of its own in the system temporary folder: pytest's is private to root, postgres could not enter it
    folder = Path(tempfile.mkdtemp(prefix="medxfer-pg-"))
    postgres = proc = None
    try:
        try:
            postgres = _Postgres(bin_dir, folder)
            backend_uri = postgres.start()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"PostgreSQL could not start ({bin_dir}): {exc}")
        artifacts, log = folder / "artifacts", folder / "mlflow-server.log"
        artifacts.mkdir()
        proc, uri = _start_mlflow_server(backend_uri, artifacts, log)
        try:
            _wait_until_answers(proc, uri, log)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield TrackingServer(uri=uri, backend_uri=backend_uri, artifacts=artifacts)
    finally:
        if proc is not None:
            _stop_process_group(proc)
        if postgres is not None:
            try:
                postgres.stop()
            except (RuntimeError, subprocess.TimeoutExpired):
                pass  # its folder goes below; an immediate stop failing leaves nothing a later session needs
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shared_store(shared_tracking_server, monkeypatch, tmp_path) -> str:
    """The session's tracking server set as ``MLFLOW_TRACKING_URI`` (no ``MEDXFER_ARTIFACT_ROOT``: the server's
    served artifact store), ``MEDXFER_HOME`` = cwd = tmp_path; returns the server's URI. Experiments outlive
    the test: give them names unique to it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_tracking_server.uri)
    monkeypatch.delenv("MEDXFER_ARTIFACT_ROOT", raising=False)
    return shared_tracking_server.uri
