"""MLflow: where the store is and how medxfer lays out its runs in it.

* :mod:`medxfer.tracking.store` — the store's URI (``$MLFLOW_TRACKING_URI`` or the default under
  ``$MEDXFER_HOME``), a client, run look-ups and artifact downloads, and the ``medxfer ui`` checks;
* :mod:`medxfer.tracking.layout` — experiment names, tag keys, artifact names and run queries.

This package sits just above :mod:`medxfer.core`: it knows nothing of models, engines or studies.
"""
from . import layout
from .store import (EmptyStoreError, RunNotFound, artifact_root, check_store_has_runs, client, default_tracking_uri,
                    describe_store, download_run_artifact, experiment_id, get_run, open_runs_command,
                    resolve_tracking_uri, search_all_runs, tracking_uri, ui_command)

__all__ = ["layout", "EmptyStoreError", "RunNotFound", "artifact_root", "check_store_has_runs", "client",
           "default_tracking_uri", "describe_store", "download_run_artifact", "experiment_id", "get_run",
           "open_runs_command", "resolve_tracking_uri", "search_all_runs", "tracking_uri", "ui_command"]
