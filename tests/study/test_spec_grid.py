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


# ---- grids that are not a full product: blocks (a union of products) and exclude (partial cells removed)

SOURCES = ["scratch", "imagenet"]
# RadImageNet's pairing of learning rate with freezing, on two encoders: fine-tune all at 1e-3 / 1e-4,
# frozen and top-K at 1e-2 / 1e-3
ENCODERS = ["resnet18", "densenet121"]
FINE_TUNED = {"encoder": ENCODERS, "weights": SOURCES, "freeze": ["none"], "lr": ["1e-3", "1e-4"]}
FROZEN = {"encoder": ENCODERS, "weights": SOURCES, "freeze": ["all", "top:2"], "lr": ["1e-2", "1e-3"]}
PRODUCT = {"encoder": ENCODERS, "weights": SOURCES, "freeze": ["none", "all", "top:2"], "lr": ["1e-2", "1e-3", "1e-4"]}
NOT_CROSSED = [{"freeze": "none", "lr": "1e-2"}, {"freeze": "all", "lr": "1e-4"}, {"freeze": "top:2", "lr": "1e-4"}]
PAIRED_CELLS = {f"classification/{e}/{w}/{f}/lr{lr}" for e in ("resnet18", "densenet121") for w in SOURCES
                for f, lr in (("none", "0.001"), ("none", "0.0001"), ("all", "0.01"), ("all", "0.001"),
                              ("top:2", "0.01"), ("top:2", "0.001"))}


def _dry_run(manifest: Path, tmp_path: Path, **changes) -> list[tuple[str, str]]:
    """``study run --dry-run`` of the spec: (run name, config hash) of every run it plans, in order."""
    import yaml
    from click.testing import CliRunner

    from medxfer.cli import main

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict(manifest, seeds=[0], **changes), sort_keys=False))
    out = CliRunner().invoke(main, ["study", "run", str(path), "--dry-run"])
    assert out.exit_code == 0, out.output
    rows = [line.split() for line in out.stdout.splitlines() if "config_hash=" in line]
    return [(row[2], row[3].removeprefix("config_hash=")) for row in rows]


def test_blocks_and_exclude_plan_exactly_the_intended_cells(manifest, tmp_path, mlflow_store):
    blocks = _dry_run(manifest, tmp_path, grid=[FINE_TUNED, FROZEN])
    excluded = _dry_run(manifest, tmp_path, grid=PRODUCT, exclude=NOT_CROSSED)
    for planned in (blocks, excluded):
        assert len(planned) == len(PAIRED_CELLS) * 5 == 120  # 2 encoders × 2 sources × 6 (freeze, lr), 5 folds
        assert {name.rsplit("/fold", 1)[0] for name, _ in planned} == PAIRED_CELLS
        assert len({h for _, h in planned}) == 120
    assert dict(blocks) == dict(excluded)  # the same runs, whichever way the grid is written
    # blocks run in their order (the first block's cells first), exclude keeps the product's order
    assert [name.split("/")[3] for name, _ in blocks[:40]] == ["none"] * 40
    assert [name.rsplit("/fold", 1)[0] for name, _ in excluded[:10:5]] == [
        "classification/resnet18/scratch/none/lr0.001", "classification/resnet18/scratch/none/lr0.0001"]


def test_cells_of_a_full_product_keep_their_hashes_however_the_grid_is_written(manifest):
    """Resuming a study after rewriting its grid as blocks or with exclude re-runs nothing that was there."""
    full = {r.name: r.config_hash for r in expand(parse_spec(spec_dict(manifest, grid=PRODUCT)))}
    for changes in ({"grid": [FINE_TUNED, FROZEN]}, {"grid": PRODUCT, "exclude": NOT_CROSSED},
                    {"grid": [PRODUCT]}):  # a list of one block is the grid as a mapping
        runs = expand(parse_spec(spec_dict(manifest, **changes)))
        assert runs and all(full[r.name] == r.config_hash for r in runs)
    # the values stored before blocks existed (test_hashes_keep_their_stored_values), as two blocks and with exclude
    stored = {"classification/resnet18/scratch/none/lr0.001/fold0/seed0": "2becf21baf9d63d81f6f",
              "classification/resnet18/a/none/lr0.0001/fold4/seed0": "29cabd81f6a8d2a4bcd1"}
    data = {"manifest": str(manifest), "label": "y", "modalities": ["PX"]}
    for changes in ({"grid": [{"encoder": ["resnet18"], "weights": ["a"], "lr": [1e-4]},
                              {"encoder": ["resnet18"], "weights": ["scratch"], "lr": ["1e-3"]}]},
                    {"grid": {"encoder": ["resnet18"], "weights": ["scratch", "a"], "lr": ["1e-3", 1e-4]},
                     "exclude": [{"weights": "a", "lr": "1e-3"}, {"weights": "scratch", "lr": 1e-4}]}):
        runs = {r.name: r.config_hash for r in expand(parse_spec(spec_dict(manifest, data=data, seeds=[0], **changes)))}
        assert len(runs) == 10 and {name: runs[name] for name in stored} == stored
    plain = parse_spec(spec_dict(manifest, data=data, seeds=[0],
                                 grid={"encoder": ["resnet18"], "weights": ["scratch", "a"], "lr": ["1e-3", 1e-4]}))
    assert plain.spec_hash() == "d6bf8db957b17fc4" and plain.blocks == [] and plain.exclude == []
    paired = parse_spec(spec_dict(manifest, grid=[FINE_TUNED, FROZEN]))
    assert paired.spec_hash() != parse_spec(spec_dict(manifest, grid=PRODUCT)).spec_hash()  # what the spec asks for
    assert paired.grid == {"encoder": ["resnet18", "densenet121"], "weights": SOURCES,
                           "freeze": ["none", "all", "top:2"], "lr": [0.001, 0.0001, 0.01]}  # each key's values


def test_a_cell_two_blocks_name_runs_once_with_a_note(manifest, caplog):
    import logging

    again = {**FINE_TUNED, "encoder": ["resnet18"], "lr": [1e-4, "1e-5"], "weights": ["imagenet"]}
    with caplog.at_level(logging.WARNING, logger="medxfer.study.spec"):
        spec = parse_spec(spec_dict(manifest, grid=[FINE_TUNED, again]))
    cells = [r.cell for r in expand(spec) if r.fold == 0 and r.seed == 0]
    assert len(cells) == len(set(cells)) == 8 + 1
    assert cells[-1] == "classification/resnet18/imagenet/none/lr1e-05"
    assert ("grid: 1 cells are in more than one block and run once: encoder=resnet18, weights=imagenet, freeze=none, "
            "lr=0.0001 (grid[0], grid[1])") in caplog.text


@pytest.mark.parametrize("changes, message", [
    ({"grid": [FINE_TUNED, {"encoder": ["resnet18"], "lr": [1e-2]}]},
     r"^grid\[1\] names the keys \['encoder', 'lr'\] and grid\[0\] \['encoder', 'freeze', 'lr', 'weights'\]: every "
     r"block names the same keys"),
    ({"grid": [FINE_TUNED, {**FROZEN, "lr": []}]}, r"^grid\[1\]\.lr is empty"),
    ({"grid": [FINE_TUNED, {**FROZEN, "encoder": ["resnet81"]}]}, r"^grid\[1\]\.encoder\[0\]: unknown encoder"),
    ({"grid": [FINE_TUNED, {**FROZEN, "freeze": ["all", "half"]}]}, r"^grid\[1\]\.freeze\[1\]: "),
    ({"grid": [FINE_TUNED, [1]]}, r"^grid\[1\] is not a mapping"),
    ({"grid": []}, r"^grid is an empty list"),
    ({"grid": [FINE_TUNED, {**FROZEN, "fold": [0]}]}, r"grid\[1\] names the keys"),
    ({"grid": [{**FINE_TUNED, "fold": [0]}, {**FROZEN, "fold": [1]}]}, r"^grid may not set \['fold'\]"),
    ({"blocks": [FINE_TUNED]}, r"^unknown top-level keys \['blocks'\]"),
    ({"grid": PRODUCT, "exclude": {"lr": 1e-2}}, r"^exclude is a list of partial cells"),
    ({"grid": PRODUCT, "exclude": [{}]}, r"^exclude\[0\] is not a mapping"),
    ({"grid": PRODUCT, "exclude": [{"freeze": "none", "lrr": 1e-2}]},
     r"^exclude\[0\]: 'lrr' is not a grid key \(grid keys: encoder, weights, freeze, lr\); did you mean 'lr'\?"),
    ({"grid": PRODUCT, "exclude": [{"freeze": "nnone"}]},
     r"^exclude\[0\]\.freeze: 'nnone' is not a value of grid\.freeze \(none, all, top:2\); did you mean 'none'\?"),
    ({"grid": PRODUCT, "exclude": [*NOT_CROSSED, {"freeze": "none", "lr": "1e-5"}]},
     r"^exclude\[3\]\.lr: 1e-05 is not a value of grid\.lr \(0\.01, 0\.001, 0\.0001\)"),
    ({"grid": [FINE_TUNED, FROZEN], "exclude": [{"freeze": "none", "lr": "1e-2"}]},
     r"^exclude\[0\] \{freeze: none, lr: 0\.01\} matches no cell of the grid"),
    ({"grid": PRODUCT, "exclude": [{"lr": "1e-2"}]}, r"^grid\.lr\[0\]: exclude removes every cell with it"),
    ({"grid": [FINE_TUNED, FROZEN], "exclude": [{"freeze": "top:2"}]},
     r"^grid\[1\]\.freeze\[1\]: exclude removes every cell with it"),
])
def test_blocks_and_exclude_errors_name_their_place(manifest, changes, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(spec_dict(manifest, **changes))


def test_blocks_and_exclude_compose_with_the_cells_that_cannot_exist(manifest, caplog):
    """A 2D and a 3D encoder crossed with their inputs in one block: the crossings that cannot run are left out
    per block, as in a plain grid; exclude may name one of them; a block whose value has no cell left is an error."""
    import logging

    mixed = {"encoder": ["resnet18", "resnet10_3d"], "input": ["2d", "3d"], "lr": [1e-3]}
    more = {"encoder": ["resnet10_3d"], "input": ["3d"], "lr": [1e-4]}
    with caplog.at_level(logging.WARNING, logger="medxfer.study.spec"):
        sparse = parse_spec(spec_dict(manifest, grid=[mixed, more])).sparse_grid()
    assert sparse.kept == [{"encoder": "resnet18", "input": "2d", "lr": 0.001},
                           {"encoder": "resnet10_3d", "input": "3d", "lr": 0.001},
                           {"encoder": "resnet10_3d", "input": "3d", "lr": 0.0001}]
    assert [c for c, _ in sparse.left_out] == [{"encoder": "resnet18", "input": "3d", "lr": 0.001},
                                               {"encoder": "resnet10_3d", "input": "2d", "lr": 0.001}]
    assert "grid: 2 of 5 cells left out, combinations that cannot run" in caplog.text
    excluded = parse_spec(spec_dict(manifest, grid=[mixed, more],
                                    exclude=[{"encoder": "resnet10_3d", "input": "2d"}])).sparse_grid()
    assert excluded.kept == sparse.kept and len(excluded.left_out) == 1 and len(excluded.excluded) == 1
    assert excluded.notes()[0].startswith("grid: 1 of 4 cells left out")
    with pytest.raises(SpecError, match=r"^grid\[1\]\.encoder\[0\]: no cell of the grid can run with it: "):
        parse_spec(spec_dict(manifest, grid=[mixed, {**more, "encoder": ["resnet18"]}]))


def test_report_comparisons_pair_cells_equal_in_every_key_but_weights_when_lr_goes_with_freeze(manifest):
    """The report compares the sources of each (encoder, freeze, lr) the grid has: with lr paired to freeze, each
    comparison is of two cells of one setting, never across learning rates."""
    import numpy as np

    from medxfer.study import report as rep

    spec = parse_spec(spec_dict(manifest, grid=[FINE_TUNED, FROZEN], seeds=[0]))
    keys = list(spec.grid)
    rng = np.random.default_rng(0)
    y = np.arange(20) % 2
    runs = []
    for planned in expand(spec):
        tags = planned.tags(spec.name, keys)
        items = np.flatnonzero(np.arange(20) % 5 == planned.fold)
        p = 1 / (1 + np.exp(-(2 * y[items] - 1 + rng.normal(0, 1, len(items)))))
        runs.append(rep.ChildRun(
            run_id=planned.config_hash, name=planned.name, cell=planned.cell, task="classification",
            grid={k: tags[k] for k in keys}, fold=str(planned.fold), seed="0", metric=float("nan"),
            item_id=np.array([f"i{i}" for i in items], dtype=object), y=y[items], prob=np.c_[1 - p, p]))
    summary = rep.summarize(rep.StudyRuns("paired", None, None, keys, runs), n_resamples=200)
    assert len(summary.cells) == 24
    pairs = {tuple(sorted((c.cell_a, c.cell_b))) for c in summary.comparisons}
    expected = {tuple(sorted(cell.replace("/imagenet/", f"/{w}/") for w in SOURCES))
                for cell in PAIRED_CELLS if "/imagenet/" in cell}
    assert pairs == expected and len(pairs) == 12  # 2 encoders × 6 (freeze, lr) settings, scratch vs imagenet
