"""``medxfer predict`` and ``evaluate`` of runs trained on whole volumes (``input: 3d``): each volume
predicted by sliding windows of the run's ROI, its label map written on the cached volume's own grid
(shape and affine; a run that resampled to a voxel spacing has that undone), one CSV row per volume
with voxels per class; 3D classification runs one row of probabilities per volume; ``evaluate``
reproducing the run's per-class test metrics."""
from __future__ import annotations

import csv
import shutil
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from medxfer.engine import CohortError, load_cohort, train_bundle
from medxfer.engine import predict as predict_module
from medxfer.engine.predict import load_run_model, manifest_items, predict
from medxfer.models.segmenter import PlainSegmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (32, 32, 32)
# voxel spacing (1, 1, 2) mm, the axes permuted and flipped, an offset: a grid error shows
AFFINE = np.array([[0.0, -1.0, 0.0, 20.0], [1.0, 0.0, 0.0, -7.0], [0.0, 0.0, 2.0, 3.0], [0.0, 0.0, 0.0, 1.0]])
SEGMENTS = ["anterior", "posterior"]
SMALL = dict(roi_size=[32, 32, 32], epochs=1, batch_size=2, num_samples=1)


def _volume(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An MR-like volume with a bright ellipsoid; its front half (x below the centre) label 1, its back half 2."""
    xx, yy, zz = np.mgrid[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]]
    cx, cy, cz = rng.uniform(12, 20, 3)
    blob = (xx - cx) ** 2 + (yy - cy) ** 2 + 4.0 * (zz - cz) ** 2 <= rng.uniform(6, 8) ** 2
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[blob & (xx < cx)] = 1
    labels[blob & (xx >= cx)] = 2
    image = rng.normal(100, 10, SHAPE).astype(np.float32)
    image[labels > 0] += 300
    return image, labels


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, migrated_mlflow_db):
    """8 volumes (+ a 2D PNG) ingested with a mask column and a class column, 4 folds stratified by class,
    and three one-epoch runs in this module's store: 3D segmentation (resnet10_3d) on the volumes' own
    grids, the plain unet_3d baseline, and a 3D classifier."""
    from PIL import Image

    from medxfer.ingest import ingest, split

    root = tmp_path_factory.mktemp("predict_3d")
    (root / "src").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        image, labels = _volume(rng)
        nib.save(nib.Nifti1Image(image, AFFINE), root / "src" / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(labels, AFFINE), root / "masks" / f"v{i}.nii.gz")
        rows.append({"image": f"v{i}.nii.gz", "mask": str(root / "masks" / f"v{i}.nii.gz"), "size": "ab"[i % 2]})
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(root / "src" / "photo.png")  # a 2D item: left out
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "mask", "size"])
        writer.writeheader()
        writer.writerows(rows)
    shutil.copyfile(migrated_mlflow_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MEDXFER_HOME", str(root / "medxfer_home"))
        ingest(root / "src", root / "cohort", labels=root / "labels.csv", key="image", modality="MR", workers=1)
        split(root / "cohort", 4, stratify="size", seed=0)  # each fold one "a" and one "b": a test AUC
        manifest = str(root / "cohort" / "manifest.csv")
        native = train_bundle("segmentation", encoder="resnet10_3d", **_segmentation(manifest))
        plain = train_bundle("segmentation", encoder="unet_3d", **_segmentation(manifest))
        classifier = train_bundle("classification", manifest=manifest, label="size", encoder="resnet10_3d",
                                  input="3d", **SMALL)
    return SimpleNamespace(root=root, uri=uri, manifest=root / "cohort" / "manifest.csv", native=native,
                           plain=plain, classifier=classifier, home=root / "medxfer_home")


def _segmentation(manifest: str, **more) -> dict:
    return dict(manifest=manifest, label="mask", input="3d", segments=SEGMENTS, decoder_channels=[16, 16, 8, 8, 8],
                **SMALL, **more)


@pytest.fixture(scope="module")
def resampled(runs):
    """A 3D segmentation run of the module's cohort resampled to 1 mm voxels (the volumes have 2 mm slices)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(runs.root)
        mp.setenv("MLFLOW_TRACKING_URI", runs.uri)
        mp.setenv("MEDXFER_HOME", str(runs.home))
        return train_bundle("segmentation", encoder="resnet10_3d", **_segmentation(str(runs.manifest),
                                                                                  spacing=[1.0, 1.0, 1.0]))


def _run(runs, which: str, request):
    return request.getfixturevalue("resampled") if which == "resampled" else getattr(runs, which)


@pytest.fixture(autouse=True)
def _store(runs, monkeypatch, tmp_path):
    """Every test reads the module's store and secret (from its own working folder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", runs.uri)
    monkeypatch.setenv("MEDXFER_HOME", str(runs.home))


def _volumes(runs) -> list[dict]:
    return [r for r in _rows(runs.manifest) if r["kind"] == "volume"]


def _check_masks(path, runs) -> dict[str, np.ndarray]:
    """The predicted label maps: one per volume in manifest order, each with its volume's shape and affine,
    values class indices, the CSV's voxel counts theirs."""
    rows = _rows(path)
    volumes = _volumes(runs)
    assert list(rows[0]) == ["item_id", "mask", "voxels_anterior", "voxels_posterior"]
    assert [r["item_id"] for r in rows] == [v["item_id"] for v in volumes]  # the 2D photo left out
    maps = {}
    for row, volume in zip(rows, volumes):
        assert row["mask"] == f"masks/{row['item_id']}.nii.gz"
        cached = nib.load(runs.manifest.parent / volume["image"])
        mask = nib.load(path.parent / row["mask"])
        assert mask.shape == cached.shape == SHAPE
        np.testing.assert_allclose(mask.affine, cached.affine, atol=1e-5)
        labels = np.asarray(mask.dataobj)
        assert set(np.unique(labels).tolist()) <= {0, 1, 2}
        assert [int(row["voxels_anterior"]), int(row["voxels_posterior"])] == [int((labels == c).sum()) for c in (1, 2)]
        maps[row["item_id"]] = labels
    return maps


@pytest.mark.parametrize("which", ["native", "resampled", "plain"])
def test_predict_writes_a_label_map_per_volume_on_its_own_grid(runs, tmp_path, which, request):
    run = _run(runs, which, request)
    path = predict(run.run_id, runs.manifest.parent, out=tmp_path / "out", batch_size=2)
    assert path == tmp_path / "out" / "predictions.csv"
    _check_masks(path, runs)


class _Threshold(torch.nn.Module):
    """A perfect 'segmenter' of the synthetic volumes: bright voxels are the blob, its half towards lower
    array x (of the grid it is given) label 1 — scores that only line up with the truth on the volume's own
    grid if the resampling is undone exactly."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        blob = (x[:, :1] > self.threshold).float()
        return torch.cat([1 - blob, blob, torch.zeros_like(blob)], 1) * 10


@pytest.mark.parametrize("which", ["native", "resampled"])
def test_the_label_maps_line_up_with_the_volumes(runs, tmp_path, monkeypatch, which, request):
    """With a network that finds the blob by its brightness, the written maps match the true masks (the
    blob, labels 1 and 2 together) on the volumes' own grids: Dice near 1 also after resampling to 1 mm
    and back."""
    run = _run(runs, which, request)
    real = load_run_model(run.run_id)
    transform = predict_module.volume_transforms(real)
    item = manifest_items(runs.manifest, input="3d")[0]
    image = np.asarray(transform(item)["image"])
    threshold = float(np.percentile(image, 50) + np.max(image)) / 2  # between background and the blob
    monkeypatch.setattr(predict_module, "load_run_model",
                        lambda run_id: SimpleNamespace(**{**vars(real), "network": _Threshold(threshold)},
                                                       preprocessing=real.preprocessing))
    maps = _check_masks(predict(run.run_id, runs.manifest.parent, out=tmp_path / "out"), runs)
    for volume in _volumes(runs):
        truth = np.asarray(nib.load(volume["mask"]).dataobj) > 0
        found = maps[volume["item_id"]] > 0
        assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.9


def test_load_run_model_rebuilds_3d_segmenters_and_the_plain_baseline(runs):
    native = load_run_model(runs.native.run_id)
    assert native.classes == ["background", *SEGMENTS] and native.config["input"] == "3d"
    with torch.no_grad():
        assert tuple(native.network(torch.zeros(1, 1, 32, 32, 32)).shape) == (1, 3, 32, 32, 32)
    plain = load_run_model(runs.plain.run_id)
    assert isinstance(plain.network, PlainSegmenter) and plain.network.encoder.arch == "unet_3d"
    assert plain.classes == ["background", *SEGMENTS]


def test_manifest_items_takes_every_volume_whole_for_a_3d_run(runs, tmp_path):
    items = manifest_items(runs.manifest, input="3d")
    assert [i["item_id"] for i in items] == [v["item_id"] for v in _volumes(runs)]
    assert all(i["slice"] == -1 and i["shape"] == list(SHAPE) for i in items)
    with pytest.raises(CohortError, match="no volume of modality CT"):
        manifest_items(runs.manifest, ["CT"], input="3d")


@pytest.mark.parametrize("which", ["native", "resampled"])
def test_evaluate_reproduces_the_runs_per_class_test_metrics(runs, which, request):
    """``evaluate`` of a 3D run on its manifest reads input, ROI, spacing and segments from the run: the same
    per-class test Dice as training."""
    run = _run(runs, which, request)
    evaluated = train_bundle("segmentation", config="evaluate", manifest=str(runs.manifest), label="mask",
                             mlflow_run_id=run.run_id)
    for key in ("test_dice", "test_dice_anterior", "test_dice_posterior"):
        assert evaluated.metrics[key] == pytest.approx(run.metrics[key], abs=1e-5)
    assert len(_rows(evaluated.output_dir / "per_case.csv")) == load_cohort(
        runs.manifest, "mask", task="segmentation", input="3d").counts()["test"]


def test_a_3d_classifier_predicts_one_row_per_volume(runs, tmp_path):
    """Its probabilities for the test volumes are those the run recorded; ``evaluate`` gives its test AUC."""
    path = predict(runs.classifier.run_id, runs.manifest.parent, out=tmp_path / "out")
    rows = _rows(path)
    assert list(rows[0]) == ["item_id", "p_a", "p_b", "predicted"]
    assert [r["item_id"] for r in rows] == [v["item_id"] for v in _volumes(runs)]
    recorded = {r["item_id"]: float(r["p_b"])
                for r in _rows(runs.root / runs.classifier.output_dir / "predictions.csv")}
    assert recorded
    for row in rows:
        assert row["predicted"] == ("b" if float(row["p_b"]) > 0.5 else "a")
        if row["item_id"] in recorded:
            assert float(row["p_b"]) == pytest.approx(recorded[row["item_id"]], abs=1e-5)
    evaluated = train_bundle("classification", config="evaluate", manifest=str(runs.manifest), label="size",
                             mlflow_run_id=runs.classifier.run_id)
    assert evaluated.metrics["test_auc"] == pytest.approx(runs.classifier.metrics["test_auc"], abs=1e-5)
