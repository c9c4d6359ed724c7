"""Training glue: cohort from the manifest, MLflow runs, and the pieces the bundles wire up.

Importing this package registers the ``run:<id>`` weights source (:mod:`.run_weights`) with
:mod:`medxfer.models.weights`: a run's checkpoint in MLflow is an engine concern, not a model's.
"""
from . import run_weights
from .bundles import BundleError, TrainResult, bundle_path, parse_override, train_bundle
from .data import Cohort, CohortError, fold_roles, load_cohort
from .mlflow_run import RunTracker, run_name

__all__ = ["run_weights", "BundleError", "Cohort", "CohortError", "RunTracker", "TrainResult", "bundle_path",
           "fold_roles", "load_cohort", "parse_override", "run_name", "train_bundle"]
