"""How a study opens in the MLflow UI: typed for model training, its comparison one link away.

MLflow 3's UI opens an experiment in its GenAI view (traces, no runs table) unless told otherwise, and
its runs table shows a handful of default columns of the 70-odd a study run logs. The server has no
setting for either; what the UI does read:

* the experiment tag ``mlflow.experimentKind`` (``custom_model_development``: "model training"), from which
  earlier MLflow 3 releases pick the experiment's view; MLflow 3.17 picks it from a UI-wide *workflow type*
  (``machine_learning`` or ``genai``, default ``genai``) held in the browser, overridden by the URL parameter
  ``workflowType`` — so the link carries it;
* a *shared view*: experiment tag ``mlflow.sharedViewState.<key>`` holding the runs table's state
  (visible columns, sort, filter), opened by the URL parameter ``viewStateShareKey=<key>`` — what the UI's
  own "Share" button writes.

:func:`set_study_view` writes both on a study's experiment; :func:`study_page` is the link that opens it.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import urlencode

from .layout import (EXPERIMENT_KIND_TRAINING, REPORT_DIR, STUDY_VIEW_KEY, TAG_EXPERIMENT_KIND, TAG_FOLD, TAG_SEED,
                     TAG_SHARED_VIEW_PREFIX)
from .store import retry_on_conflict

WORKFLOW_TYPE = "machine_learning"  # the UI's "model training" workflow (its other one is "genai")
REPORT_PAGE = f"{REPORT_DIR}/report.html"  # the parent run's artifact that `study report` logs
METRIC_COLUMN_WIDTH = 160  # pixels
_TASK_METRICS = {"classification": ("test_auc",), "segmentation": ("test_dice",)}


def column(kind: str, key: str) -> str:
    """The runs table's name for a column: ``metrics.`test_auc```, ``tags.`encoder```, ``params.`lr```."""
    return f"{kind}.`{key}`"


def study_metrics(task: str) -> tuple[str, ...]:
    """The metrics a study of ``task`` is compared on (the report's test metric)."""
    return _TASK_METRICS.get(task, ())


def study_view_state(grid_keys: Sequence[str], metrics: Sequence[str]) -> dict:
    """The runs table of a study: its ``metrics`` then its grid keys, fold and seed (child tags) as the
    visible columns, best first on the first metric, every run visible in the charts.

    Sorted on a metric, the table lists child runs flat (sorted by start time it nests them, collapsed,
    under the parent run): the comparison needs no click."""
    columns = [column("metrics", m) for m in metrics]
    columns += [column("tags", k) for k in dict.fromkeys([*grid_keys, TAG_FOLD, TAG_SEED])]
    order = columns[0] if metrics else "attributes.start_time"
    return {"searchFilter": "", "orderByKey": order, "orderByAsc": False, "selectedColumns": columns,
            "columnOrder": columns, "runsHiddenMode": "SHOW_ALL", "viewMaximized": False,
            # a metric's full digits (0.8734…) instead of the default width's "0.873412…"
            "columnWidths": {column("metrics", m): METRIC_COLUMN_WIDTH for m in metrics}}


def set_study_view(client, experiment_id: str, grid_keys: Sequence[str], metrics: Sequence[str]) -> None:
    """Type experiment ``experiment_id`` for model training and store its comparison view (see the module)."""
    retry_on_conflict(client.set_experiment_tag, experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
    retry_on_conflict(client.set_experiment_tag, experiment_id, TAG_SHARED_VIEW_PREFIX + STUDY_VIEW_KEY,
                      json.dumps(study_view_state(grid_keys, metrics), separators=(",", ":")))


def study_page(base_url: str, experiment_id: str) -> str:
    """The URL of a study's runs table in the model-training view with its comparison columns, on the MLflow
    UI at ``base_url`` (``http://127.0.0.1:5000``)."""
    return f"{base_url.rstrip('/')}/{study_view_link(experiment_id)}"


def study_view_link(experiment_id: str) -> str:
    """:func:`study_page` relative to the UI's page, as a run description holds it."""
    query = urlencode({"viewStateShareKey": STUDY_VIEW_KEY, "workflowType": WORKFLOW_TYPE})
    return f"#/experiments/{experiment_id}/runs?{query}"


def run_page(experiment_id: str, run_id: str, artifact: str = "") -> str:
    """A link to run ``run_id`` (and its ``artifact``) relative to the UI's page, as a run description holds it."""
    link = f"#/experiments/{experiment_id}/runs/{run_id}"
    return f"{link}/artifacts/{artifact}" if artifact else link


def study_pages(client, base_url: str) -> list[tuple[str, str]]:
    """(experiment name, :func:`study_page` URL) of every experiment of ``client``'s store that has a study's
    comparison view, by name: what ``medxfer ui`` prints so that each comparison is one click away."""
    found = []
    for experiment in client.search_experiments():
        if TAG_SHARED_VIEW_PREFIX + STUDY_VIEW_KEY in (experiment.tags or {}):
            found.append((experiment.name, study_page(base_url, experiment.experiment_id)))
    return sorted(found)
