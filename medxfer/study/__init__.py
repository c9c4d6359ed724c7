"""Study grids: spec → runs (resumable, shardable) → statistics → report.

- :mod:`.spec` reads the YAML study spec, :mod:`.grid` expands it into runs with names and
  ``config_hash`` tags, :mod:`.runner` runs them as child MLflow runs of a study run.
- :mod:`.stats` holds the statistics (bootstrap CIs, DeLong, Wilcoxon, Holm, transfer score),
  :mod:`.report` turns a study's runs into ``report.html`` / ``report.md`` / ``results.csv``.

Names are imported on first use (PEP 562 ``__getattr__``), not to hide an import cycle (there is
none: ``tests/test_architecture.py``) but so that ``medxfer.study.stats`` does not pull in torch
and MONAI.
"""
from importlib import import_module

_EXPORTS = {"PlannedRun": "grid", "expand": "grid", "parse_shard": "grid", "shard": "grid",
            "StudyOutcome": "runner", "dry_run": "runner", "run_study": "runner",
            "SpecError": "spec", "StudySpec": "spec", "load_spec": "spec", "parse_spec": "spec",
            "build_report": "report", "ReportError": "report"}
__all__ = ["PlannedRun", "ReportError", "SpecError", "StudyOutcome", "StudySpec", "build_report", "dry_run",
           "expand", "load_spec", "parse_shard", "parse_spec", "run_study", "shard"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
