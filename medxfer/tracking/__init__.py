"""MLflow: where the store is and how medxfer lays out its runs in it.

* :mod:`medxfer.tracking.store` — the store's URI, a client, run look-ups and artifact downloads;
* :mod:`medxfer.tracking.layout` — experiment names, tag keys, artifact names and run queries.

This package sits just above :mod:`medxfer.core`: it knows nothing of models, engines or studies.
"""
from . import layout
from .store import (DEFAULT_ARTIFACT_ROOT, DEFAULT_TRACKING_URI, RunNotFound, client, download_run_artifact,
                    experiment_id, get_run, search_all_runs, tracking_uri, ui_command)

__all__ = ["layout", "DEFAULT_ARTIFACT_ROOT", "DEFAULT_TRACKING_URI", "RunNotFound", "client",
           "download_run_artifact", "experiment_id", "get_run", "search_all_runs", "tracking_uri", "ui_command"]
