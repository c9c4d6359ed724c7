"""Run outputs a user opens with other tools: metrics.json is strict JSON (no NaN literals), and a run's output
folder has no ``:`` in its name (``top:4`` freezing, ``file:`` / ``run:`` weights) while its MLflow run name
keeps it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from medxfer.core.files import run_folder_name, safe_json
from medxfer.engine import run_name
from medxfer.engine.bundles import bundle_path


def _strict(text: str):
    """json.loads that refuses NaN / Infinity (what JSON parsers outside Python do)."""
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_metrics_json_writes_null_for_non_finite_values():
    summary = {"metrics": {"test_auc": float("nan"), "test_accuracy": np.float64(0.75), "val_loss": float("inf")},
               "youden_thresholds": None, "per_class": [np.float32("nan"), 0.5], "shape": (2, np.int64(3)),
               "path": __import__("pathlib").Path("runs/x")}
    with pytest.raises(ValueError):  # what the writers did before: NaN literals
        _strict(json.dumps(summary, default=str))
    doc = _strict(safe_json(summary, indent=2, default=str))
    assert doc == {"metrics": {"test_auc": None, "test_accuracy": 0.75, "val_loss": None}, "youden_thresholds": None,
                   "per_class": [None, 0.5], "shape": [2, 3], "path": "runs/x"}


def test_metrics_json_writers_use_the_strict_writer():
    """Every engine module that writes metrics.json goes through safe_json (no json.dumps of the summary)."""
    from medxfer.engine import classification, segmentation

    for module in (classification, segmentation):
        source = open(module.__file__, encoding="utf-8").read()
        assert "safe_json(summary" in source and "json.dumps(summary" not in source, module.__name__


@pytest.mark.parametrize("weights,freeze", [("file:/data/w.pt", "top:4"), ("run:0123abcd", "top_layers:2"),
                                            ("imagenet", "none")])
def test_run_folders_have_no_colon_and_run_names_keep_theirs(weights, freeze):
    name = run_name("classification", "resnet18", weights, freeze, 0.001, 0, 0)
    folder = run_folder_name(name)
    assert ":" not in folder and "/" not in folder
    assert (":" in name) == (":" in weights + freeze)  # the MLflow run name is unchanged
    assert folder == name.replace("/", "_").replace(":", "_")


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_the_bundles_default_output_folder_has_no_colon(task, tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_path(task) / "configs" / "train.json"))
    parser["run_name"] = f"{task}/resnet18/file:/w.pt/top:4/lr0.001/fold0/seed0"
    folder = parser.get_parsed_content("output_dir")
    assert folder == f"runs/{task}_resnet18_file__w.pt_top_4_lr0.001_fold0_seed0"


def test_runs_log_the_software_versions_the_report_names():
    import platform

    import monai
    import torch

    from medxfer import __version__
    from medxfer.engine.mlflow_run import software_params

    assert software_params() == {"software.medxfer": __version__, "software.monai": monai.__version__,
                                 "software.torch": torch.__version__, "software.python": platform.python_version()}
