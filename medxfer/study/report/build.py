"""A study's report from end to end: collect from MLflow, summarise, write, log to the study's parent run."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ...tracking import client as mlflow_client
from ...tracking.layout import REPORT_DIR
from .collect import collect_study
from .model import PooledSpec
from .summarize import summarize
from .write import write_report


def build_report(name: str, out_dir: str | os.PathLike | None = None, n_resamples: int = 2000, seed: int = 0,
                 log_to_parent: bool = True, compare: Sequence[PooledSpec] | None = None) -> dict[str, Path]:
    """Collect study ``name``, summarise, write the report (default ``reports/<name>``) and log its
    files to the study's parent run under ``report/``; returns {relative name: path}. ``compare``: the
    pooled comparisons to make instead of the spec's ``compare`` (:class:`ReportError` for a key the grid lacks)."""
    runs = collect_study(name)
    summary = summarize(runs, n_resamples=n_resamples, seed=seed, compare=None if compare is None else list(compare))
    paths = write_report(summary, Path(out_dir) if out_dir is not None else Path("reports") / name)
    if log_to_parent and runs.parent_run_id:
        client = mlflow_client()
        for rel, path in paths.items():
            sub = "/".join([REPORT_DIR, *Path(rel).parent.parts])
            client.log_artifact(runs.parent_run_id, str(path), artifact_path=sub)
    return paths
