"""MLflow store location and small helpers shared by training, studies and weight sources.

Default store: ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts``
(relative to the working directory); ``MLFLOW_TRACKING_URI`` overrides (a remote server works
unchanged).
"""
from __future__ import annotations

import os
import re
import tempfile
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


_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact_credentials(text: str) -> str:
    """``text`` with the ``user:password@`` part of every URL in it removed."""
    return _CREDENTIALS.sub(lambda m: m.group("scheme"), text)


class RunNotFound(MedxferError, ValueError):
    """An MLflow run id that the store does not hold, or a run without the artifact asked for."""


def get_run(run_id: str):
    """The MLflow run ``run_id`` of the project store; :class:`RunNotFound` if it has none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.MlflowClient(tracking_uri=tracking_uri()).get_run(run_id)
    except MlflowException as exc:
        # MLflow's text may hold the server URL: a server URI can carry credentials
        detail = redact_credentials(exc.message.splitlines()[0])
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RunNotFound(f"run:{run_id}: no such MLflow run in the tracking store ({detail})") from None
        raise RunNotFound(f"run:{run_id}: the tracking store could not be read ({detail})") from None


def download_run_artifact(run_id: str, artifact_path: str, dst: str | os.PathLike | None = None) -> Path:
    """Download one artifact of ``run_id`` from the tracking store; a clear error if absent."""
    import mlflow
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr for real messages
    get_run(run_id)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    dst = Path(dst) if dst else Path(tempfile.mkdtemp(prefix="medxfer-run-"))
    try:
        return Path(client.download_artifacts(run_id, artifact_path, str(dst)))
    except (MlflowException, OSError) as exc:
        detail = redact_credentials(str(exc).splitlines()[0])
        raise RunNotFound(f"run:{run_id}: the run has no artifact {artifact_path!r} ({detail})") from None


def client():
    """An ``MlflowClient`` on the project store (never the fluent global API: several runs, one process)."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri())


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


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line for the project store (bound to ``host``)."""
    import sys

    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(), "--host", host,
            "--port", str(port)]
