"""Training glue: cohort from the manifest, MLflow runs, and the pieces the bundles wire up."""
from .bundles import BundleError, TrainResult, bundle_path, parse_override, train_bundle
from .data import Cohort, CohortError, fold_roles, load_cohort
from .mlflow_run import RunTracker, run_name

__all__ = ["BundleError", "Cohort", "CohortError", "RunTracker", "TrainResult", "bundle_path", "fold_roles",
           "load_cohort", "parse_override", "run_name", "train_bundle"]
