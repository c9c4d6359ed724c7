"""The segmentation bundle: FlexibleUNet over registry encoders, Dice-CE, Dice/HD95, overlays."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

from medxfer.cli import main
from medxfer.engine import bundle_path, load_cohort, train_bundle
from medxfer.engine.segmentation import dice_and_hd95

BUNDLE = bundle_path("segmentation")


@pytest.fixture(scope="module")
def lesion_cohort(tmp_path_factory):
    from medxfer import synthetic
    from medxfer.ingest import ingest, split

    root = tmp_path_factory.mktemp("lesions")
    labels = synthetic.write_lesion_pngs(root / "src", n_images=16)
    ingest(root / "src" / "images", root / "cohort", labels=labels, key="image", modality="US", workers=1)
    split(root / "cohort", 4, seed=0)
    return root


def test_dice_and_hd95_on_known_masks():
    a = torch.zeros(20, 20, dtype=torch.bool)
    a[5:10, 5:10] = True
    b = torch.zeros_like(a)
    b[5:10, 7:12] = True  # shifted by 2 columns
    dice, hd = dice_and_hd95(b, a)
    assert dice == pytest.approx(2 * 15 / 50) and hd == pytest.approx(2.0)
    assert dice_and_hd95(a, a) == (1.0, 0.0)
    empty = torch.zeros_like(a)
    assert dice_and_hd95(empty, empty) == (1.0, 0.0)
    d, h = dice_and_hd95(empty, a)
    assert d == 0.0 and h != h  # NaN: undefined


def test_masks_are_found_relative_to_mask_root(lesion_cohort):
    manifest = lesion_cohort / "cohort" / "manifest.csv"
    with pytest.raises(ValueError, match="mask file .* not found .*mask_root"):
        load_cohort(manifest, "mask", task="segmentation")
    cohort = load_cohort(manifest, "mask", task="segmentation", mask_root=lesion_cohort / "src")
    assert cohort.counts() == {"train": 8, "val": 4, "test": 4}
    assert all(i["label"].endswith("_mask.png") for i in cohort.train)


def test_segmentation_bundle_trains_and_logs(lesion_cohort, tmp_path, monkeypatch):
    import mlflow
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"),
                    filepath=str(BUNDLE.parent / "meta_schema_20240725.json"),
                    hash_val="76e1add273836515d0bbb3bc71962474")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = CliRunner().invoke(main, [
        "train", "segmentation", "--manifest", str(lesion_cohort / "cohort" / "manifest.csv"), "--label", "mask",
        "--encoder", "mobilenet_v1_025", "--mask_root", str(lesion_cohort / "src"), "--epochs", "2",
        "--image_size", "64", "--batch_size", "4", "--in_channels", "1"])
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("medxfer/train").experiment_id])[0]
    assert run.info.run_name == "segmentation/mobilenet_v1_025/scratch/none/lr0.001/fold0/seed0"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert 0.0 <= run.data.metrics["test_dice"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"per_case.csv", "overlays.png", "metrics.json", "checkpoint"} <= artifacts
    out = next((tmp_path / "runs").glob("segmentation_*"))
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert len(rows) == 4 and set(rows[0]) == {"item_id", "fold", "dice", "hd95_px", "hd95_mm"}
    assert json.loads((out / "metrics.json").read_text())["counts"] == {"train": 8, "val": 4, "test": 4}


def test_predict_writes_masks_on_each_items_own_grid_and_evaluate_reuses_the_run(lesion_cohort, tmp_path,
                                                                                  monkeypatch):
    import mlflow
    import nibabel as nib

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    manifest = str(lesion_cohort / "cohort" / "manifest.csv")
    # a narrower decoder than the default: predict and evaluate must rebuild it from the run
    trained = train_bundle("segmentation", manifest=manifest, label="mask", encoder="resnet18",
                           mask_root=str(lesion_cohort / "src"), epochs=1, image_size=64, batch_size=4,
                           decoder_channels=[64, 32, 16, 16, 8])
    assert mlflow.get_run(trained.run_id).data.params["decoder_channels"] == "[64, 32, 16, 16, 8]"
    out = CliRunner().invoke(main, ["predict", trained.run_id, str(lesion_cohort / "cohort"), "--out",
                                    str(tmp_path / "pred")])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(open(tmp_path / "pred" / "predictions.csv")))
    assert len(rows) == 16
    manifest_rows = {r["item_id"]: r for r in csv.DictReader(open(manifest))}
    for row in rows[:3]:
        mask = nib.load(tmp_path / "pred" / row["mask"])
        image = nib.load(lesion_cohort / "cohort" / manifest_rows[row["item_id"]]["image"])
        assert mask.shape[:2] == image.shape[:2] and (mask.affine == image.affine).all()
        assert set(map(int, set(mask.get_fdata().ravel()))) <= {0, 1}

    evaluated = train_bundle("segmentation", config="evaluate", manifest=manifest, label="mask",
                             mlflow_run_id=trained.run_id, mask_root=str(lesion_cohort / "src"), image_size=64)
    assert evaluated.metrics["test_dice"] == pytest.approx(trained.metrics["test_dice"], abs=1e-6)
