"""Prediction and evaluation of runs trained on slices of volumes (issue 13): one row per volume with
its slices' probabilities aggregated as in training, masks stacked back on the volume grid, and
``evaluate`` giving item-level test metrics."""
from __future__ import annotations

import csv
from types import SimpleNamespace

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medxfer.engine import CohortError, load_cohort, train_bundle
from medxfer.engine.predict import MaskWriter, PredictionWriter, load_run_model, manifest_items, predict

SIZE = 32
DEPTH = 10
SLICES = "range:0.25-0.75"


def _volume(rng, positive: bool, depth: int = DEPTH) -> np.ndarray:
    v = rng.integers(0, 80, (SIZE, SIZE, depth)).astype(np.uint8)
    if positive:
        v[10:20, 10:20, depth // 2 - 2:depth // 2 + 2] = 220
    return v


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    """18 synthetic NIfTI volumes (a bright cube in the positives) ingested as OT, split in 3 folds, and one
    real 2.5D run on them (resnet18, 32 px, one epoch, ``slices: range:0.25-0.75``, ``aggregate: max``)
    tracked in a SQLite store of this module."""
    from medxfer.ingest import ingest, split

    root = tmp_path_factory.mktemp("predict_volumes")
    rng = np.random.default_rng(0)
    src = root / "src"
    src.mkdir()
    with open(src / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        for i in range(18):
            nib.save(nib.Nifti1Image(_volume(rng, bool(i % 2)), np.eye(4)), src / f"v{i:03d}.nii.gz")
            w.writerow([f"v{i:03d}.nii.gz", ["neg", "pos"][i % 2]])
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MEDXFER_HOME", str(root / "medxfer_home"))
        ingest(src, root / "cohort", labels=src / "labels.csv", key="image", modality="OT", workers=1)
        split(root / "cohort", 3, stratify="label", seed=0)
        result = train_bundle("classification", manifest=str(root / "cohort" / "manifest.csv"), label="label",
                              encoder="resnet18", epochs=1, image_size=SIZE, batch_size=16, input="2.5d",
                              slices=SLICES, aggregate="max")
    return SimpleNamespace(root=root, uri=uri, run_id=result.run_id, metrics=result.metrics,
                           manifest=root / "cohort" / "manifest.csv", home=root / "medxfer_home")


@pytest.fixture(autouse=True)
def _store(volume_run, monkeypatch, tmp_path):
    """Every test reads the module's store and secret (from its own working folder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", volume_run.uri)
    monkeypatch.setenv("MEDXFER_HOME", str(volume_run.home))


def _sample_probabilities(model, samples):
    from medxfer.engine.classification import predict_items
    from medxfer.transforms.pipelines import classification_transforms

    transform = classification_transforms(int(model.config["image_size"]), int(model.config["in_channels"]),
                                          model.preprocessing, augment=False)
    return predict_items(model.network, samples, transform, "cpu")


def test_predict_writes_one_row_per_volume_aggregating_its_slices(volume_run, tmp_path):
    """A new unlabelled folder with volumes of two depths and a 2D image: one row per item in manifest order;
    a volume's probabilities are the max (the run's aggregate) of P(pos) over the 2.5D samples of the run's
    slice range (0.25-0.75 of its depth), P(neg) = 1 - that; ``samples`` counts them (1 for the 2D image)."""
    from medxfer.ingest import ingest

    rng = np.random.default_rng(1)
    src = tmp_path / "export"
    src.mkdir()
    depths = {"a.nii.gz": 10, "b.nii.gz": 7, "c.nii.gz": 13}
    for name, depth in depths.items():
        nib.save(nib.Nifti1Image(_volume(rng, name != "b.nii.gz", depth), np.eye(4)), src / name)
    nib.save(nib.Nifti1Image(rng.integers(0, 80, (SIZE, SIZE)).astype(np.uint8), np.eye(4)), src / "flat.nii.gz")
    ingest(src, tmp_path / "new", modality="OT", workers=1)
    manifest = _rows(tmp_path / "new" / "manifest.csv")
    assert len(manifest) == 4

    path = predict(volume_run.run_id, tmp_path / "new", batch_size=4)
    rows = _rows(path)
    assert list(rows[0]) == ["item_id", "p_neg", "p_pos", "predicted", "samples"]
    assert [r["item_id"] for r in rows] == [m["item_id"] for m in manifest]

    model = load_run_model(volume_run.run_id)
    samples = manifest_items(tmp_path / "new", input="2.5d", slices=SLICES)
    prob = _sample_probabilities(model, samples)
    for row, m in zip(rows, manifest):
        mine = [i for i, s in enumerate(samples) if s["item_id"] == m["item_id"]]
        if m["kind"] == "volume":
            n = int(m["shape"].split("x")[2])
            picks = list(range(int(np.ceil(0.25 * (n - 1))), int(np.floor(0.75 * (n - 1))) + 1))
            assert [samples[i]["slice"] for i in mine] == picks
            assert [samples[i]["slice_indices"] for i in mine] == [[max(k - 1, 0), k, min(k + 1, n - 1)]
                                                                   for k in picks]
        else:
            picks = [-1]
            assert [samples[i]["slice"] for i in mine] == [-1]
        p_pos = max(prob[i, 1] for i in mine)
        assert int(row["samples"]) == len(picks)
        np.testing.assert_allclose([float(row["p_neg"]), float(row["p_pos"])], [1 - p_pos, p_pos], atol=2e-6)
        assert row["predicted"] == ("pos" if p_pos > 0.5 else "neg")


def test_evaluate_gives_item_level_test_metrics(volume_run, tmp_path):
    """``evaluate`` on a sliced run reads input/slices/aggregate from the run: the same volume-level test
    AUC as training, one prediction per test volume, and that AUC is the one of ``predict``'s per-volume
    probabilities on the test fold."""
    evaluated = train_bundle("classification", config="evaluate", manifest=str(volume_run.manifest),
                             label="label", mlflow_run_id=volume_run.run_id)
    assert evaluated.metrics["test_auc"] == pytest.approx(volume_run.metrics["test_auc"])
    run = mlflow.get_run(evaluated.run_id)
    assert run.data.params["data.results_per"].startswith("item") and run.data.params["aggregate"] == "max"
    assert run.data.params["slices"] == SLICES and run.data.params["data.n_test"] == "6"
    assert int(run.data.params["data.n_test_samples"]) == 6 * 4  # slices 3..6 of 0..9
    test = load_cohort(volume_run.manifest, "label", fold=0, input="2.5d", slices=SLICES).items("test")
    recorded = _rows(evaluated.output_dir / "predictions.csv")
    assert sorted(r["item_id"] for r in recorded) == sorted(i["item_id"] for i in test) and len(recorded) == 6

    predicted = {r["item_id"]: float(r["p_pos"]) for r in _rows(predict(volume_run.run_id, volume_run.manifest,
                                                                         out=tmp_path / "out"))}
    y = [i["label"] for i in test]
    assert roc_auc_score(y, [predicted[i["item_id"]] for i in test]) == pytest.approx(
        evaluated.metrics["test_auc"], abs=1e-4)


def test_manifest_items_cuts_volumes_as_the_run_did(volume_run):
    """A 2D run leaves volumes out (and says a sliced run is needed when nothing else is there); a 2.5D run
    without slices takes every slice; ``labelled`` (no labels at prediction time) takes every slice too."""
    with pytest.raises(CohortError, match="need a run trained with slices"):
        manifest_items(volume_run.manifest)
    every = manifest_items(volume_run.manifest, input="2.5d")
    labelled = manifest_items(volume_run.manifest, input="2d", slices="labelled")
    assert len(every) == len(labelled) == 18 * DEPTH
    assert [s["slice"] for s in labelled[:DEPTH]] == list(range(DEPTH))
    assert labelled[0]["slice_indices"] == [0] and every[0]["slice_indices"] == [0, 0, 1]
    assert {s["label"] for s in every} == {-1}
    with pytest.raises(CohortError, match="modality MR"):
        manifest_items(volume_run.manifest, ["MR"], input="2.5d")


def _engine(batch, preds):
    return SimpleNamespace(state=SimpleNamespace(batch=batch, output=[{"pred": p} for p in preds]))


def test_prediction_writer_keeps_the_2d_layout_without_aggregate(tmp_path):
    """A run trained on 2D items: one row per sample, no ``samples`` column (the output of before)."""
    writer = PredictionWriter(tmp_path / "p.csv", ["a", "b"])
    writer._collect(_engine([{"item_id": "x"}, {"item_id": "y"}], [torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])]))
    writer._write(None)
    rows = _rows(tmp_path / "p.csv")
    assert list(rows[0]) == ["item_id", "p_a", "p_b", "predicted"] and [r["predicted"] for r in rows] == ["a", "b"]
    assert float(rows[0]["p_a"]) == pytest.approx(float(torch.softmax(torch.tensor([2.0, 0.0]), 0)[0]), abs=1e-6)

    three = PredictionWriter(tmp_path / "q.csv", ["a", "b", "c"], aggregate="top:2")
    logits = [torch.log(torch.tensor(p)) for p in ([0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1])]
    three._collect(_engine([{"item_id": "v"}] * 3, logits))
    three._write(None)
    (row,) = _rows(tmp_path / "q.csv")
    expected = np.array([(0.6 + 0.2) / 2, (0.8 + 0.3) / 2, (0.6 + 0.1) / 2])
    np.testing.assert_allclose([float(row[f"p_{c}"]) for c in "abc"], expected / expected.sum(), atol=2e-6)
    assert row["samples"] == "3" and row["predicted"] == "b"


def test_mask_writer_stacks_slices_back_on_the_volume_grid(tmp_path):
    """Segmentation of slice samples: one mask NIfTI per volume with the volume's grid and affine, each
    slice's mask at its index (resize-with-pad undone), unpicked slices background; a 2D item keeps its own
    mask; one CSV row per item with the number of slices predicted."""
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-10, 5, 30]
    nib.save(nib.Nifti1Image(np.zeros((20, 16, 6), np.int16), affine), tmp_path / "vol.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.uint8), np.eye(4)), tmp_path / "flat.nii.gz")

    def sample(item_id, path, k, shape):
        return {"item_id": item_id, "image_path": str(tmp_path / path), "slice": k, "shape": shape}

    fg, bg = torch.zeros(2, SIZE, SIZE), torch.zeros(2, SIZE, SIZE)
    fg[1] = 1.0  # foreground everywhere
    pad = torch.zeros(2, SIZE, SIZE)
    pad[1, :, :3] = 1.0  # foreground only in the padding band of a 20x16 image (y < 3 of 32)
    writer = MaskWriter(tmp_path / "out", SIZE, sliced=True)
    writer._write_masks(_engine([sample("vol", "vol.nii.gz", 1, [20, 16]), sample("vol", "vol.nii.gz", 2, [20, 16])],
                                [bg, fg]))
    writer._write_masks(_engine([sample("vol", "vol.nii.gz", 3, [20, 16]), sample("flat", "flat.nii.gz", -1, [16, 16])],
                                [pad, fg]))
    writer._write_csv(None)
    rows = _rows(tmp_path / "out" / "predictions.csv")
    assert rows == [{"item_id": "vol", "mask": "masks/vol.nii.gz", "foreground_pixels": str(20 * 16), "samples": "3"},
                    {"item_id": "flat", "mask": "masks/flat.nii.gz", "foreground_pixels": str(16 * 16),
                     "samples": "1"}]
    mask = nib.load(tmp_path / "out" / "masks" / "vol.nii.gz")
    np.testing.assert_allclose(mask.affine, affine)
    data = np.asarray(mask.dataobj)
    assert data.shape == (20, 16, 6) and data.dtype == np.uint8
    assert data[:, :, 2].all() and data.sum() == 20 * 16
    assert np.asarray(nib.load(tmp_path / "out" / "masks" / "flat.nii.gz").dataobj).shape == (16, 16)
