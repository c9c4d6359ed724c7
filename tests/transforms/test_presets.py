"""Modality presets: each modality lands in [0, 1] the way a reader would window it."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medxfer.transforms.presets import LoadItemd, ModalityPresetd, ResizeWithPadd


def _scale(arr, **item):
    item.setdefault("window_center", math.nan)
    item.setdefault("window_width", math.nan)
    out = ModalityPresetd("image")({"image": MetaTensor(torch.as_tensor(arr, dtype=torch.float32)[None]), **item})
    return out["image"][0].numpy()


def test_ct_uses_a_hu_window():
    hu = np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]])
    assert _scale(hu, modality="CT")[0].tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])


def test_mr_uses_percentiles_and_us_the_display_scale():
    mr = np.arange(1000, dtype=np.float32).reshape(10, 100) * 7.3
    out = _scale(mr, modality="MR")
    assert out.min() == 0 and out.max() == 1 and 0.45 < np.median(out) < 0.55
    us = np.array([[0.0, 51.0, 255.0]])
    assert _scale(us, modality="US")[0].tolist() == pytest.approx([0.0, 0.2, 1.0])


def test_projection_xray_uses_the_recorded_window_when_there_is_one():
    px = np.array([[0.0, 1024.0, 2048.0, 3072.0, 4095.0]])
    assert _scale(px, modality="PX", window_center=2048, window_width=2048)[0].tolist() == pytest.approx(
        [0.0, 0.0, 0.5, 1.0, 1.0])
    by_percentile = _scale(np.linspace(0, 4095, 1000)[None], modality="DX")
    assert by_percentile.min() == 0 and by_percentile.max() == 1


def test_right_mammograms_are_mirrored():
    img = np.zeros((4, 6), dtype=np.float32)  # NIfTI order: x (columns) first
    img[0, :] = 1000  # bright at x = 0
    left, right = _scale(img, modality="MG", laterality="L"), _scale(img, modality="MG", laterality="R")
    assert left[0].max() == 1 and right[-1].max() == 1 and right[0].max() == 0


def test_resize_with_pad_keeps_the_panoramic_aspect():
    pano = MetaTensor(torch.ones(1, 192, 96))  # 2:1, x first
    out = ResizeWithPadd("image", 64)({"image": pano})["image"]
    assert out.shape == (1, 64, 64)
    filled = (out[0] > 0.5).float()
    assert filled.sum(0).max() == 64 and filled.sum(1).max() == 32  # 64 x 32 content, rest padding


def test_load_item_gray_and_rgb(tmp_path):
    gray = np.arange(12, dtype=np.int16).reshape(4, 3)
    nib.save(nib.Nifti1Image(gray, np.eye(4)), tmp_path / "g.nii")
    rgb = np.zeros((4, 3, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "c.nii")
    g = LoadItemd("image", in_channels=3)({"image": str(tmp_path / "g.nii"), "channels": 1})["image"]
    assert g.shape == (1, 4, 3) and g.dtype == torch.float32 and float(g[0, 3, 2]) == 11
    c3 = LoadItemd("image", in_channels=3)({"image": str(tmp_path / "c.nii"), "channels": 3})["image"]
    assert c3.shape == (3, 4, 3) and float(c3[0].mean()) == 255 and float(c3[1].max()) == 0
    c1 = LoadItemd("image", in_channels=1)({"image": str(tmp_path / "c.nii"), "channels": 3})["image"]
    assert c1.shape == (1, 4, 3) and float(c1.mean()) == pytest.approx(0.299 * 255, rel=1e-4)
