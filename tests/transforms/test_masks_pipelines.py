"""Masks and the shared image pipelines: a mask stays on its image's grid through every pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medxfer.models.preprocessing import preset
from medxfer.transforms.masks import LoadMaskd, MirrorLikePresetd
from medxfer.transforms.pipelines import localization_transforms, segmentation_transforms


def _png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def test_rgba_mask_counts_any_colour_and_ignores_alpha(tmp_path):
    """An annotation tool's RGBA export: a pixel is lesion when any colour channel is set; an opaque
    black pixel (alpha only) is background."""
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # fully opaque everywhere
    rgba[1, 2, 0] = 200  # red
    rgba[4, 5, 2] = 10  # faint blue
    mask = LoadMaskd("mask")({"mask": _png(tmp_path / "m.png", rgba)})["mask"]
    assert tuple(mask.shape) == (1, 8, 6)  # x first: columns, then rows
    assert set(torch.unique(mask).tolist()) == {0.0, 1.0}
    assert mask.sum() == 2 and mask[0, 2, 1] == 1 and mask[0, 5, 4] == 1


def test_a_mask_of_another_size_than_its_image_is_an_error_naming_the_item(tmp_path):
    image = torch.zeros(1, 10, 10)
    with pytest.raises(ValueError, match="item abc: mask"):
        LoadMaskd("mask")({"item_id": "abc", "image": image,
                           "mask": _png(tmp_path / "m.png", np.zeros((4, 4), dtype=np.uint8))})


def test_right_mammogram_masks_are_mirrored_like_their_images_and_others_are_not():
    mask = torch.zeros(1, 4, 3)
    mask[0, 0, 0] = 1
    flipped = MirrorLikePresetd("mask")({"mask": mask.clone(), "modality": "MG", "laterality": "R"})["mask"]
    assert flipped[0, 3, 0] == 1 and flipped.sum() == 1  # x (image column, axis 1) reversed
    for other in ({"modality": "MG", "laterality": "L"}, {"modality": "US", "laterality": "R"}):
        assert torch.equal(MirrorLikePresetd("mask")({"mask": mask.clone(), **other})["mask"], mask)
    kept = MirrorLikePresetd("mask", mirror_right_mg=False)({"mask": mask.clone(), "modality": "MG",
                                                              "laterality": "R"})["mask"]
    assert torch.equal(kept, mask)


def test_segmentation_pipeline_refuses_a_size_the_unet_cannot_take():
    with pytest.raises(ValueError, match="multiple of 32"):
        segmentation_transforms(100, 1, preset("imagenet"), augment=False)


def test_localization_pipeline_keeps_the_lesion_under_the_image_finding(tmp_path):
    """The bright finding of the image and its mask land on the same network-input pixels, also after
    the resize-with-pad of a non-square image."""
    image = np.zeros((40, 64), dtype=np.uint8)
    image[10:20, 40:50] = 255
    lesion = (image > 0).astype(np.uint8) * 255
    item = {"image": _png(tmp_path / "i.png", image), "mask": _png(tmp_path / "m.png", lesion),
            "image_path": str(tmp_path / "i.png"), "modality": "US", "item_id": "x", "channels": 1}
    out = localization_transforms(32, 1, preset("imagenet"))(item)
    bright = out["image"][0] > out["image"][0].mean()
    assert out["mask"].shape[-2:] == out["image"].shape[-2:] == (32, 32)
    assert torch.equal(bright, out["mask"][0] > 0.5)
