"""Native 3D studies (``input: 3d``): `medxfer study run` on a tiny cohort of label volumes with a 3D
encoder and MONAI's plain UNet (a scratch baseline) × scratch and a 3D classification stage; the stage
trains in 3D and its checkpoint starts the 3D encoder's runs; the cell that cannot exist (UNet × stage)
is left out and said so; `medxfer study report` adds per-class Dice."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from medxfer.cli import main
from tests.engine.volume_builders import two_label_volumes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE, SPACING = (32, 32, 32), (1.0, 1.0, 1.5)
N_VOLUMES = 9


def _write_cohort(root: Path) -> Path:
    """9 MR-like two-label volumes with a class column ``cls`` (small / big) for the pretraining stage;
    ingested and split into 3 folds. The manifest."""
    return two_label_volumes(root, N_VOLUMES, SHAPE, SPACING, seed=5, classes=("small", "big"))


@pytest.mark.slow
def test_a_3d_study_runs_a_3d_stage_and_reports_per_class_dice(store, tmp_path):
    manifest = _write_cohort(tmp_path / "data")
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "organs3d", "bundle": "segmentation", "data": {"manifest": str(manifest), "label": "mask",
                                                               "folds": [0]},
        "grid": {"encoder": ["resnet10_3d", "unet_3d"], "weights": ["scratch", "sizes"]},
        "train": {"input": "3d", "roi_size": [32, 32, 32], "segments": ["anterior", "posterior"], "epochs": 1,
                  "batch_size": 2, "num_samples": 1, "decoder_channels": [32, 16, 16, 8, 8]},
        "pretrain": [{"name": "sizes", "data": {"manifest": str(manifest), "label": "cls"},
                      "train": {"epochs": 1, "batch_size": 2}}]}, sort_keys=False))
    runner = CliRunner()
    result = runner.invoke(main, ["study", "run", str(spec_file)])
    assert result.exit_code == 0, result.output
    assert "3 ran, 0 already done, 0 failed; grid 3/3 finished" in result.output
    assert "[pretrain] pretrain/sizes/resnet10_3d (from scratch)" in result.output
    assert "pretrain/sizes/unet_3d" not in result.output  # the cell unet_3d × sizes cannot exist

    # the stage: a classification run in 3D, with the study's input and roi_size
    stage_dir = Path("runs") / "organs3d" / "pretrain_sizes_resnet10_3d"
    config = json.loads((stage_dir / "run_config.json").read_text())
    assert config["task"] == "classification" and config["input"] == "3d" and config["roi_size"] == [32, 32, 32]
    import mlflow

    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("medxfer/organs3d").experiment_id])
    # cell runs by their full name (tag `cell` + fold and seed; their MLflow run name is the short one)
    by_name = {f"{r.data.tags['cell']}/fold{r.data.tags['fold']}/seed{r.data.tags['seed']}" if "cell" in r.data.tags
               else r.info.run_name: r for r in runs}
    stage = by_name["pretrain/sizes/resnet10_3d"]
    target = by_name["segmentation/resnet10_3d/sizes/none/lr0.001/fold0/seed0"]
    assert target.data.params["weights"] == f"run:{stage.info.run_id}"  # the stage's checkpoint, same encoder
    assert target.data.params["input"] == "3d" and "test_dice_posterior" in target.data.metrics
    assert "segmentation/unet_3d/scratch/none/lr0.001/fold0/seed0" in by_name

    report = runner.invoke(main, ["study", "report", "organs3d", "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Per-class Dice" in md and "### Per-class comparisons" in md
    assert "encoder=unet_3d with weights=sizes (unet_3d is a plain MONAI baseline" in md  # left out, and said so
    assert "The networks are native 3D (input 3d): they train on patches of [32, 32, 32] voxels" in md
    cells = {r["cell"]: r for r in csv.DictReader(open(tmp_path / "report" / "results.csv"))}
    assert len(cells) == 3
    for row in cells.values():
        assert 0.0 <= float(row["dice_anterior"]) <= 1.0 and 0.0 <= float(row["dice_posterior"]) <= 1.0
        assert row["dice_anterior_cases"] == row["n_cases"] == "3"
    comparisons = list(csv.DictReader(open(tmp_path / "report" / "comparisons.csv")))
    assert {c["metric"] for c in comparisons} == {"Dice", "dice_anterior", "dice_posterior"}
    assert {(c["source_a"], c["source_b"]) for c in comparisons} == {("sizes", "scratch")}
