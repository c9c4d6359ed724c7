"""Study spec validation and grid expansion: names, config hashes, shards."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from medxfer.study.grid import expand, parse_shard, shard
from tests.study.conftest import write_manifest
from medxfer.study.spec import SpecError, load_spec, parse_spec


@pytest.fixture
def manifest(tmp_path) -> Path:
    return write_manifest(tmp_path, {"y": lambda i: i % 2})


def spec_dict(manifest: Path, **changes) -> dict:
    raw = {"name": "s1", "data": {"manifest": str(manifest), "label": "y", "folds": 5}, "bundle": "classification",
           "grid": {"encoder": ["resnet18", "densenet121"], "weights": ["scratch", "imagenet"],
                    "freeze": ["none", "all"], "lr": ["1e-3", 1e-4]},
           "seeds": [0, 1], "train": {"epochs": 3, "image_size": 64}}
    raw.update(changes)
    return raw


def test_design_example_expands_to_named_hashed_runs(manifest):
    spec = parse_spec(spec_dict(manifest))
    runs = expand(spec)
    assert len(runs) == 2 * 2 * 2 * 2 * 5 * 2
    assert runs[0].name == "classification/resnet18/scratch/none/lr0.001/fold0/seed0"  # YAML's "1e-3" is a number
    assert runs[1].name.endswith("/fold0/seed1")
    assert len({r.config_hash for r in runs}) == len(runs)
    assert len({r.cell for r in runs}) == 16 and len({r.cell_hash for r in runs}) == 16
    assert [r.config_hash for r in expand(parse_spec(spec_dict(manifest)))] == [r.config_hash for r in runs]
    first = runs[0]
    assert first.overrides["fold"] == 0 and first.overrides["epochs"] == 3 and first.overrides["lr"] == 0.001
    tags = first.tags("s1", list(spec.grid))
    assert tags["config_hash"] == first.config_hash and tags["medxfer.role"] == "cell"
    assert {tags[k] for k in ("encoder", "weights", "freeze", "lr")} == {"resnet18", "scratch", "none", "0.001"}


def test_config_hash_follows_what_changes_results(manifest):
    base = {r.name: r.config_hash for r in expand(parse_spec(spec_dict(manifest)))}
    # where or how fast it computes: same runs
    fast = spec_dict(manifest, train={"epochs": 3, "image_size": 64, "num_workers": 4, "cache_rate": 0.5})
    assert {r.name: r.config_hash for r in expand(parse_spec(fast))} == base
    # what it computes: every run is new
    longer = spec_dict(manifest, train={"epochs": 4, "image_size": 64})
    assert not set(base.values()) & {r.config_hash for r in expand(parse_spec(longer))}
    # a re-split cohort (new fold column) is a new configuration
    text = manifest.read_text().replace(",0,", ",9,", 1)
    manifest.write_text(text)
    with pytest.raises(SpecError, match="split into 6 folds"):
        parse_spec(spec_dict(manifest))


def test_reimporting_other_weights_under_a_name_changes_the_hash(manifest, tmp_path, monkeypatch):
    import torch

    from medxfer.models import create_encoder
    from medxfer.models.weights import import_weights, save_checkpoint

    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    raw = spec_dict(manifest, grid={"encoder": ["resnet18"], "weights": ["mine"]}, seeds=[0])
    path = tmp_path / "w.pt"
    torch.manual_seed(0)
    save_checkpoint(path, create_encoder("resnet18", "scratch", 3))
    import_weights(path, name="mine", arch="resnet18", fmt="medxfer")
    first = [r.config_hash for r in expand(parse_spec(raw))]
    torch.manual_seed(1)
    save_checkpoint(path, create_encoder("resnet18", "scratch", 3))
    import_weights(path, name="mine", arch="resnet18", fmt="medxfer", replace=True)
    assert not set(first) & {r.config_hash for r in expand(parse_spec(raw))}


def test_shards_are_disjoint_and_cover_the_grid(manifest):
    runs = expand(parse_spec(spec_dict(manifest)))
    for n in (1, 2, 3, 7):
        parts = [shard(runs, i, n) for i in range(1, n + 1)]
        names = [r.name for p in parts for r in p]
        assert len(names) == len(set(names)) == len(runs)
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) == (1, 1)
    for bad in ("0/2", "3/2", "a/b", "2"):
        with pytest.raises(SpecError, match="--shard"):
            parse_shard(bad)


def test_extra_grid_keys_make_distinct_cells(manifest):
    raw = spec_dict(manifest, grid={"encoder": ["resnet18"], "dropout": [0.0, 0.5]}, seeds=[0])
    runs = expand(parse_spec(raw))
    assert len({r.name for r in runs}) == len(runs) == 10
    assert runs[0].name == "classification/resnet18/scratch/none/lr0.001/dropout=0.0/fold0/seed0"


@pytest.mark.parametrize("change, message", [
    ({"name": "has space"}, "letters, digits"),
    ({"colour": 1}, "unknown top-level keys"),
    ({"grid": {}}, "grid is required"),
    ({"grid": {"fold": [0, 1]}}, "may not set"),
    ({"grid": {"lr": []}}, "empty"),
    ({"grid": {"lr": [1, 1]}}, "twice"),
    ({"grid": {"encoders": ["resnet18"]}}, "not keys of the classification bundle"),
    ({"train": {"lr": 1}, "grid": {"lr": [1, 2]}}, "both grid and train"),
    ({"bundle": "nosuch"}, "no bundle"),
    ({"seeds": []}, "seeds"),
])
def test_spec_errors_say_what_is_wrong(manifest, change, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(spec_dict(manifest, **change))


def test_data_section_errors(manifest, tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        parse_spec(spec_dict(manifest, data={"manifest": str(tmp_path / "nope.csv"), "label": "y"}))
    with pytest.raises(SpecError, match=r"data.folds \[7\]"):
        parse_spec(spec_dict(manifest, data={"manifest": str(manifest), "label": "y", "folds": [0, 7]}))
    unsplit = tmp_path / "unsplit.csv"
    unsplit.write_text("item_id,image,y\na,b,1\n")
    with pytest.raises(SpecError, match="medxfer split"):
        parse_spec(spec_dict(manifest, data={"manifest": str(unsplit), "label": "y"}))
    subset = parse_spec(spec_dict(manifest, data={"manifest": str(manifest), "label": "y", "folds": [0, 2]}))
    assert subset.folds == [0, 2]


def test_load_spec_resolves_manifest_beside_the_spec(manifest, tmp_path, monkeypatch):
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text("name: rel\ndata: {manifest: cohort/manifest.csv, label: y}\n"
                         "grid: {lr: [1e-3, 1e-4]}\n")
    monkeypatch.chdir(manifest.parent)  # not where the relative path points
    spec = load_spec(spec_file)
    assert spec.manifest == manifest.resolve() and spec.folds == [0, 1, 2, 3, 4]
    assert [r.overrides["lr"] for r in expand(spec)][:1] == [0.001]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    assert json.loads(json.dumps(spec.grid)) == {"lr": [0.001, 0.0001]}


def test_the_hash_ignores_paths_and_spelling(manifest, tmp_path):
    """Machines sharing a tracking server with the cohort and weights at other paths, or a spec
    writing 30.0 for 30, still recognise each other's finished runs."""
    import shutil

    from medxfer.models import create_encoder
    from medxfer.models.weights import save_checkpoint

    weights = save_checkpoint(tmp_path / "a" / "w.pt", create_encoder("resnet18", "scratch", 3))
    elsewhere = tmp_path / "b" / "other_name.pt"
    elsewhere.parent.mkdir()
    shutil.copy(weights, elsewhere)
    moved = tmp_path / "moved" / "manifest.csv"
    moved.parent.mkdir()
    shutil.copy(manifest, moved)

    def hashes(man, w, epochs, **train):
        raw = spec_dict(man, grid={"encoder": ["resnet18"], "weights": [f"file:{w}"], "freeze": ["all"]},
                        train={"epochs": epochs, **train}, seeds=[0])
        raw["data"]["mask_root"] = str(man.parent)
        return [r.config_hash for r in expand(parse_spec(raw))]

    first = hashes(manifest, weights, 30)
    assert hashes(moved, elsewhere, 30.0, feature_cache=True) == first
    assert hashes(moved, elsewhere, 30, feature_cache="false") != first  # trained through the encoder
    assert hashes(manifest, weights, 31) != first


def test_hashes_keep_their_stored_values(manifest):
    """Studies resume from an MLflow store by these values: a change here re-runs every study there."""
    raw = spec_dict(manifest, data={"manifest": str(manifest), "label": "y", "modalities": ["PX"]}, seeds=[0],
                    grid={"encoder": ["resnet18"], "weights": ["scratch", "a"], "lr": ["1e-3", 1e-4]})
    spec = parse_spec(raw)
    runs = expand(spec)
    assert spec.spec_hash() == "d6bf8db957b17fc4"
    assert (runs[0].name, runs[0].config_hash, runs[0].cell_hash) == (
        "classification/resnet18/scratch/none/lr0.001/fold0/seed0", "2becf21baf9d63d81f6f", "98ce66b7594aca44161d")
    assert runs[-1].config_hash == "29cabd81f6a8d2a4bcd1"


def test_spec_errors_are_medxfer_errors_naming_the_closest_key(manifest):
    from medxfer.core import MedxferError

    assert issubclass(SpecError, MedxferError) and issubclass(SpecError, ValueError)
    with pytest.raises(SpecError, match=r"unknown top-level keys \['gird'\] \(allowed: name, .*\); "
                                        r"did you mean 'grid'"):
        parse_spec(spec_dict(manifest, gird={"lr": [1]}))
    with pytest.raises(SpecError, match=r"unknown data keys \['fold'\] .*did you mean 'folds'"):
        parse_spec(spec_dict(manifest, data={"manifest": str(manifest), "label": "y", "fold": 2}))
    with pytest.raises(SpecError, match=r"train: \['epoch'\] are not keys of the classification bundle; did you mean "
                                        r"'epochs'"):
        parse_spec(spec_dict(manifest, train={"epoch": 3}))


@pytest.mark.parametrize("change, message", [
    ({"seeds": ["first"]}, r"^seeds\[0\]: "),
    ({"data": "cohort.csv"}, r"^data is not a mapping$"),
    ({"similarity": {"image_size": "big", "sources": {"x": "M"}}}, r"^similarity\.image_size: "),
    ({"similarity": [1]}, r"^similarity is a mapping"),
    ({"grid": {"lr": [1e-3], "dropout": []}}, r"^grid\.dropout is empty"),
])
def test_type_errors_are_one_line_naming_where(manifest, change, message):
    raw = spec_dict(manifest, **change)
    if "similarity" in change and isinstance(change["similarity"], dict):
        raw["similarity"]["sources"]["x"] = str(manifest)
    with pytest.raises(SpecError, match=message) as caught:
        parse_spec(raw)
    assert "\n" not in str(caught.value)
