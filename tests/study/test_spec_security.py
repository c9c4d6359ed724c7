"""A study spec is data, as safe to run as a CSV is to open: no value in it reaches MONAI's config
parser as an expression (``$``), a reference (``@``), a macro (``%``, which reads files), a
rewritten ``#`` or a ``_target_`` component, wherever it sits (grid, train, pretraining stages,
data, nested lists and mappings); the one-line error names the key."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from medxfer.cli import main
from tests.study.conftest import write_manifest
from medxfer.study.spec import SpecError, load_spec


def _touch(marker: Path) -> str:
    return f"$__import__('os').system('touch {marker}') * 0 + 0.2"


@pytest.fixture
def manifest(tmp_path) -> Path:
    return write_manifest(tmp_path, {"y": lambda i: i % 2, "sex": lambda i: "FM"[i % 2]})


def _raw(manifest: Path) -> dict:
    return {"name": "safe", "data": {"manifest": str(manifest), "label": "y", "folds": [0]},
            "grid": {"encoder": ["resnet18"], "weights": ["scratch", "first"]},
            "pretrain": [{"name": "first", "data": {"manifest": str(manifest), "label": "sex"},
                          "train": {"epochs": 1}}],
            "train": {"epochs": 1, "image_size": 32}}


PLACES = [  # (where in the spec, the value put there, the key the error names, why)
    (("grid", "dropout"), ["EXPR"], r"grid.dropout\[0\]", "which MONAI would run as Python code"),
    (("train", "dropout"), "EXPR", "train.dropout", "which MONAI would run as Python code"),
    (("pretrain", 0, "train", "dropout"), "EXPR", r"pretrain\[0\].train.dropout", "run as Python code"),
    (("pretrain", 0, "from"), "$__import__('os') or 'a:b'", r"pretrain\[0\].from", "run as Python code"),
    (("pretrain", 0, "data", "label"), "@label", r"pretrain\[0\].data.label", "a reference"),
    (("grid", "modalities"), [["PX", "EXPR"]], r"grid.modalities\[0\]\[1\]", "run as Python code"),
    (("data", "classes"), {"benign": ["%/etc/evil.yaml::x"]}, r"data.classes.benign\[0\]", "read from any file"),
    (("data", "label"), "y#1", "data.label", "rewrites to '::'"),
    (("train", "augment"), "x%::augment", "train.augment", "relative reference"),
    (("train", "network_def"), {"_target_": "os.system", "command": "touch x"}, "train.network_def._target_",
     "instantiate"),
]


def _put(raw: dict, where: tuple, value) -> None:
    for part in where[:-1]:
        raw = raw[part]
    raw[where[-1]] = value


@pytest.mark.parametrize("where, value, key, why", PLACES)
def test_a_value_monai_would_interpret_is_refused_naming_its_key(manifest, tmp_path, where, value, key, why):
    marker = tmp_path / "PWNED"
    raw = _raw(manifest)
    _put(raw, where, yaml.safe_load(yaml.safe_dump(value).replace("EXPR", _touch(marker).replace("'", "''"))))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=rf"^{re.escape(str(spec))}: {key}: .*{re.escape(why)}.*"
                                        r"; a spec holds data, never code$"):
        load_spec(spec)
    assert not marker.exists()


def test_a_manifest_path_monai_would_rewrite_is_refused(tmp_path):
    folder = tmp_path / "study#2"
    folder.mkdir()
    path = folder / "manifest.csv"
    path.write_text("item_id,image,fold,y\n" + "".join(f"i{i},i{i}.png,{i % 3},{i % 2}\n" for i in range(6)))
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "data": {"manifest": "manifest.csv", "label": "y"},
                                    "grid": {"encoder": ["resnet18"]}}))
    with pytest.raises(SpecError, match=r"data.manifest: .*contains '#', which MONAI's config parser rewrites"):
        load_spec(spec)


def test_the_issue_spec_runs_no_command_and_no_run(dental_cohort, mlflow_store, tmp_path):
    """The spec of the report: its dropout ran a shell command and the run FINISHED."""
    import mlflow

    marker = tmp_path / "PWNED"
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "pwned", "data": {"manifest": str(dental_cohort.manifest), "label": "supernumerary", "folds": [0],
                                  "modalities": ["PX"]},
        "grid": {"dropout": [_touch(marker)]},
        "train": {"epochs": 1, "image_size": 32, "batch_size": 4}}))
    result = CliRunner().invoke(main, ["study", "run", str(spec)])
    assert result.exit_code != 0
    (line,) = result.stderr.strip().splitlines()
    assert re.fullmatch(rf"medxfer: error: {re.escape(str(spec))}: grid.dropout\[0\]: .* starts with '\$', which "
                        r"MONAI would run as Python code; a spec holds data, never code", line), line
    assert not marker.exists()
    assert mlflow.MlflowClient(mlflow_store).get_experiment_by_name("medxfer/pwned") is None
