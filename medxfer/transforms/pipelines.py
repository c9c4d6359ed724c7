"""The image pipelines of the bundles: classification (single and multi-view), segmentation and
Grad-CAM localization, each built from the modality presets, the weights-bound normalisation and
augmentation. One place, so that training, prediction, the feature cache and localization read
images identically.
"""
from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import Compose, RandAdjustContrastd, RandAffined, RandFlipd, ToTensord

from ..models.classifier import view_channels
from ..models.preprocessing import Preprocessing
from .device_augment import (AFFINE_PROB, CONTRAST_SHARE, FLIP_PROB, GAMMA_RANGE, ROTATE_RANGE, SCALE_RANGE,
                             TRANSLATE_RANGE, device_side_applies)
from .masks import LoadMaskd, MirrorLikePresetd
from .multiview import FuseViewsd, LoadViewsd
from .pipelines3d import classification_transforms_3d, segmentation_transforms_3d
from .presets import LoadItemd, ModalityPresetd, ResizeWithPadd
from .weights_norm import WeightsNormalized


def deterministic_transforms(image_size: int, in_channels: int, keys: Sequence[str] = ("image",),
                             modes: Sequence[str] = ("area",)) -> list:
    """Load → modality preset → resize-with-pad: cached once by MONAI's ``CacheDataset``."""
    return [LoadItemd(keys[0], in_channels=in_channels), ModalityPresetd(keys[0]),
            ResizeWithPadd(list(keys), image_size, mode=list(modes))]


def augmentations(keys: Sequence[str] = ("image",), flip: bool = False, modes: Sequence[str] = ("bilinear",),
                  prob: float = AFFINE_PROB, image_size: int | None = None,
                  intensity_keys: Sequence[str] | None = None) -> list:
    """Mild geometric and contrast augmentation (no flips by default: laterality can matter).

    The contrast change applies to ``intensity_keys`` (default: the first key, the image; not a
    mask). With ``image_size`` the affine's sampling grid is built once and reused (``cache_grid``).
    The ranges are :mod:`.device_augment`'s, which applies the same distributions batch-wise on a GPU."""
    size = {"spatial_size": (image_size, image_size), "cache_grid": True} if image_size else {}
    out = [RandAffined(list(keys), prob=prob, rotate_range=ROTATE_RANGE, scale_range=SCALE_RANGE,
                       translate_range=TRANSLATE_RANGE, mode=list(modes), padding_mode="zeros", **size),
           RandAdjustContrastd(list(intensity_keys or keys[:1]), prob=prob * CONTRAST_SHARE, gamma=GAMMA_RANGE)]
    if flip:
        out.append(RandFlipd(list(keys), prob=FLIP_PROB, spatial_axis=0))
    return out


def classification_transforms(image_size: int, in_channels: int, preprocessing: Preprocessing | dict,
                              augment: bool, views: Sequence[str] | None = None, fusion: str = "late",
                              input: str | None = "2d", roi_size: Sequence[int] | None = None,
                              spacing: Sequence[float] | None = None, on_device: bool = False) -> Compose:
    """The full pipeline: deterministic part, augmentation (training only), weights normalisation.

    With ``views`` the items are multi-view samples (:mod:`medxfer.engine.multiview`); with
    ``input: 3d`` whole volumes fitted to ``roi_size`` (:mod:`.pipelines3d`). With ``on_device`` (2D
    images and slice samples, :func:`.device_augment.device_side_applies`) the pipeline stops at the
    [0, 1] image at network size: augmentation and normalisation then run on the training device
    (:class:`medxfer.engine.batches.DevicePrepareBatch`)."""
    if str(input or "2d").lower() == "3d":
        return classification_transforms_3d(roi_size, in_channels, preprocessing, augment, spacing)
    if views:
        return multiview_transforms(image_size, in_channels, preprocessing, augment, views, fusion)
    steps = deterministic_transforms(image_size, in_channels)
    if on_device and device_side_applies(input, views):
        return Compose(steps + [ToTensord(["image", "label"], track_meta=False)])
    if augment:
        steps += augmentations(image_size=image_size)
    steps += [WeightsNormalized("image", preprocessing, in_channels), ToTensord(["image", "label"], track_meta=False)]
    return Compose(steps)


def multiview_transforms(image_size: int, in_channels: int, preprocessing, augment: bool,
                         views: Sequence[str], fusion: str) -> Compose:
    """The classification pipeline for multi-view samples (see :func:`classification_transforms`)."""
    n = len(views)
    keys = [f"view{i}" for i in range(n)]
    per_view = Compose(deterministic_transforms(image_size, view_channels(views, fusion, in_channels)))
    steps: list = [LoadViewsd(per_view)]
    if augment:  # one random draw for all views of a sample
        steps += augmentations(keys, modes=["bilinear"] * n, image_size=image_size, intensity_keys=keys)
    if fusion == "late":
        steps += [WeightsNormalized(keys, preprocessing, in_channels), FuseViewsd(n, fusion)]
    else:
        steps += [FuseViewsd(n, fusion), WeightsNormalized("image", preprocessing, 3)]
    steps.append(ToTensord(["image", "label"], track_meta=False))
    return Compose(steps)


def segmentation_transforms(image_size: int, in_channels: int, preprocessing: Preprocessing | dict,
                            augment: bool, input: str | None = "2d", roi_size: Sequence[int] | None = None,
                            num_classes: int = 2, foreground_ratio: float = 0.5, num_samples: int = 2,
                            spacing: Sequence[float] | None = None) -> Compose:
    """Image and mask: load, preset, resize-with-pad (mask nearest), augmentation, normalisation.

    ``input: 3d``: whole volumes and label volumes, random ``roi_size`` patches in training
    (:func:`.pipelines3d.segmentation_transforms_3d`).

    A slice sample of a volume (:mod:`medxfer.engine.slices`) loads its slab as the image channels
    (one slice, or k−1, k, k+1 for 2.5D, scaled per volume) and slice ``k`` of the mask volume as
    its mask (:class:`.masks.LoadMaskd`); one random augmentation moves both alike."""
    if str(input or "2d").lower() == "3d":
        return segmentation_transforms_3d(roi_size, in_channels, preprocessing, augment, num_classes,
                                          foreground_ratio, num_samples, spacing)
    if image_size % 32:
        raise ValueError(f"image_size {image_size}: the UNet needs a multiple of 32")
    # no mirroring of right mammograms here: masks and predicted NIfTI masks stay on the image grid
    steps = [LoadItemd("image", in_channels=in_channels), LoadMaskd("label"),
             ModalityPresetd("image", mirror_right_mg=False),
             ResizeWithPadd(["image", "label"], image_size, ["area", "nearest"])]
    if augment:
        steps += augmentations(("image", "label"), modes=("bilinear", "nearest"), image_size=image_size)
    steps += [WeightsNormalized("image", preprocessing, in_channels), ToTensord(["image", "label"], track_meta=False)]
    return Compose(steps)


def localization_transforms(image_size: int, in_channels: int, preprocessing) -> Compose:
    """Image as the classifier sees it (``deterministic_transforms`` + weights normalisation)
    and the ``mask`` key loaded, mirrored and resized (nearest) with it."""
    preset = ModalityPresetd("image")
    return Compose([LoadItemd("image", in_channels=in_channels), LoadMaskd("mask"), preset,
                    MirrorLikePresetd("mask", mirror_right_mg=preset.mirror_right_mg),
                    ResizeWithPadd(["image", "mask"], image_size, ["area", "nearest"]),
                    WeightsNormalized("image", preprocessing, in_channels),
                    ToTensord(["image", "mask"], track_meta=False)])
