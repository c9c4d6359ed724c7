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


@pytest.fixture
def source_manifest(tmp_path) -> Path:
    """A pretraining stage's cohort: other items than the study's (a stage must not see test items)."""
    return write_manifest(tmp_path / "source", {"sex": lambda i: "FM"[i % 2], "organ": lambda i: "ab"[i % 2]},
                          prefix="s")


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
    ({"grid": {"encoder": None}, "train": {"encoder": "vgg19"}},
     r"^train.encoder: unknown encoder 'vgg19'; known: resnet18"),
    ({"grid": {"freeze": ["none", "top:0"]}}, r"^grid.freeze\[1\]: unknown freeze policy 'top:0'; use none, all"),
    ({"grid": {"freeze": ["frozen"]}}, r"^grid.freeze\[0\]: unknown freeze policy 'frozen'"),
    ({"grid": {"weights": ["scratch", "hub:resnet"]}},
     r"^grid.weights\[1\]: weights 'hub:resnet': unknown scheme 'hub:'; known sources: scratch, file:PATH, run:RUN_ID"),
    ({"grid": {"weights": ["file:/no/such/w.pt"]}}, r"^grid.weights\[0\]: weights 'file:/no/such/w.pt': no such file"),
    ({"grid": {"weights": ["run:"]}}, r"^grid.weights\[0\]: weights 'run:' names no run reference"),
    ({"grid": {"weights": ["image net"]}}, r"^grid.weights\[0\]: 'image net' is not a weights source"),
    ({"similarity": {"encoder": "resnet81", "sources": {}}}, r"^similarity.encoder: unknown encoder 'resnet81'"),
    ({"grid": {"encoder": ["resnet18_3d"]}},
     r"^grid.encoder\[0\]: encoder 'resnet18_3d' is a 3D network; input: 2d trains a 2D network .*set input: 3d, "
     r"or use one of resnet18, "),
    ({"grid": {"encoder": ["unet_3d"]}},
     r"^grid.encoder\[0\]: encoder 'unet_3d' is a plain 3D segmentation network \(a scratch baseline of the "
     r"segmentation bundle\); classification needs a registry encoder: resnet18, "),
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


def test_stage_label_fold_start_and_epochs_are_checked(manifest, source_manifest, tmp_path):
    def stage(**changes):
        return spec_dict(manifest, grid={"encoder": ["resnet18"], "weights": ["pre"]},
                         pretrain=[{"name": "pre", "data": {"manifest": str(source_manifest), "label": "sex"},
                                    **changes}])

    assert parse_spec(stage()).stages["pre"].label == "sex"
    bad_label = stage(data={"manifest": str(source_manifest), "label": "age"})
    assert re.match(r"pretrain pre: data.label: 'age' is not a column of", _error(bad_label))
    bad_fold = stage(data={"manifest": str(source_manifest), "label": "sex", "fold": 9})
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


def test_every_cell_needs_its_weights_imported_for_its_encoder_before_anything_runs(manifest, tmp_path,
                                                                                     monkeypatch, caplog):
    """Weights may exist for some encoders only (RadImageNet has no ResNet18): the cells that would fail
    hours in are one error listing every missing (encoder, weights) pair and the import command, at --dry-run
    and at the start of study run, before a parent run exists; the grid runs once those cells are left out."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    _import("imagenet", "mobilenet_v1_025", tmp_path)
    grid = {"encoder": ["mobilenet_v1_025", "resnet18", "densenet121"], "weights": ["scratch", "imagenet"]}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(manifest, grid=grid)))
    missing = ("weights not imported: 'imagenet' for resnet18, densenet121 (imported for mobilenet_v1_025 only); "
               "import each before the study runs (medxfer weights import FILE --name imagenet --arch resnet18), or "
               "leave those cells out of the grid (exclude)")
    # the dry run plans (a grid is designed before its weights are imported) and lists what is missing
    with caplog.at_level(logging.WARNING, logger="medxfer.study.spec"):  # the CLI prints warnings on stderr
        planned = CliRunner().invoke(main, ["study", "run", str(spec), "--dry-run"])
    assert planned.exit_code == 0 and missing in caplog.text
    # the run refuses to start: one line, nothing created in the store
    result = CliRunner().invoke(main, ["study", "run", str(spec)])
    assert result.exit_code != 0
    (line,) = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("medxfer: error")]
    assert line.endswith(missing)
    assert mlflow.MlflowClient(uri).get_experiment_by_name("medxfer/checked") is None
    # a typo imported for no encoder at all is listed with the closest imported name
    assert parse_spec(spec_dict(manifest, grid={**grid, "weights": ["imagnet"]})).unimported_weights.startswith(
        "weights not imported: 'imagnet' for mobilenet_v1_025, resnet18, densenet121 (imported for no encoder; "
        "did you mean 'imagenet'?); import each")
    # only the cells that run count: excluded ones need nothing
    exclude = [{"encoder": "resnet18", "weights": "imagenet"}, {"encoder": "densenet121", "weights": "imagenet"}]
    parsed = parse_spec(spec_dict(manifest, grid=grid, exclude=exclude))
    assert parsed.unimported_weights == ""
    assert {(c["encoder"], c["weights"]) for c in parsed.sparse_grid().kept} == {
        ("mobilenet_v1_025", "scratch"), ("resnet18", "scratch"), ("densenet121", "scratch"),
        ("mobilenet_v1_025", "imagenet")}


def test_a_pretraining_stage_needs_its_start_imported_for_the_encoders_it_trains(manifest, source_manifest, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    _import("imagenet", "mobilenet_v1_025", tmp_path)
    stage = {"name": "organs", "from": "imagenet", "data": {"manifest": str(source_manifest), "label": "organ"}}
    grid = {"encoder": ["mobilenet_v1_025", "resnet18"], "weights": ["scratch", "organs"]}
    assert parse_spec(spec_dict(manifest, grid=grid, pretrain=[stage])).unimported_weights.startswith(
        "weights not imported: 'imagenet' for resnet18 (imported for mobilenet_v1_025 only)")


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
    ({"train": {"input": "3d"}},
     r"^grid.encoder\[0\] with train.input: encoder 'resnet18' is a 2D encoder; input: 3d feeds whole volumes to a "
     r"3D network: use one of resnet10_3d, "),
    ({"grid": {"input": ["2d", "2,5d"]}}, r"^grid.input\[1\]: '2,5d' is not one of 2d, 2.5d, 3d$"),
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


def test_valid_volume_settings_pass_in_every_place(manifest, source_manifest):
    grid = {"encoder": ["resnet18"], "weights": ["scratch", "pre"], "input": ["2d", "2.5d"],
            "slices": [None, "all", "center", "every:2", "range:0.25-0.75", "labelled"],
            "aggregate": ["mean", "max", "top:3"]}
    stage = {"name": "pre", "data": {"manifest": str(source_manifest), "label": "sex"},
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


# ---- native 3D (input: 3d): encoders against the input, plain baselines, stages


@pytest.fixture
def seg_manifest(tmp_path, source_manifest) -> Path:
    """The study's cohort; its stages pretrain on ``source_manifest`` (other items, under ``source/``)."""
    return write_manifest(tmp_path, {"mask": lambda i: f"masks/i{i}.nii", "organ": lambda i: "ab"[i % 2]})


def _stage_manifest(manifest: Path) -> Path:
    """The ``source_manifest`` beside a study ``manifest`` made by the fixtures above."""
    return manifest.parents[1] / "source" / "cohort" / "manifest.csv"


def spec3d(manifest: Path, grid: dict | None = None, train: dict | None = None, stage_train: dict | None = None,
           bundle: str = "segmentation") -> dict:
    """A 3D segmentation study with a 3D classification stage ``organs`` on a cohort of other items."""
    return {"name": "three-d", "bundle": bundle,
            "data": {"manifest": str(manifest), "label": "mask" if bundle == "segmentation" else "organ"},
            "grid": grid or {"encoder": ["resnet18_3d", "unet_3d"], "weights": ["scratch", "organs"]},
            "train": {k: v for k, v in {"input": "3d", "roi_size": [32, 32, 32], "segments": ["anterior", "posterior"],
                                        "epochs": 1, **(train or {})}.items() if v is not None},  # None: unset
            "pretrain": [{"name": "organs", "data": {"manifest": str(_stage_manifest(manifest)), "label": "organ"},
                          "train": {"epochs": 1, **(stage_train or {})}}]}


def test_a_3d_grid_runs_its_possible_cells_and_says_which_it_leaves_out(seg_manifest, caplog):
    """unet_3d is a scratch baseline: unet_3d × organs cannot exist, and the plan says so in one line."""
    from medxfer.study.grid import expand

    with caplog.at_level(logging.WARNING, logger="medxfer.study.spec"):
        spec = parse_spec(spec3d(seg_manifest))
    note = ("grid: 1 of 4 cells left out, combinations that cannot run (a sparse grid): encoder=unet_3d with "
            "weights=organs (unet_3d is a plain MONAI baseline: weights scratch and freeze none only)")
    assert [r.getMessage() for r in caplog.records] == [note]
    assert spec.sparse_grid().notes() == [note]
    runs = expand(spec)
    assert sorted({r.cell for r in runs}) == ["segmentation/resnet18_3d/organs/none/lr0.001",
                                              "segmentation/resnet18_3d/scratch/none/lr0.001",
                                              "segmentation/unet_3d/scratch/none/lr0.001"]
    assert len(runs) == 3 * 5 and [r.index for r in runs] == list(range(15))
    assert {r.stage for r in runs} == {None, "organs"}
    assert all(r.overrides["input"] == "3d" and r.overrides["roi_size"] == [32, 32, 32] for r in runs)
    # the stage (a classification run) takes the study's input and roi_size, not its segments
    assert spec.stages["organs"].train == {"epochs": 1, "input": "3d", "roi_size": [32, 32, 32]}


@pytest.mark.parametrize("grid, train, stage_train, expected", [
    # the encoder against an input the spec fixes: the bundles' own reason, with both places
    ({"encoder": ["resnet18_3d"]}, {"input": "2.5d", "segments": None}, None,
     "grid.encoder[0] with train.input: " + "{dims:resnet18_3d:2.5d}"),
    ({"encoder": ["resnet18_3d", "resnet34"]}, {}, None, "grid.encoder[1] with train.input: {dims:resnet34:3d}"),
    ({"weights": ["scratch"]}, {"encoder": "densenet121"}, None,
     "train.encoder with train.input: {dims:densenet121:3d}"),
    # a plain baseline with a pretrained source or a freeze the spec fixes
    ({"encoder": ["resnet18_3d", "unet_3d"]}, {"weights": "organs"}, None,
     "grid.encoder[1] with train.weights: unet_3d is a plain MONAI baseline trained from scratch: weights scratch "
     "and freeze none only (not weights 'organs'); pretrained sources and freezing go with a registry encoder "
     "(e.g. resnet18_3d)"),
    # a grid value that no cell is left to run with
    ({"encoder": ["unet_3d"], "freeze": ["none", "top:2"]}, {}, None,
     "grid.freeze[1]: no cell of the grid can run with it: unet_3d is a plain MONAI baseline trained from scratch: "
     "weights scratch and freeze none only (not freeze 'top:2'); pretrained sources and freezing go with a "
     "registry encoder (e.g. resnet18_3d)"),
    # 2D sample settings with whole volumes, 3D settings with slices
    ({"encoder": ["segresnet_3d"]}, {"slices": "all"}, None,
     "train.slices with train.input: slices 'all' cuts volumes into 2D samples; input: 3d feeds whole volumes to a "
     "3D network: leave slices unset"),
    ({"encoder": ["resnet18"]}, {"input": "2d"}, None,
     "train.segments with train.input: segments name the label values of mask volumes for input: 3d; input: 2d "
     "segments one foreground: leave segments unset"),
    ({"encoder": ["resnet18_3d"]}, {"roi_size": [32, 48, 32]}, None,
     "train.roi_size: [32, 48, 32]: three sizes, each a multiple of 32 (e.g. [96, 96, 96], [64, 64, 32]), for the 3D "
     "networks' five stride-2 stages"),
    ({"encoder": ["resnet18_3d"]}, {"spacing": [1.0, 0, 1.0]}, None,
     "train.spacing: [1.0, 0, 1.0] is not three positive voxel sizes in mm (e.g. [1.0, 1.0, 1.5])"),
    # a stage's own input must fit the encoders it trains for
    ({"encoder": ["resnet18_3d", "unet_3d"], "weights": ["scratch", "organs"]}, {}, {"input": "2d"},
     "pretrain organs: train.input for encoder resnet18_3d: {dims:resnet18_3d:2d:classification}"),
])
def test_a_3d_setting_no_run_could_use_is_refused_up_front(seg_manifest, grid, train, stage_train, expected):
    from medxfer.engine.bundles import encoder_dims_problem

    raw = spec3d(seg_manifest, grid, train, stage_train)
    expected = re.sub(r"\{dims:([^:]+):([^:}]+):?([^}]*)\}",  # {dims:encoder:input[:task]}, task segmentation
                      lambda m: encoder_dims_problem(m.group(1), m.group(2), m.group(3) or "segmentation"), expected)
    assert _error(raw) == expected


def test_a_grid_of_2d_and_3d_inputs_pairs_each_encoder_with_its_own(seg_manifest, caplog):
    grid = {"encoder": ["resnet18", "resnet18_3d"], "input": ["2.5d", "3d"]}
    with caplog.at_level(logging.WARNING, logger="medxfer.study.spec"):
        spec = parse_spec(spec3d(seg_manifest, grid, {"segments": None, "input": None}))
    assert spec.sparse_grid().kept == [{"encoder": "resnet18", "input": "2.5d"},
                                       {"encoder": "resnet18_3d", "input": "3d"}]
    assert caplog.records[0].getMessage() == (
        "grid: 2 of 4 cells left out, combinations that cannot run (a sparse grid): encoder=resnet18 with input=3d "
        "(a 2D network needs input: 2d or 2.5d); encoder=resnet18_3d with input=2.5d (a 3D network needs input: 3d)")


def test_a_3d_classification_study_trains_frozen_cells_whole(seg_manifest):
    """The feature cache holds pooled features of 2D samples: freeze: all cells of input 3d train the network."""
    from medxfer.study.grid import expand

    raw = spec3d(seg_manifest, {"encoder": ["resnet10_3d"], "freeze": ["none", "all"]}, {"segments": None},
                 bundle="classification")
    del raw["pretrain"]
    assert {r.cell: r.feature_cache for r in expand(parse_spec(raw))} == {
        "classification/resnet10_3d/scratch/none/lr0.001": False,
        "classification/resnet10_3d/scratch/all/lr0.001": False}


def test_a_3d_spec_passes_study_run_dry_run(seg_manifest, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec3d(seg_manifest)))
    with caplog.at_level(logging.WARNING, logger="medxfer.study.spec"):  # the CLI prints warnings on stderr
        result = CliRunner().invoke(main, ["study", "run", str(spec), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "encoder=unet_3d with weights=organs (unet_3d is a plain MONAI baseline" in caplog.text
    assert " pre  todo     pretrain/organs/resnet18_3d\n" in result.stdout  # the stage, for resnet18_3d only
    assert "pretrain/organs/unet_3d" not in result.stdout and "unet_3d/organs" not in result.stdout
    assert result.stdout.count("unet_3d/scratch") == 5


def test_the_similarity_network_stays_2d(manifest):
    raw = spec_dict(manifest, similarity={"encoder": "resnet18_3d", "sources": {"other": str(manifest)}})
    assert _error(raw).startswith("similarity.encoder: encoder 'resnet18_3d' is a 3D network; input: 2d trains a 2D")


def test_top_layers_cells_of_encoders_without_keras_layers_are_left_out_with_the_reason(manifest, caplog):
    """``top_layers:K`` counts Keras layers: a torchvision ResNet18 cell of it cannot exist, the plan says why."""
    grid = {"encoder": ["resnet18", "resnet50_keras"], "weights": ["scratch"], "freeze": ["top:4", "top_layers:10"]}
    with caplog.at_level(logging.WARNING, logger="medxfer.study.spec"):
        spec = parse_spec(spec_dict(manifest, grid=grid))
    kept = [(c["encoder"], c["freeze"]) for c in spec.sparse_grid().kept]
    assert kept == [("resnet18", "top:4"), ("resnet50_keras", "top:4"), ("resnet50_keras", "top_layers:10")]
    assert "encoder=resnet18 with freeze=top_layers:10 (top_layers:K counts Keras layers" in caplog.text
    # a grid where no cell can count Keras layers is refused with the full reason
    message = _error(spec_dict(manifest, grid={"encoder": ["resnet18"], "freeze": ["top_layers:10"]}))
    assert "freeze top_layers:K counts the layers of a keras.applications network and resnet18 is not one" in message
