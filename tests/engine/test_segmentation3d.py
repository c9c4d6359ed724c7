"""Native 3D in the bundles (``input: 3d``): whole-volume cohorts, patch training, sliding-window
validation and test, Dice / HD95 per volume and per class; 3D classification; dimension checks."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medxfer.engine import BundleError, CohortError, load_cohort, train_bundle
from medxfer.engine.bundles import encoder_dims_problem, error_summary
from medxfer.tracking.layout import CHECKPOINT_ARTIFACT
from medxfer.engine.segmentation3d import case_columns, class_scores, inferer, summarize_volumes
from tests.engine.volume_builders import two_label_volumes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE, SPACING = (32, 32, 24), (1.0, 1.0, 2.0)


@pytest.fixture(scope="module")
def cohort3d(tmp_path_factory) -> Path:
    """9 two-label volumes (values 1, 2) with a class column ``cls``, and a 2D PNG beside them; 3 folds."""
    return two_label_volumes(tmp_path_factory.mktemp("cohort3d"), 9, SHAPE, SPACING, seed=3, extra_2d=True)


# ----------------------------------------------------------------------------- cohort


def test_a_3d_cohort_takes_whole_volumes_and_counts_what_it_leaves_out(cohort3d):
    cohort = load_cohort(cohort3d, "mask", task="segmentation", input="3d", segments=["anterior", "posterior"])
    assert cohort.volumetric and not cohort.sliced
    assert cohort.classes == ["background", "anterior", "posterior"]
    assert sum(cohort.counts().values()) == 9 and cohort.skipped == {"not_volume": 1}
    item = cohort.train[0]
    assert item["shape"] == list(SHAPE) and item["spacing"] == list(SPACING) and item["slice"] == -1
    binary = load_cohort(cohort3d, "mask", task="segmentation", input="3d")
    assert binary.classes == ["background", "foreground"]  # no segments named: any nonzero is foreground


def test_slices_views_and_segments_are_refused_where_they_do_not_apply(cohort3d):
    with pytest.raises(CohortError, match="input: 3d feeds whole volumes to a 3D network: slices does not apply"):
        load_cohort(cohort3d, "mask", task="segmentation", input="3d", slices="all")
    with pytest.raises(CohortError, match="segments .* are for input: 3d"):
        load_cohort(cohort3d, "mask", task="segmentation", input="2.5d", segments=["a", "b"])


def test_encoder_dimensions_must_fit_the_input():
    assert encoder_dims_problem("resnet18_3d", "3d") is None and encoder_dims_problem("unet_3d", "3D") is None
    assert encoder_dims_problem("resnet18", "2.5d") is None
    assert "set input: 3d" in encoder_dims_problem("resnet18_3d", "2d")
    problem = encoder_dims_problem("resnet18", "3d")
    assert "unet_3d" in problem and "resnet18_3d" in problem
    with pytest.raises(BundleError, match=r"^encoder 'resnet50' is a 2D encoder; input: 3d"):
        train_bundle("segmentation", manifest="none.csv", encoder="resnet50", input="3d")


# ----------------------------------------------------------------------------- scores


def test_per_class_dice_and_hd95_in_mm():
    truth = torch.zeros(20, 20, 10, dtype=torch.long)
    truth[4:10, 4:10, 2:6] = 1
    truth[12:16, 4:10, 2:6] = 2
    pred = truth.clone()
    pred[pred == 2] = 0
    pred[13:17, 4:10, 2:6] = 2  # class 2 one voxel off along x
    dice, hd = class_scores(pred, truth, 3, spacing=(2.0, 1.0, 1.0))
    assert dice[0] == 1.0 and hd[0] == 0.0  # class 1 predicted exactly
    assert dice[1] == pytest.approx(2 * 3 / 8) and hd[1] == pytest.approx(2.0)  # one voxel = 2 mm along x
    absent = class_scores(torch.zeros_like(truth), truth, 3, None)
    assert absent[0] == [0.0, 0.0] and all(np.isnan(absent[1]))
    empty = class_scores(torch.zeros_like(truth), torch.zeros_like(truth), 3, None)
    assert empty[0] == [1.0, 1.0] and all(np.isnan(empty[1]))  # no surface: HD95 left out of the class mean


def test_volume_summary_and_columns_name_every_class():
    rows = [{"item_id": "a", "dice": 0.8, "hd95_px": 2.0, "hd95_mm": 2.0, "dice_anterior": 0.7, "dice_posterior": 0.9,
             "hd95_mm_anterior": 1.0, "hd95_mm_posterior": 3.0},
            {"item_id": "b", "dice": 0.4, "hd95_px": float("nan"), "hd95_mm": float("nan"), "dice_anterior": 0.0,
             "dice_posterior": 0.8, "hd95_mm_anterior": float("nan"), "hd95_mm_posterior": float("nan")}]
    out = summarize_volumes(rows, ["background", "Anterior", "posterior"])
    assert out["test_dice"] == pytest.approx(0.6) and out["test_dice_anterior"] == pytest.approx(0.35)
    assert out["test_hd95_mm_posterior"] == 3.0 and out["test_hd95_undefined_cases"] == 1.0
    assert case_columns(["background", "Anterior Hippocampus"])[-2:] == ["dice_anterior_hippocampus",
                                                                           "hd95_mm_anterior_hippocampus"]


def test_validation_infers_3d_volumes_by_sliding_windows():
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    sliding = inferer("3d", [32, 32, 32])
    assert isinstance(sliding, SlidingWindowInferer) and tuple(sliding.roi_size) == (32, 32, 32)
    assert isinstance(inferer("2.5d"), SimpleInferer)
    seen = []
    def network(x):
        seen.append(tuple(x.shape[2:]))
        return x.repeat(1, 3, 1, 1, 1)

    out = sliding(torch.zeros(1, 1, 40, 33, 20), network)
    assert tuple(out.shape) == (1, 3, 40, 33, 20) and set(seen) == {(32, 32, 32)}  # windows of the ROI, padded


# ----------------------------------------------------------------------------- bundles


@pytest.mark.parametrize("encoder", ["resnet10_3d", "unet_3d"])
def test_the_segmentation_bundle_trains_3d_and_scores_each_class_per_volume(cohort3d, store, encoder):
    result = train_bundle("segmentation", manifest=str(cohort3d), label="mask", encoder=encoder, input="3d",
                          roi_size=[32, 32, 32], segments=["anterior", "posterior"], epochs=1, batch_size=2,
                          num_samples=2, decoder_channels=[32, 16, 16, 8, 8])
    rows = list(csv.DictReader(open(result.output_dir / "per_case.csv")))
    test = load_cohort(cohort3d, "mask", task="segmentation", input="3d").counts()["test"]
    assert len(rows) == test and test >= 2  # one row per test volume
    assert list(rows[0]) == ["item_id", "fold", "dice", "hd95_px", "hd95_mm", "dice_anterior", "dice_posterior",
                             "hd95_mm_anterior", "hd95_mm_posterior"]
    for row in rows:
        per_class = [float(row["dice_anterior"]), float(row["dice_posterior"])]
        assert float(row["dice"]) == pytest.approx(np.mean(per_class))
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert metrics["classes"] == ["background", "anterior", "posterior"]
    assert {"test_dice", "test_dice_anterior", "test_dice_posterior", "test_hd95_mm_anterior"} <= set(result.metrics)
    config = json.loads((result.output_dir / "run_config.json").read_text())
    assert config["input"] == "3d" and config["roi_size"] == [32, 32, 32]


def test_a_plain_baseline_takes_no_pretrained_weights(cohort3d, store):
    with pytest.raises(Exception) as info:
        train_bundle("segmentation", manifest=str(cohort3d), label="mask", encoder="unet_3d", input="3d",
                     weights="imagenet", roi_size=[32, 32, 32], epochs=1)
    assert error_summary(info.value).startswith("unet_3d is a plain MONAI baseline trained from scratch: weights "
                                                "must be scratch and freeze none (got weights 'imagenet'")


def test_a_3d_classifier_trains_on_whole_volumes_and_pretrains_a_3d_unet(cohort3d, store):
    """Self-pretraining in 3D: a classification run's encoder is the segmentation run's ``run:`` weights."""
    from medxfer.engine.predict import load_run_model

    result = train_bundle("classification", manifest=str(cohort3d), label="cls", encoder="resnet10_3d", input="3d",
                          roi_size=[32, 32, 32], epochs=1, batch_size=2)
    rows = list(csv.DictReader(open(result.output_dir / "predictions.csv")))
    assert len(rows) == load_cohort(cohort3d, "cls", input="3d").counts()["test"] and "test_auc" in result.metrics
    encoder = load_run_model(result.run_id).network.encoder.state_dict()
    seg = train_bundle("segmentation", manifest=str(cohort3d), label="mask", encoder="resnet10_3d", input="3d",
                       weights=f"run:{result.run_id}", roi_size=[32, 32, 32], epochs=1, batch_size=2, lr=0.0,
                       decoder_channels=[32, 16, 16, 8, 8])
    checkpoint = torch.load(seg.output_dir / CHECKPOINT_ARTIFACT, weights_only=True)
    convs = [k for k in encoder if k.endswith("conv1.weight")]
    assert convs and all(torch.equal(checkpoint["encoder"][k], encoder[k]) for k in convs)  # lr 0: unchanged
    assert checkpoint["provenance"]["initial_weights"] == f"run:{result.run_id}"


def _with_segments(manifest: Path, records: list[str], name: str) -> Path:
    """A copy of ``manifest`` (beside it) whose volumes carry ``segments`` records, cycling ``records``."""
    rows = list(csv.DictReader(open(manifest)))
    volumes = [r for r in rows if r["kind"] == "volume"]
    for i, row in enumerate(volumes):
        row["segments"] = records[i % len(records)]
    out = manifest.with_name(name)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]) + ["segments"])
        writer.writeheader()
        writer.writerows(volumes)
    return out


def test_label_values_are_mapped_to_the_classes_by_segment_name(cohort3d):
    """RTSTRUCT ROIs are numbered per file: one patient's 1 is BODY, another's Liver. Named classes map
    every item's values by name; unnamed segments are background; differing records without names stop."""
    from medxfer.transforms.pipelines3d import LabelValuesd

    manifest = _with_segments(cohort3d, ["1=BODY;2=Liver", "1=Liver;2=Spleen"], "segments_manifest.csv")
    with pytest.raises(CohortError, match=r"record different segments .*segments: \['BODY', 'Liver', 'Spleen'\]"):
        load_cohort(manifest, "mask", task="segmentation", input="3d")
    cohort = load_cohort(manifest, "mask", task="segmentation", input="3d", segments=["Liver", "Spleen"])
    maps = {s["label_values"] for role in ("train", "val", "test") for s in getattr(cohort, role)}
    assert maps == {"1:0,2:1", "1:1,2:2"}
    raw = torch.tensor([[[[0.0, 1.0, 2.0]]]])
    first = LabelValuesd("label", 3)({"label": raw, "label_values": "1:0,2:1"})
    second = LabelValuesd("label", 3)({"label": raw, "label_values": "1:1,2:2"})
    assert first["label"].flatten().tolist() == [0.0, 0.0, 1.0] and "label_values" not in first  # BODY → background
    assert second["label"].flatten().tolist() == [0.0, 1.0, 2.0]
    one = load_cohort(manifest, "mask", task="segmentation", input="3d", segments=["Liver"])
    binary = LabelValuesd("label", 2)({"label": raw, "label_values": one.train[0]["label_values"]})
    assert binary["label"].sum() == 1  # only Liver is foreground, whichever value it has


def test_class_names_that_share_a_result_column_are_refused(cohort3d):
    with pytest.raises(CohortError, match=r"classes 'Left Lung' and 'left-lung' have one name .*dice_left_lung"):
        load_cohort(cohort3d, "mask", task="segmentation", input="3d", segments=["Left Lung", "left-lung"])


def test_3d_classification_needs_a_cubic_roi():
    from medxfer.models.preprocessing import SCRATCH
    from medxfer.transforms.pipelines3d import classification_transforms_3d

    with pytest.raises(ValueError, match=r"fits each whole volume into a cube \(e\.g\. \[64, 64, 64\]\)"):
        classification_transforms_3d([64, 64, 32], 1, SCRATCH.for_channels(1), augment=False)
