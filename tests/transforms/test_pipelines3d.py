"""The 3D pipelines (``input: 3d``): whole volumes, random foreground patches, resampling to the
weights' spacing, label values as classes, volumes fitted to the classification ROI."""
from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch

from medxfer.models.preprocessing import MEDICALNET, SCRATCH, Preprocessing
from medxfer.transforms.pipelines3d import (LabelValuesd, check_roi_size, classification_transforms_3d, ct_window,
                                            resolve_roi, segmentation_transforms_3d)

SHAPE = (40, 36, 20)


@pytest.fixture
def volume(tmp_path) -> dict:
    """An MR-like volume (1 × 1 × 2 mm) with two labelled boxes: label 1 (anterior), label 2 (posterior)."""
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, SHAPE).astype(np.float32)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[5:12, 5:12, 3:8] = 1
    labels[25:30, 20:30, 10:16] = 2
    image[labels > 0] += 200
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "v.nii")
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "m.nii.gz")
    return {"image": str(tmp_path / "v.nii"), "image_path": str(tmp_path / "v.nii"),  # as load_cohort's items
            "label": str(tmp_path / "m.nii.gz"), "item_id": "v1", "modality": "MR",
            "window_center": float("nan"), "window_width": float("nan")}


def test_roi_sizes_are_three_multiples_of_32_or_a_one_line_error():
    assert check_roi_size(64) == (64, 64, 64) and check_roi_size([32, 64, 96]) == (32, 64, 96)
    for bad in ([48, 48, 48], [32, 32], [0, 32, 32]):
        with pytest.raises(ValueError, match=r"^roi_size .*multiple of 32") as info:
            check_roi_size(bad)
        assert "\n" not in str(info.value)
    assert resolve_roi(None, MEDICALNET) == (96, 96, 96)  # no recorded ROI: MONAI's usual 96³
    assert resolve_roi(None, Preprocessing(mode="x", roi_size=(64, 64, 32))) == (64, 64, 32)  # the weights' ROI
    assert resolve_roi([32, 32, 32], Preprocessing(mode="x", roi_size=(64, 64, 32))) == (32, 32, 32)


def test_training_gives_patches_of_the_roi_centred_on_foreground(volume):
    pipeline = segmentation_transforms_3d((32, 32, 32), 1, SCRATCH.for_channels(1), augment=True, num_classes=3,
                                          foreground_ratio=1.0, num_samples=3)
    torch.manual_seed(0)
    patches = pipeline(volume)
    assert len(patches) == 3
    for patch in patches:
        assert tuple(patch["image"].shape) == (1, 32, 32, 32) and tuple(patch["label"].shape) == (1, 32, 32, 32)
        assert set(torch.unique(patch["label"]).tolist()) <= {0.0, 1.0, 2.0}
        assert patch["label"].sum() > 0  # foreground_ratio 1: every patch is centred on a labelled voxel
        assert "label_fg_indices" not in patch  # the cached indices do not reach the batch


def test_validation_keeps_the_whole_volume_and_its_label_values(volume):
    out = segmentation_transforms_3d((32, 32, 32), 1, SCRATCH.for_channels(1), augment=False, num_classes=3)(volume)
    assert tuple(out["image"].shape) == (1, *SHAPE)
    expected = np.asarray(nib.load(volume["label"]).dataobj)
    assert torch.equal(out["label"][0], torch.from_numpy(expected.astype(np.float32)))
    binary = segmentation_transforms_3d((32, 32, 32), 1, SCRATCH.for_channels(1), False, num_classes=2)(volume)
    assert torch.equal(binary["label"][0], torch.from_numpy((expected > 0).astype(np.float32)))


def test_the_weights_spacing_resamples_image_and_mask_alike(volume):
    """Weights pretrained at 2 mm: the 1 × 1 × 2 mm volume becomes 20 × 18 × 20 voxels, its labels
    resampled nearest (still 0, 1, 2; each box keeps its volume in mm³ roughly)."""
    record = dataclasses.replace(SCRATCH.for_channels(1), spacing=(2.0, 2.0, 2.0))
    out = segmentation_transforms_3d((32, 32, 32), 1, record, augment=False, num_classes=3)(volume)
    assert tuple(out["image"].shape)[1:] == (20, 18, 20) and tuple(out["label"].shape) == tuple(out["image"].shape)
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 1.0, 2.0}
    box1_mm3 = 7 * 7 * 5 * 2.0
    assert abs(float((out["label"] == 1).sum()) * 8.0 - box1_mm3) / box1_mm3 < 0.35


def test_a_mask_value_the_run_does_not_know_is_an_error_naming_the_item():
    labels = {"item_id": "v1", "label": torch.tensor([[[[0.0, 1.0, 3.0]]]])}
    binary = LabelValuesd("label", num_classes=2)(labels)["label"]  # binary: any nonzero is foreground
    assert binary.flatten().tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"^item v1: mask values \[3\.0\] are not class values 0\.\.\.2 \(set seg"):
        LabelValuesd("label", num_classes=3)(labels)


def test_medicalnet_weights_get_the_nonzero_zscore_of_the_volume(volume):
    """MedicalNet's rule on the preset's [0, 1] volume: (x - mean) / std over its non-zero voxels."""
    identity = Preprocessing(mode="identity", channel_order="GRAY", mean=(0.0,), std=(1.0,))
    unit = segmentation_transforms_3d((32, 32, 32), 1, identity, augment=False, num_classes=3)(volume)["image"]
    out = segmentation_transforms_3d((32, 32, 32), 1, MEDICALNET, augment=False, num_classes=3)(volume)["image"]
    nonzero = unit[unit != 0].double().numpy()
    expected = (unit.double().numpy() - nonzero.mean()) / nonzero.std()
    assert np.allclose(out.numpy(), expected, atol=1e-4)
    assert 0.005 < float((unit == 0).double().mean()) < 0.05  # the 1st percentile clips to 0: a real test


def test_a_hu_window_intensity_rule_replaces_the_ct_preset_window():
    assert ct_window(Preprocessing(mode="x", intensity="hu-window:-1000:1000")) == (0.0, 2000.0)
    assert ct_window(SCRATCH) is None


def test_classification_fits_the_volume_into_the_roi_keeping_its_aspect(volume):
    out = classification_transforms_3d((64, 64, 64), 1, SCRATCH.for_channels(1), augment=False)(
        {**volume, "label": 1})
    image = out["image"]
    assert tuple(image.shape) == (1, 64, 64, 64) and int(out["label"]) == 1
    occupied = [int((image.abs().sum(dim=[d for d in (1, 2, 3) if d != axis]) > 0).sum()) for axis in (1, 2, 3)]
    assert occupied[0] == 64 and occupied[1] == round(36 * 64 / 40) and occupied[2] == round(20 * 64 / 40)


def test_cached_voxel_indices_are_shared_not_copied_at_every_access():
    """CacheDataset deep-copies a cached item at each access: the fg/bg indices (read-only, int32) are shared."""
    import copy

    from monai.transforms import FgBgToIndicesd

    from medxfer.transforms.pipelines3d import SharedIndicesd

    label = torch.zeros(1, 6, 5, 4)
    label[0, 2:4, 1:3, 1] = 1
    item = FgBgToIndicesd("label")({"label": label})
    shared = SharedIndicesd()(item)
    for key in ("label_fg_indices", "label_bg_indices"):
        assert shared[key].dtype == np.int32 and not shared[key].flags.writeable
        assert np.array_equal(shared[key], np.asarray(item[key]))
        assert copy.deepcopy(shared)[key] is shared[key]
