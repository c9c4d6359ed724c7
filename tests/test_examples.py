"""The example specs (examples/*.yaml): every one plans its full grid with --dry-run on tiny
generated cohorts laid out as the specs expect, and reduced versions of the mammography,
cats-scans and RadImageNet designs run to completion, report included."""
from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from medxfer.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SPECS = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


def _pngs(root: Path, column: str, values: list[str], n: int, seed: int, masks: bool = False) -> Path:
    """Lesion-like PNGs and a labels CSV (``image,<column>[,mask]``) cycling through ``values``."""
    from medxfer import synthetic

    synthetic.write_lesion_pngs(root, n_images=n, size=(48, 64), rng=np.random.default_rng(seed))
    labels = root / "labels.csv"
    with open(labels) as f:
        rows = list(csv.DictReader(f))
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", column] + (["mask"] if masks else []))
        for i, r in enumerate(rows):
            w.writerow([r["image"], values[i % len(values)]] + ([r["mask"]] if masks else []))
    return labels


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """``cohorts/{dental,mammo,mammo-density,busi,pneumonia,thyroid}`` (5 folds each) and ``BUSI/`` (the masks)."""
    from medxfer import synthetic
    from medxfer.ingest import ingest, split

    root = tmp_path_factory.mktemp("examples")
    cohorts = root / "cohorts"
    synthetic.write_dental_export(root / "src" / "dental", n_patients=15, rng=np.random.default_rng(1),
                                  labels_csv=root / "src" / "dental.csv")
    ingest(root / "src" / "dental", cohorts / "dental", labels=root / "src" / "dental.csv", key="PatientID", workers=1)
    split(cohorts / "dental", 5, stratify="supernumerary", seed=0)
    synthetic.write_mammography_export(root / "src" / "mammo", n_patients=10, rng=np.random.default_rng(2),
                                       labels_csv=root / "src" / "mammo.csv")
    ingest(root / "src" / "mammo", cohorts / "mammo", labels=root / "src" / "mammo.csv", key="file", workers=1)
    split(cohorts / "mammo", 5, stratify="malignant", seed=0)
    # the density stage's cohort: a separate export of other patients (other fake MRNs: another rng), same secret
    synthetic.write_mammography_export(root / "src" / "mammo-density", n_patients=10, rng=np.random.default_rng(7),
                                       labels_csv=root / "src" / "mammo-density.csv")
    ingest(root / "src" / "mammo-density", cohorts / "mammo-density", labels=root / "src" / "mammo-density.csv",
           key="file", workers=1)
    split(cohorts / "mammo-density", 5, stratify="density", seed=0)
    for name, column, values, n, masks in (("BUSI", "label", ["benign", "malignant", "normal", "benign", "malignant"],
                                            25, True),
                                           ("pneumonia", "label", ["normal", "pneumonia"], 20, False),
                                           ("thyroid", "tirads", ["2", "4a", "", "3", "5", "4b"], 24, False)):
        src = root / name if name == "BUSI" else root / "src" / name
        labels = _pngs(src, column, values, n, seed=len(name), masks=masks)
        out = cohorts / name.lower()
        ingest(src / "images", out, labels=labels, key="image", modality="US" if name != "pneumonia" else "DX",
               workers=1)
        split(out, 5, stratify=column, seed=0)
    return root


@pytest.fixture
def in_workspace(workspace, monkeypatch, tmp_path):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    return workspace


def _number(value):
    """A YAML value as the spec reads it (``1e-3`` is a number; YAML 1.1 leaves it a string)."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _intended_cells(raw: dict) -> list[dict]:
    """The cells a spec's grid names: the product of its one mapping, or the union of its blocks' products (a
    cell two blocks name once), less the cells an ``exclude`` entry matches and those that cannot exist (a
    plain 3D baseline such as unet_3d with a weights source other than scratch: the sparse grid leaves it out)."""
    blocks = raw["grid"] if isinstance(raw["grid"], list) else [raw["grid"]]
    cells: list[dict] = []
    for block in blocks:
        for values in itertools.product(*block.values()):
            cell = {k: _number(v) for k, v in zip(block, values)}
            if cell not in cells:
                cells.append(cell)
    excluded = [{k: _number(v) for k, v in entry.items()} for entry in raw.get("exclude", [])]
    cells = [c for c in cells if not any(all(c[k] == v for k, v in e.items()) for e in excluded)]
    return [c for c in cells if c.get("encoder") not in ("unet_3d", "segresnet_3d")
            or c.get("weights", "scratch") == "scratch"]


def _grid_values(raw: dict) -> dict[str, list]:
    """Each grid key's values, over every block."""
    values: dict[str, list] = {}
    for block in raw["grid"] if isinstance(raw["grid"], list) else [raw["grid"]]:
        for key, listed in block.items():
            values.setdefault(key, []).extend(v for v in listed if v not in values.get(key, []))
    return values


def _expected_runs(raw: dict) -> int:
    """Runs a spec plans: its intended cells × folds × seeds."""
    folds = raw["data"].get("folds", 5)
    folds = len(folds) if isinstance(folds, list) else folds  # a list names the test folds to run
    return len(_intended_cells(raw)) * folds * len(raw.get("seeds", [0]))


@pytest.mark.parametrize("name", SPECS)
def test_every_example_plans_its_whole_grid(in_workspace, name):
    raw = yaml.safe_load((EXAMPLES / name).read_text())
    out = CliRunner().invoke(main, ["study", "run", str(EXAMPLES / name), "--dry-run"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    todo = [line for line in lines if line.split()[1:2] == ["todo"] and "config_hash=" in line]
    assert len(todo) == _expected_runs(raw)
    stages = {s["name"] for s in raw.get("pretrain", [])}
    planned_stages = [line for line in lines if line.lstrip().startswith("pre")]
    assert len(planned_stages) == len({(c["weights"], c["encoder"]) for c in _intended_cells(raw)
                                       if c["weights"] in stages})
    # every grid value shows in the run names or their key=value suffix
    for key, values in _grid_values(raw).items():
        for value in values:
            shown = str(value) if key != "lr" else f"lr{float(value):g}"
            assert any(shown in line for line in todo), (key, value)


def _reduced(name: str, workspace: Path, **changes) -> Path:
    """The example with a smaller grid and settings, written next to the workspace."""
    raw = yaml.safe_load((EXAMPLES / name).read_text())
    raw["data"]["folds"] = [0]
    raw["seeds"] = [0]
    raw["train"].update({"epochs": 1, "image_size": 64, "batch_size": 8})
    for stage in raw.get("pretrain", []):
        stage["train"] = {"epochs": 1}
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            raw[section][field] = value
        else:  # the whole section (a grid of blocks)
            raw[section] = value
    path = workspace / f"reduced-{name}"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _import_imagenet(arch: str, tmp_path: Path) -> None:
    import torch

    from medxfer.models import create_encoder
    from medxfer.models.weights import import_weights, save_checkpoint

    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / f"{arch}.pt", create_encoder(arch, "scratch", 3))
    import_weights(path, name="imagenet", arch=arch, fmt="medxfer")


def _run(spec: Path) -> None:
    out = CliRunner().invoke(main, ["study", "run", str(spec)])
    assert out.exit_code == 0, out.output


def test_mammography_strategies_incremental_chain_and_multiview(in_workspace, tmp_path):
    import mlflow

    _import_imagenet("resnet18", tmp_path)
    spec = _reduced("mammography-strategies.yaml", in_workspace,
                    grid={"encoder": ["resnet18"], "weights": ["density", "scratch"], "freeze": ["none", "all"],
                          "fusion": ["late", "early"], "lr": [1e-4]})
    _run(spec)
    runs = mlflow.search_runs(experiment_names=["medxfer/mammo-strategies-binary"], output_format="list")
    stage = [r for r in runs if r.data.tags.get("medxfer.role") == "pretrain"]
    assert len(stage) == 1 and stage[0].data.tags["medxfer.chain"] == "imagenet → density"
    grid = [r for r in runs if r.data.tags.get("config_hash") and r.data.tags.get("medxfer.role") != "pretrain"]
    assert len(grid) == 2 * 2 * 2 and all(r.info.status == "FINISHED" for r in grid)
    assert {r.data.params["fusion"] for r in grid} == {"late", "early"}
    assert all(r.data.params["views"] == "CC+MLO" for r in grid)
    chained = [r for r in grid if r.data.tags["weights"] == "density"]
    assert all(r.data.params["weights"] == f"run:{stage[0].info.run_id}" for r in chained)
    out = CliRunner().invoke(main, ["study", "report", "mammo-strategies-binary", "--out", str(tmp_path / "report")])
    assert out.exit_code == 0, out.output
    cells = list(csv.DictReader(open(tmp_path / "report" / "results.csv")))
    assert len(cells) == 8


def test_cats_scans_sources_transfer_and_similarity(in_workspace, tmp_path):
    import mlflow

    spec = _reduced("cats-scans-sources.yaml", in_workspace)
    _run(spec)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("medxfer/cats-scans-busi")
    parent = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("medxfer.role") == "study"][0]
    local = client.download_artifacts(parent.info.run_id, "similarity.json", str(tmp_path))
    record = json.loads(Path(local).read_text())
    assert set(record["sources"]) == {"pneumonia", "thyroid", "dental"}
    # the thyroid source is ultrasound like the target; the dental panoramics are not
    assert record["sources"]["thyroid"]["frechet"] < record["sources"]["dental"]["frechet"]
    out = CliRunner().invoke(main, ["study", "report", "cats-scans-busi", "--out", str(tmp_path / "report")])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(open(tmp_path / "report" / "similarity.csv")))
    assert {r["source"] for r in rows} == {"pneumonia", "thyroid", "dental"}
    assert "Spearman" in (tmp_path / "report" / "report.html").read_text()


def test_radimagenet_design_with_gradcam_localization(in_workspace, tmp_path):
    import mlflow

    _import_imagenet("resnet18", tmp_path)
    # the design's two blocks (learning rate paired with freezing), one cell each; one source: nothing to compare
    blocks = [{"encoder": ["resnet18"], "weights": ["imagenet"], "freeze": ["none"], "lr": [1e-4]},
              {"encoder": ["resnet18"], "weights": ["imagenet"], "freeze": ["all"], "lr": [1e-3]}]
    spec = _reduced("radimagenet-4x6.yaml", in_workspace, grid=blocks, compare=None)
    _run(spec)
    runs = mlflow.search_runs(experiment_names=["medxfer/radimagenet-4x6"], output_format="list")
    assert len(runs) == 3  # parent + 2 cells
    assert {f"{r.data.tags['cell']}/fold{r.data.tags['fold']}/seed{r.data.tags['seed']}"
            for r in runs if r.data.tags.get("medxfer.role") != "study"} == {
        "classification/resnet18/imagenet/none/lr0.0001/fold0/seed0",
        "classification/resnet18/imagenet/all/lr0.001/fold0/seed0"}
    for run in (r for r in runs if r.data.tags.get("medxfer.role") != "study"):
        assert run.data.params["data.classes"] == json.dumps(["benign", "malignant"])
        assert json.loads(run.data.params["data.left_out"]) == {"other_class": 5}  # BUSI's normal images
        assert 0.0 <= run.data.metrics["loc_hit"] <= 1.0 and 0.0 <= run.data.metrics["loc_dice"] <= 1.0
        artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
        assert {"localization.csv", "gradcam.png"} <= artifacts


# ---------------------------------------------------------------- examples/real on the real datasets
REAL = EXAMPLES / "real"
REAL_SPECS = sorted(p.name for p in REAL.glob("*.yaml"))


@pytest.fixture(scope="module")
def real_workspace(tmp_path_factory, shared_data) -> Path:
    """The cohorts of ``examples/real/run_real.sh`` built from ../shared/data with the same calls."""
    from medxfer.ingest import ingest, split
    from medxfer.ingest.public import convert_ddti, convert_medmnist
    from medxfer.ingest.split import split_from_column

    root = tmp_path_factory.mktemp("real")
    (root / "data").symlink_to(shared_data)
    cohorts = root / "cohorts"
    ingest(shared_data / "busi" / "images_256", cohorts / "busi", labels=shared_data / "busi" / "labels.csv",
           key="image", modality="US", workers=2)
    split(cohorts / "busi", 5, stratify="label")
    ddti = convert_ddti(shared_data / "ddti_thyroid", root / "converted" / "ddti")
    ingest(shared_data / "ddti_thyroid" / "images", cohorts / "thyroid", labels=ddti.labels, key="image",
           modality="US", patient_column="case", workers=2)
    split(cohorts / "thyroid", 5, stratify="tirads")
    pneumonia = convert_medmnist(shared_data / "medmnist" / "pneumoniamnist_reconstructed.npz",
                                 root / "converted" / "pneumonia", ["normal", "pneumonia"])
    ingest(root / "converted" / "pneumonia" / "images", cohorts / "pneumonia", labels=pneumonia.labels,
           key="image", modality="CR", workers=2)
    split(cohorts / "pneumonia", 5, stratify="label")
    for npz, cohort in (("adrenalmnist3d_64", "adrenal"), ("adrenalmnist3d", "adrenal28")):  # 64³ and 28³
        adrenal = convert_medmnist(shared_data / "medmnist3d" / f"{npz}.npz", root / "converted" / cohort,
                                   ["normal", "hyperplasia"])
        ingest(root / "converted" / cohort / "images", cohorts / cohort, labels=adrenal.labels, key="image",
               modality="OT", workers=2)
        split_from_column(cohorts / cohort, "split", ["test", "val", "train"])
    hippocampus = _load_script(REAL / "hippocampus_labels.py")  # run_hippocampus.sh's labels step
    hippocampus.main(str(shared_data / "msd_hippocampus_mr"), str(root / "hippocampus_labels.csv"))
    ingest(shared_data / "msd_hippocampus_mr" / "images", cohorts / "hippocampus",
           labels=root / "hippocampus_labels.csv", key="image", modality="MR", workers=2)
    split(cohorts / "hippocampus", 5, seed=0)
    return root


def _load_script(path: Path):
    """An example script as a module (examples/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.shared_data
@pytest.mark.parametrize("name", REAL_SPECS)
def test_real_specs_plan_their_whole_grid_on_the_real_cohorts(real_workspace, monkeypatch, tmp_path, name):
    monkeypatch.chdir(real_workspace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    raw = yaml.safe_load((REAL / name).read_text())
    out = CliRunner().invoke(main, ["study", "run", str(REAL / name), "--dry-run"])
    assert out.exit_code == 0, out.output
    todo = [line for line in out.stdout.splitlines() if line.split()[1:2] == ["todo"] and "config_hash=" in line]
    assert len(todo) == _expected_runs(raw)
    assert ("-reduced" in name) == (raw["name"].endswith("-reduced"))  # reduced and full never share a study


@pytest.mark.shared_data
def test_real_cohorts_hold_the_documented_tasks(real_workspace):
    """What the study specs' data sections select from the real datasets (docs/results.md's counts)."""
    from medxfer.engine import load_cohort

    spec = {p: yaml.safe_load((REAL / p).read_text()) for p in REAL_SPECS}
    busi = spec["busi-classification-reduced.yaml"]["data"]
    c = load_cohort(real_workspace / busi["manifest"], busi["label"], classes=busi["classes"], localization=True,
                    mask_root=real_workspace / busi["mask_root"])
    items = c.train + c.val + c.test
    assert len(items) == 647 and c.skipped == {"other_class": 133}
    assert sum(i["label"] for i in items) == 210 and all(i.get("mask") for i in items)
    ddti = spec["ddti-tirads-reduced.yaml"]["data"]
    c = load_cohort(real_workspace / ddti["manifest"], ddti["label"], classes=ddti["classes"])
    items = c.train + c.val + c.test
    assert c.classes == ["benign", "suspicious"] and c.skipped == {"no_label": 198}
    assert [sum(i["label"] == k for i in items) for k in (0, 1)] == [71, 386]
    from medxfer.ingest.manifest import read_manifest

    rows, _ = read_manifest(real_workspace / "cohorts" / "thyroid" / "manifest.csv")
    folds_of: dict[str, set] = {}
    for r in rows:
        folds_of.setdefault(r["patient"], set()).add(r["fold"])
    assert len(folds_of) < len(rows) and all(len(f) == 1 for f in folds_of.values())  # cases, not images
    seg = spec["busi-segmentation-reduced.yaml"]["data"]
    c = load_cohort(real_workspace / seg["manifest"], seg["label"], task="segmentation",
                    mask_root=real_workspace / seg["mask_root"])
    assert len(c.train + c.val + c.test) == 647 and c.skipped == {"no_label": 133}
    # the official split (test 298 [229 / 69], val 98, train 1188); range 0.25-0.75 keeps slices 16..47 of 64
    # and 7..20 of 28
    for name, per_volume in (("adrenal-2p5d.yaml", 32), ("adrenal28-2p5d.yaml", 14)):
        adrenal = spec[name]
        c = load_cohort(real_workspace / adrenal["data"]["manifest"], adrenal["data"]["label"],
                        classes=adrenal["data"]["classes"], input=adrenal["train"]["input"],
                        slices=adrenal["train"]["slices"], aggregate=adrenal["train"]["aggregate"])
        assert c.counts() == {"train": 1188, "val": 98, "test": 298}
        assert c.sample_counts() == {"train": 1188 * per_volume, "val": 98 * per_volume, "test": 298 * per_volume}
        assert [sum(i["label"] == k for i in c.items("test")) for k in (0, 1)] == [229, 69]
