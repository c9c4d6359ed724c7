"""The segmentation bundle on volumes: 2D slice-wise (and 2.5D) training with the mask read slice by
slice from a NIfTI label volume on the image's grid, Dice per slice and 3D Dice / HD95 per volume."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from medxfer.engine import load_cohort, train_bundle
from medxfer.engine.segmentation import (VolumeDice, dice_and_hd95, evaluate_items, summarize, validation_dice,
                                         volume_spacing)
from medxfer.models.preprocessing import preset
from medxfer.transforms.masks import LoadMaskd
from medxfer.transforms.pipelines import segmentation_transforms

SIZE, SLICES, SPACING = 32, 8, (0.8, 0.8, 2.0)


def _blob_volume(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A noisy 32×32×8 volume with one bright ellipsoid (the target) and its mask."""
    xx, yy, zz = np.mgrid[0:SIZE, 0:SIZE, 0:SLICES]
    cx, cy, cz = rng.uniform(10, 22, 2).tolist() + [rng.uniform(2.5, 4.5)]
    r = rng.uniform(4, 7)
    blob = (xx - cx) ** 2 + (yy - cy) ** 2 + 3.0 * (zz - cz) ** 2 <= r * r
    volume = rng.integers(0, 80, blob.shape).astype(np.uint8)
    volume[blob] = 200 + rng.integers(0, 40, int(blob.sum()))
    return volume, blob.astype(np.uint8)


@pytest.fixture(scope="module")
def volume_cohort(tmp_path_factory) -> Path:
    """12 synthetic volumes (NIfTI) with label volumes on the same grid (``masks/*.nii.gz``, outside the
    ingested folder), ingested with a ``mask`` column and split in 4 folds."""
    from medxfer.ingest import ingest, split

    root = tmp_path_factory.mktemp("volumes")
    (root / "src").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([*SPACING, 1.0])
    rows = []
    for i in range(12):
        volume, mask = _blob_volume(rng)
        nib.save(nib.Nifti1Image(volume, affine), root / "src" / f"v{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(mask, affine), root / "masks" / f"v{i:03d}.nii.gz")
        rows.append({"image": f"v{i:03d}.nii.gz", "mask": f"masks/v{i:03d}.nii.gz"})
    with open(root / "src" / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "mask"])
        writer.writeheader()
        writer.writerows(rows)
    ingest(root / "src", root / "cohort", labels=root / "src" / "labels.csv", key="image", modality="OT", workers=1)
    split(root / "cohort", 4, seed=0)
    return root


def _truth(item: dict) -> np.ndarray:
    return np.asarray(nib.load(item["label"]).dataobj) > 0


# ----------------------------------------------------------------------------- masks


def _nifti(path: Path, array: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return str(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_slice_sample_takes_slice_k_of_its_mask_volume_also_in_2_5d(tmp_path, suffix):
    image = _nifti(tmp_path / f"image{suffix}", np.zeros((6, 5, 4), dtype=np.int16))
    labels = np.zeros((6, 5, 4), dtype=np.uint8)
    for k in range(4):
        labels[k, : k + 1, k] = 2  # slice k: k + 1 pixels in row x = k (label values other than 1 count)
    mask = _nifti(tmp_path / f"mask{suffix}", labels)
    for k, slab in [(0, [0, 0, 1]), (2, [1, 2, 3]), (3, [3])]:  # 2.5D edges repeat the end slice; 2D
        out = LoadMaskd("label")({"label": mask, "image_path": image, "item_id": "abc", "slice": k,
                                  "slice_indices": slab})["label"]
        assert tuple(out.shape) == (1, 6, 5)
        assert torch.equal(out[0], torch.from_numpy(labels[:, :, k] > 0).float())


def test_a_mask_volume_on_another_grid_is_a_one_line_error_naming_the_item(tmp_path):
    image = _nifti(tmp_path / "image.nii", np.zeros((6, 5, 4), dtype=np.int16))
    for shape in [(6, 5, 3), (5, 6, 4), (6, 5)]:  # fewer slices, transposed, a 2D mask for a volume
        mask = _nifti(tmp_path / "mask.nii.gz", np.zeros(shape, dtype=np.uint8))
        with pytest.raises(ValueError) as info:
            LoadMaskd("label")({"label": mask, "image_path": image, "item_id": "abc", "slice": 1,
                                "slice_indices": [0, 1, 2]})
        message = str(info.value)
        assert "\n" not in message and message.startswith("item abc: mask volume") and "mask.nii.gz" in message
        assert "(6, 5, 4)" in message
    (tmp_path / "mask.png").write_bytes(b"not an image")  # a 2D mask file where a volume's is expected
    with pytest.raises(ValueError, match=r"^item abc: mask .*mask\.png is not a readable NIfTI volume"):
        LoadMaskd("label")({"label": str(tmp_path / "mask.png"), "image_path": image, "item_id": "abc", "slice": 1,
                            "slice_indices": [1]})


def test_2d_items_of_a_sliced_cohort_load_their_mask_whole(tmp_path):
    from PIL import Image

    png = np.zeros((4, 6), dtype=np.uint8)
    png[1, 2] = 255
    Image.fromarray(png).save(tmp_path / "m.png")
    out = LoadMaskd("label")({"label": str(tmp_path / "m.png"), "slice": -1, "slice_indices": [-1, -1, -1]})
    assert tuple(out["label"].shape) == (1, 6, 4) and out["label"][0, 2, 1] == 1 and out["label"].sum() == 1


def test_a_bad_mask_volume_in_any_fold_stops_training_at_the_start_in_one_line(volume_cohort, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from medxfer.cli import main

    root = tmp_path / "copy"
    shutil.copytree(volume_cohort, root)
    rows = list(csv.DictReader(open(root / "cohort" / "manifest.csv")))
    bad = next(r for r in rows if r["fold"] == "0")  # the test fold: read only after training otherwise
    _nifti(root / bad["mask"], np.zeros((SIZE, SIZE, 5), dtype=np.uint8))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [
        "train", "segmentation", "--manifest", str(root / "cohort" / "manifest.csv"), "--label", "mask",
        "--encoder", "mobilenet_v1_025", "--mask_root", str(root), "--epochs", "1", "--image_size", "32",
        "--input", "2.5d", "--slices", "all", "--tracking", "false"])
    assert result.exit_code != 0
    line = result.output.strip().splitlines()[-1]
    assert line == (f"medxfer: error: ValueError: item {bad['item_id']}: mask volume (32, 32, 5) does not match "
                    f"image volume (32, 32, 8) ({root / bad['mask']})")
    assert not list(tmp_path.rglob("best_model*.pt"))  # nothing was trained


# ----------------------------------------------------------------------------- per-volume scores


class SquareNet(torch.nn.Module):
    """A fixed 'segmenter': foreground exactly on the square [8, 24) × [8, 24) of every slice."""

    def __init__(self):
        super().__init__()
        self.square = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        self.square[8:24, 8:24] = True

    def forward(self, x):
        fg = torch.where(self.square, 5.0, -5.0).expand(x.shape[0], SIZE, SIZE)
        return torch.stack([-fg, fg], dim=1)


def _hand_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2.0 * (pred & truth).sum() / total


@pytest.mark.parametrize("input_mode, slices", [("2d", "all"), ("2.5d", "every:3")])
def test_volume_dice_is_the_3d_dice_of_the_stacked_slices(volume_cohort, input_mode, slices):
    """A fixed prediction (the same square on every slice) scored against the mask volumes: the volume
    Dice is the hand-computed 3D Dice over the picked slices, not the mean of slice Dice; each test
    slice has its own row; the validation metric that picks the checkpoint gives the same numbers."""
    cohort = load_cohort(volume_cohort / "cohort" / "manifest.csv", "mask", task="segmentation",
                         mask_root=volume_cohort, input=input_mode, slices=slices)
    channels = 3 if input_mode == "2.5d" else 1
    transform = segmentation_transforms(SIZE, channels, preset("imagenet"), augment=False)
    result = evaluate_items(SquareNet(), cohort.test, transform, "cpu", SIZE, batch_size=5)  # batches span volumes
    picks = list(range(SLICES))[:: 3 if slices == "every:3" else 1]
    volumes = cohort.items("test")
    assert [r["item_id"] for r in result.cases] == [v["item_id"] for v in volumes] and len(volumes) == 3
    expected, slice_dice = [], []
    for row, item in zip(result.cases, volumes):
        truth = _truth(item)[:, :, picks]
        pred = np.zeros_like(truth)
        pred[8:24, 8:24, :] = True
        per_slice = [_hand_dice(pred[:, :, i], truth[:, :, i]) for i in range(len(picks))]
        assert row["dice"] == pytest.approx(_hand_dice(pred, truth))
        assert row["dice"] != pytest.approx(np.mean(per_slice))  # a 3D Dice, not a mean of slices
        assert row["slices"] == len(picks) and row["slice_dice"] == pytest.approx(np.mean(per_slice))
        expected.append(row["dice"])
        slice_dice += per_slice
        step = picks[1] - picks[0]
        assert row["hd95_mm"] == pytest.approx(dice_and_hd95(torch.from_numpy(pred), torch.from_numpy(truth),
                                                             (0.8, 0.8, 2.0 * step))[1])
        assert row["hd95_px"] == pytest.approx(row["hd95_mm"] / 0.8)  # network pixels of 0.8 mm
    assert [(r["item_id"], r["slice"]) for r in result.slices] == [(s["item_id"], s["slice"]) for s in cohort.test]
    metrics = summarize(result.cases, slices=result.slices)
    assert metrics["test_dice"] == pytest.approx(np.mean(expected))
    assert metrics["test_slice_dice"] == pytest.approx(np.mean(slice_dice))

    metric = VolumeDice()
    metric.reset()
    for start in range(0, len(cohort.test), 4):  # the evaluator's decollated batches
        batch = [transform(s) for s in cohort.test[start:start + 4]]
        onehot = lambda m: torch.stack([~m, m]).float()  # noqa: E731
        engine = SimpleNamespace(state=SimpleNamespace(
            batch=[{"item_id": s["item_id"]} for s in cohort.test[start:start + 4]],
            output=[{"pred": onehot(SquareNet().square), "label": onehot(b["label"][0] > 0.5)} for b in batch]))
        metric._output_transform = lambda out: ([o["pred"] for o in out], [o["label"] for o in out])
        metric.iteration_completed(engine)
    assert metric.compute() == pytest.approx(np.mean(expected))


def test_volume_voxel_size_follows_the_resize_and_the_slice_step(volume_cohort):
    item = load_cohort(volume_cohort / "cohort" / "manifest.csv", "mask", task="segmentation",
                       mask_root=volume_cohort, slices="all").test[0]
    assert volume_spacing(item, 32) == pytest.approx((0.8, 0.8, 2.0))
    assert volume_spacing(item, 64, step=2) == pytest.approx((0.4, 0.4, 4.0))
    assert volume_spacing({**item, "spacing": [float("nan")] * 2}, 32) is None  # no recorded spacing


def test_2d_cohorts_keep_monai_mean_dice_for_validation():
    from monai.handlers import MeanDice

    assert isinstance(validation_dice(False), MeanDice) and isinstance(validation_dice(True), VolumeDice)


# ----------------------------------------------------------------------------- the bundle


def test_bundle_learns_a_volume_target_and_reports_per_volume(volume_cohort, store):
    """2.5D slice-wise training on the synthetic volumes learns the bright ellipsoid: the per-volume test
    Dice is far above predicting everything as foreground; per_case.csv is one row per test volume,
    per_slice.csv one per test slice; the run's params say results are per volume; evaluate re-runs the
    run's input / slices from its config and gets the same Dice."""
    import mlflow

    manifest = str(volume_cohort / "cohort" / "manifest.csv")
    trained = train_bundle("segmentation", manifest=manifest, label="mask", mask_root=str(volume_cohort),
                           encoder="mobilenet_v1_025", decoder_channels=[32, 16, 16, 8, 8], epochs=3, lr=0.01,
                           batch_size=8, image_size=SIZE, input="2.5d", slices="all", augment=False)
    cohort = load_cohort(manifest, "mask", task="segmentation", mask_root=volume_cohort, slices="all")
    everything = [_hand_dice(np.ones_like(t), t) for t in map(_truth, cohort.items("test"))]
    assert trained.metrics["test_dice"] > max(0.6, np.mean(everything) + 0.4)
    assert 0.0 < trained.metrics["test_slice_dice"] <= 1.0 and np.isfinite(trained.metrics["test_hd95_mm"])

    rows = list(csv.DictReader(open(trained.output_dir / "per_case.csv")))
    assert sorted(r["item_id"] for r in rows) == sorted(i["item_id"] for i in cohort.items("test"))
    assert set(rows[0]) == {"item_id", "fold", "dice", "hd95_px", "hd95_mm", "slices", "slice_dice"}
    assert {r["slices"] for r in rows} == {str(SLICES)}
    assert np.mean([float(r["dice"]) for r in rows]) == pytest.approx(trained.metrics["test_dice"])
    slice_rows = list(csv.DictReader(open(trained.output_dir / "per_slice.csv")))
    assert len(slice_rows) == len(cohort.test) == 3 * SLICES
    summary = json.loads((trained.output_dir / "metrics.json").read_text())
    assert summary["counts"]["test"] == 3 and summary["sample_counts"]["test"] == 3 * SLICES
    assert summary["model_selection"] == "best validation Dice per volume"

    run = mlflow.get_run(trained.run_id)
    assert run.data.params["input"] == "2.5d" and run.data.params["slices"] == "all"
    assert run.data.params["in_channels"] == "3" and run.data.params["data.n_test_samples"] == str(3 * SLICES)
    assert run.data.params["data.results_per"].startswith("volume")
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(trained.run_id)}
    assert {"per_case.csv", "per_slice.csv", "overlays.png"} <= artifacts

    evaluated = train_bundle("segmentation", config="evaluate", manifest=manifest, label="mask",
                             mlflow_run_id=trained.run_id, mask_root=str(volume_cohort))
    assert evaluated.metrics["test_dice"] == pytest.approx(trained.metrics["test_dice"], abs=1e-6)


@pytest.mark.shared_data
@pytest.mark.slow
def test_msd_hippocampus_volumes_train_one_epoch(shared_data, tmp_path, store):
    """Real MR volumes with real label volumes (MSD Task04 Hippocampus, labels 1 and 2 = foreground):
    ingest a few, 2.5D, one epoch; one per_case row per test volume (a smoke test of the real grid)."""
    from medxfer.ingest import ingest, split

    msd = shared_data / "msd_hippocampus_mr"
    if not msd.is_dir():
        pytest.skip(f"{msd} not found")
    names = sorted(p.name for p in (msd / "images").glob("hippocampus_*.nii.gz"))[:9]
    (tmp_path / "src").mkdir()
    for name in names:  # the ingested folder holds only the chosen images; masks stay where they are
        shutil.copyfile(msd / "images" / name, tmp_path / "src" / name)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        f.write("image,mask\n" + "".join(f"{n},{msd / 'labels' / n}\n" for n in names))
    ingest(tmp_path / "src", tmp_path / "cohort", labels=tmp_path / "labels.csv", key="image", modality="MR",
           workers=1)
    split(tmp_path / "cohort", 3, seed=0)
    trained = train_bundle("segmentation", manifest=str(tmp_path / "cohort" / "manifest.csv"), label="mask",
                           encoder="mobilenet_v1_025", decoder_channels=[32, 16, 16, 8, 8], epochs=1,
                           batch_size=16, image_size=64, input="2.5d", slices="all")
    rows = list(csv.DictReader(open(trained.output_dir / "per_case.csv")))
    assert len(rows) == 3 and all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    depth = {r["item_id"]: r["shape"].split("x")[2] for r in csv.DictReader(open(tmp_path / "cohort" / "manifest.csv"))}
    assert all(r["slices"] == depth[r["item_id"]] for r in rows)  # every slice of each volume scored


def test_a_cine_is_scored_frame_by_frame_not_as_a_volume():
    """A cine's frames are moments: its HD95 is the mean of its frames' 2D HD95 (pixels, and mm by the
    in-plane spacing), however many frames there are; a volume's stacked slices are scored in 3D."""
    from medxfer.engine.segmentation import _Volume

    truth = torch.zeros(32, 32, dtype=torch.bool)
    truth[10:20, 10:20] = True
    shifted = torch.roll(truth, 3, dims=0)  # the prediction 3 pixels off in every frame
    item = {"item_id": "c1", "fold": 0, "kind": "cine", "spacing": [0.5, 0.5], "shape": [64, 64],
            "image_path": "/nonexistent.nii"}  # a cine reads no header: nothing to open
    for frames in (2, 6):
        cine = _Volume(item)
        for k in range(frames):
            cine.add(2 * k, np.zeros((32, 32)), truth, shifted, *dice_and_hd95(shifted, truth))
        row, _ = cine.score(image_size=32)
        assert row["hd95_px"] == pytest.approx(3.0) and row["hd95_mm"] == pytest.approx(3.0 * 0.5 * 64 / 32)
        assert row["dice"] == pytest.approx(dice_and_hd95(shifted, truth)[0]) and row["slices"] == frames
