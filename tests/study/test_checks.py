"""Plan-time checks: what every run of a grid would find out on its own, after the study's parent
run exists, is one error naming the key when the spec is read: encoders, freeze policies,
weights sources, the label column, epochs / batch_size / seeds ranges, folds, repeated YAML keys."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from medxfer.cli import main
from tests.study.conftest import write_manifest
from medxfer.study.spec import SpecError, load_spec, parse_spec


@pytest.fixture
def manifest(tmp_path) -> Path:
    return write_manifest(tmp_path, {"sex": lambda i: "FM"[i % 2], "finding": lambda i: i % 2})


def spec_dict(manifest: Path, **changes) -> dict:
    raw = {"name": "checked", "data": {"manifest": str(manifest), "label": "finding", "folds": 5},
           "grid": {"encoder": ["resnet18", "densenet121"], "weights": ["scratch"], "freeze": ["none", "all"]},
           "seeds": [0], "train": {"epochs": 2, "batch_size": 4}}
    raw.update(changes)
    return raw


def _error(raw: dict) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("change, expected", [
    ({"grid": {"encoder": ["resnet18", "resnet81"]}},
     r"^grid.encoder\[1\]: unknown encoder 'resnet81'; known: resnet18, resnet34, .*; did you mean"),
    ({"grid": {"encoder": None}, "train": {"encoder": "vgg16"}},
     r"^train.encoder: unknown encoder 'vgg16'; known: resnet18"),
    ({"grid": {"freeze": ["none", "top:0"]}}, r"^grid.freeze\[1\]: unknown freeze policy 'top:0'; use none, all"),
    ({"grid": {"freeze": ["frozen"]}}, r"^grid.freeze\[0\]: unknown freeze policy 'frozen'"),
    ({"grid": {"weights": ["scratch", "hub:resnet"]}},
     r"^grid.weights\[1\]: weights 'hub:resnet': unknown scheme 'hub:'; known sources: scratch, file:PATH, run:RUN_ID"),
    ({"grid": {"weights": ["file:/no/such/w.pt"]}}, r"^grid.weights\[0\]: weights 'file:/no/such/w.pt': no such file"),
    ({"grid": {"weights": ["run:"]}}, r"^grid.weights\[0\]: weights 'run:' names no run reference"),
    ({"grid": {"weights": ["image net"]}}, r"^grid.weights\[0\]: 'image net' is not a weights source"),
    ({"similarity": {"encoder": "resnet81", "sources": {}}}, r"^similarity.encoder: unknown encoder 'resnet81'"),
    ({"grid": {"encoder": ["resnet18_3d"]}},
     r"^grid.encoder\[0\]: encoder 'resnet18_3d' is a 3D encoder; the bundles train 2D networks .*use one of "
     r"resnet18, "),
    ({"train": {"epochs": 0}}, r"^train.epochs: 0 is not a whole number >= 1"),
    ({"train": {"epochs": 2.5}}, r"^train.epochs: 2.5 is not a whole number >= 1"),
    ({"train": {"batch_size": -4}}, r"^train.batch_size: -4 is not a whole number >= 1"),
    ({"grid": {"epochs": [10, 0]}, "train": {"epochs": None}}, r"^grid.epochs\[1\]: 0 is not a whole number >= 1"),
    ({"seeds": [-1]}, r"^seeds must be a non-empty list of distinct integers >= 0, not \[-1\]"),
    ({"seeds": [0, 0]}, r"^seeds must be a non-empty list of distinct integers >= 0"),
    ({"data": {"label": "sexx"}}, r"^data.label: 'sexx' is not a column of .*manifest.csv \(columns: item_id, image, "
                                  r"fold, sex, finding\); did you mean 'sex'\?$"),
    ({"data": {"folds": [0, 7]}}, r"^data.folds \[7\] not in the manifest's folds \[0, 1, 2, 3, 4\]"),
])
def test_a_value_no_run_could_use_is_an_error_naming_its_key(manifest, change, expected):
    raw = spec_dict(manifest)
    for section, value in change.items():  # a mapping changes the section's keys (None: removed)
        if isinstance(raw.get(section), dict):
            value = {k: v for k, v in {**raw[section], **value}.items() if v is not None}
        raw[section] = value
    if "similarity" in change:
        raw["similarity"] = {"encoder": "resnet81", "sources": {"other": str(manifest)}}
    assert re.search(expected, _error(raw)), _error(raw)


def test_stage_label_fold_start_and_epochs_are_checked(manifest, tmp_path):
    def stage(**changes):
        return spec_dict(manifest, grid={"encoder": ["resnet18"], "weights": ["pre"]},
                         pretrain=[{"name": "pre", "data": {"manifest": str(manifest), "label": "sex"}, **changes}])

    assert parse_spec(stage()).stages["pre"].label == "sex"
    bad_label = stage(data={"manifest": str(manifest), "label": "age"})
    assert re.match(r"pretrain pre: data.label: 'age' is not a column of", _error(bad_label))
    bad_fold = stage(data={"manifest": str(manifest), "label": "sex", "fold": 9})
    assert _error(bad_fold) == "pretrain pre: data.fold 9 is not one of the manifest's folds [0, 1, 2, 3, 4]"
    assert _error(stage(train={"epochs": 0})) == "pretrain pre: train.epochs: 0 is not a whole number >= 1"
    missing = stage(**{"from": "file:/nope.pt"})
    assert re.match(r"pretrain pre: from: weights 'file:/nope.pt': no such file", _error(missing))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_weights_file_is_an_error(manifest, tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    weights.chmod(0)
    message = _error(spec_dict(manifest, grid={"encoder": ["resnet18"], "weights": [f"file:{weights}"]}))
    assert message.endswith(f"{weights} is not readable")


def _import(name: str, arch: str, tmp_path: Path) -> None:
    from medxfer.models import create_encoder
    from medxfer.models.weights import import_weights, save_checkpoint

    path = save_checkpoint(tmp_path / f"{name}-{arch}.pt", create_encoder(arch, "scratch", 3))
    import_weights(path, name=name, arch=arch, fmt="medxfer")


def test_imported_names_missing_from_the_registry_are_a_warning_up_front(manifest, tmp_path, monkeypatch, caplog):
    """Weights may exist for some encoders only (RadImageNet has no ResNet18): those cells fail with
    the reason and the others run, as before, but the plan says so before anything starts."""
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    _import("imagenet", "mobilenet_v1_025", tmp_path)
    grid = {"encoder": ["mobilenet_v1_025", "resnet18"], "weights": ["scratch", "imagenet"]}
    with caplog.at_level(logging.WARNING, logger="medxfer.study.spec"):
        parse_spec(spec_dict(manifest, grid=grid))
    assert [r.getMessage() for r in caplog.records] == [
        "weights 'imagenet' are not imported for resnet18: those runs will fail; import them first "
        "(medxfer weights import) or leave them out of the grid"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medxfer.study.spec"):
        parse_spec(spec_dict(manifest, grid={**grid, "weights": ["imagnet"]}))
    assert caplog.records[0].getMessage().endswith(
        "not imported for mobilenet_v1_025, resnet18: those runs will fail; import them first (medxfer weights "
        "import) or leave them out of the grid; did you mean 'imagenet'?")


def test_a_key_repeated_in_the_yaml_is_an_error(manifest, tmp_path):
    spec = tmp_path / "spec.yaml"
    body = yaml.safe_dump(spec_dict(manifest), sort_keys=False)
    spec.write_text(body + "grid:\n  encoder: [resnet50]\n")
    line = len(body.splitlines()) + 1
    with pytest.raises(SpecError, match=rf"^{re.escape(str(spec))}: line {line}: key 'grid' appears twice in one "
                                        r"mapping \(YAML would keep only the last\); remove one$"):
        load_spec(spec)
    spec.write_text(body.replace("train:\n", "train:\n  epochs: 5\n", 1))
    with pytest.raises(SpecError, match=r"key 'epochs' appears twice"):
        load_spec(spec)
    spec.write_text("defaults: &d {epochs: 2}\n" + body.replace("train:\n", "train:\n  <<: *d\n", 1)
                    .replace("  epochs: 2\n", "", 1))
    with pytest.raises(SpecError, match="unknown top-level keys"):  # merge keys are YAML's own rule, not repeats
        load_spec(spec)


def test_the_whole_grid_is_checked_before_a_parent_run_exists(manifest, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(manifest, grid={"encoder": ["resnet18", "resnet81"]})))
    for args in (["--dry-run"], []):
        result = CliRunner().invoke(main, ["study", "run", str(spec), *args])
        assert result.exit_code != 0
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"medxfer: error: {spec}: grid.encoder[1]: unknown encoder 'resnet81'; known: ")
    assert mlflow.MlflowClient(uri).get_experiment_by_name("medxfer/checked") is None


# ---- volumes and cines (issue 13): input / slices / aggregate, checked before any run


@pytest.mark.parametrize("change, expected", [
    ({"grid": {"slices": ["range:0.25-0.75", "range:0.8-0.2"]}},
     r"^grid.slices\[1\]: 'range:0.8-0.2': range:LO-HI needs 0 <= LO <= HI <= 1 \(fractions of the slice axis\)$"),
    ({"grid": {"slices": ["middle"]}},
     r"^grid.slices\[0\]: 'middle' is not one of all, center, every:K, range:LO-HI, labelled$"),
    ({"grid": {"slices": ["every:0"]}}, r"^grid.slices\[0\]: 'every:0': every:K needs K >= 1$"),
    ({"train": {"slices": "range:0.2"}}, r"^train.slices: 'range:0.2' is not one of all, center"),
    ({"train": {"input": "3d"}}, r"^train.input: 3d is for native 3D networks, not the 2D bundles; use 2d or 2.5d"),
    ({"grid": {"input": ["2d", "2,5d"]}}, r"^grid.input\[1\]: '2,5d' is not one of 2d, 2.5d$"),
    ({"grid": {"aggregate": ["mean", "median"]}}, r"^grid.aggregate\[1\]: 'median' is not one of mean, max, top:K"),
    ({"train": {"aggregate": "top:0"}}, r"^train.aggregate: 'top:0' is not one of mean, max, top:K \(K >= 1\)$"),
    ({"train": {"input": "2.5d", "in_channels": 1}},
     r"^train.in_channels: input: 2.5d makes 3-channel samples \(slices k-1, k, k\+1\); in_channels is 1: "
     r"set in_channels: 3 \(or leave it unset\)$"),
    ({"grid": {"input": ["2d", "2.5d"]}, "train": {"in_channels": 1}},
     r"^train.in_channels with grid.input\[1\]: input: 2.5d makes 3-channel samples"),
    ({"grid": {"in_channels": [3, 1]}, "train": {"input": "2.5d"}},
     r"^grid.in_channels\[1\]: input: 2.5d makes 3-channel samples .*in_channels is 1"),
    ({"grid": {"in_channels": [3, 1.5]}}, r"^grid.in_channels\[1\]: 1.5 is not a whole number >= 1$"),
])
def test_a_volume_setting_no_run_could_use_is_an_error_naming_its_key(manifest, change, expected):
    """A typo in `slices` or `aggregate` would otherwise fail every run of the grid, one by one, after
    the parent run exists (or, for `range:0.8-0.2`, never be noticed by a cohort of 2D items)."""
    raw = spec_dict(manifest)
    for section, value in change.items():
        raw[section] = {**raw[section], **value}
    assert re.search(expected, _error(raw)), _error(raw)


def test_valid_volume_settings_pass_in_every_place(manifest):
    grid = {"encoder": ["resnet18"], "weights": ["scratch", "pre"], "input": ["2d", "2.5d"],
            "slices": [None, "all", "center", "every:2", "range:0.25-0.75", "labelled"],
            "aggregate": ["mean", "max", "top:3"]}
    stage = {"name": "pre", "data": {"manifest": str(manifest), "label": "sex"},
             "train": {"input": "2.5d", "slices": "every:3", "aggregate": "top:2"}}
    spec = parse_spec(spec_dict(manifest, grid=grid, pretrain=[stage]))
    assert spec.grid["slices"][4] == "range:0.25-0.75" and spec.stages["pre"].train["slices"] == "every:3"
    # 2.5d with in_channels 3 (or unset: the bundle takes 3) is fine
    parse_spec(spec_dict(manifest, train={"epochs": 2, "input": "2.5d", "in_channels": 3}))


def test_a_stage_volume_setting_is_checked_with_the_settings_it_takes_from_the_study(manifest):
    def stage(train: dict, study_train: dict | None = None) -> dict:
        return spec_dict(manifest, grid={"encoder": ["resnet18"], "weights": ["pre"]},
                         train={"epochs": 2, **(study_train or {})},
                         pretrain=[{"name": "pre", "data": {"manifest": str(manifest), "label": "sex"},
                                    "train": train}])

    assert _error(stage({"slices": "range:0.9-0.1"})) == (
        "pretrain pre: train.slices: 'range:0.9-0.1': range:LO-HI needs 0 <= LO <= HI <= 1 (fractions of the "
        "slice axis)")
    assert _error(stage({"aggregate": "avg"})).startswith("pretrain pre: train.aggregate: 'avg' is not one of")
    # the stage takes in_channels 1 from the study's train: its 2.5d samples could not enter the network
    assert _error(stage({"input": "2.5d"}, {"in_channels": 1})).startswith(
        "pretrain pre: train.in_channels: input: 2.5d makes 3-channel samples")


def test_a_bad_slices_value_fails_study_run_before_a_parent_run_exists(manifest, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(manifest, grid={"encoder": ["resnet18"],
                                                             "slices": ["range:0.25-0.75", "range:0.8-0.2"]})))
    result = CliRunner().invoke(main, ["study", "run", str(spec)])
    assert result.exit_code != 0
    (line,) = result.stderr.strip().splitlines()
    assert line == (f"medxfer: error: {spec}: grid.slices[1]: 'range:0.8-0.2': range:LO-HI needs 0 <= LO <= HI "
                    "<= 1 (fractions of the slice axis)")
    assert mlflow.MlflowClient(uri).get_experiment_by_name("medxfer/checked") is None
