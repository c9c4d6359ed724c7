"""The 3D image pipelines of the bundles (``input: 3d``): whole cached volumes for 3D networks.

Both tasks read a volume the same way — load (channel-first, with its affine) → resample to the
weights' voxel spacing when they record one (or the run's ``spacing``) → the modality preset to
[0, 1] over the whole volume (CT window, MR 1st–99th percentiles …; a ``hu-window:LO:HI`` intensity
rule of the weights replaces the CT window) → the weights' normalisation (mean/std, MedicalNet's
non-zero z-score). That part is deterministic and cached by MONAI's ``CacheDataset``.

- Segmentation, training: random patches of ``roi_size`` (each a multiple of 32), ``num_samples``
  per volume per epoch, a patch centred on foreground with probability ``foreground_ratio`` (MONAI
  ``RandCropByPosNegLabeld``; the foreground / background voxel indices are computed once, in the
  cached part, not at every crop), then 3D augmentation (small rotations about all three axes and
  scaling, intensity scale and shift; no flips: left and right differ). Validation and test: the
  whole volume, predicted by sliding windows of ``roi_size`` (:mod:`medxfer.engine.segmentation3d`).
- Classification: the whole volume resized to fit ``roi_size`` (longest side, aspect kept) and padded
  to it, then the same augmentation in training.

Masks are label volumes on the image's grid: with ``num_classes == 2`` any nonzero voxel is foreground,
with more their values 1…n are the classes (:class:`LabelValuesd`).
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (Compose, DeleteItemsd, EnsureTyped, FgBgToIndicesd, LoadImaged, MapTransform,
                              RandAffined, RandCropByPosNegLabeld, RandScaleIntensityd, RandShiftIntensityd,
                              ResizeWithPadOrCropd, Resized, Spacingd, SpatialPadd)

from ..models.preprocessing import Preprocessing
from .presets import ModalityPresetd
from .weights_norm import WeightsNormalized

ROI_MULTIPLE = 32  # the registry's 3D encoders take sizes that are multiples of 32 (five stride-2 stages)
DEFAULT_ROI = (96, 96, 96)  # MONAI's usual 3D patch; SwinUNETR's pretraining ROI


def check_roi_size(roi_size: Sequence[int] | int) -> tuple[int, int, int]:
    """``roi_size`` as three ints, each a positive multiple of 32, else a one-line ``ValueError``."""
    roi = (int(roi_size),) * 3 if isinstance(roi_size, (int, float)) else tuple(int(v) for v in roi_size)
    if len(roi) != 3 or any(v <= 0 or v % ROI_MULTIPLE for v in roi):
        raise ValueError(f"roi_size {list(roi)}: three sizes, each a multiple of {ROI_MULTIPLE} (e.g. [96, 96, 96], "
                         "[64, 64, 32]), for the 3D networks' five stride-2 stages")
    return roi  # type: ignore[return-value]


def resolve_roi(roi_size: Sequence[int] | int | None, preprocessing: Preprocessing | dict | None) -> tuple[int, ...]:
    """The run's ``roi_size``; unset: the weights' pretraining ROI when they record one, else 96³."""
    if roi_size is None:
        record = _record(preprocessing)
        roi_size = record.roi_size if record is not None and record.roi_size else DEFAULT_ROI
    return check_roi_size(roi_size)


def bundle_roi(input: str | None, roi_size: Sequence[int] | int | None, preprocessing) -> list[int] | None:
    """The bundles' ``roi``: for ``input: 3d`` the run's ``roi_size`` or, unset, the weights' pretraining ROI
    (else 96³); None for 2D samples."""
    return list(resolve_roi(roi_size, preprocessing)) if str(input or "2d").lower() == "3d" else None


def resolve_spacing(spacing: Sequence[float] | None, preprocessing: Preprocessing | dict | None
                    ) -> tuple[float, ...] | None:
    """The voxel spacing volumes are resampled to: the run's ``spacing``, else the weights' recorded
    one, else None (each volume keeps its own grid)."""
    if spacing is None:
        record = _record(preprocessing)
        spacing = record.spacing if record is not None else None
    return tuple(float(v) for v in spacing) if spacing else None


def _record(preprocessing: Preprocessing | dict | None) -> Preprocessing | None:
    if preprocessing is None or isinstance(preprocessing, Preprocessing):
        return preprocessing
    return Preprocessing.from_dict(preprocessing)


def ct_window(preprocessing: Preprocessing | dict | None) -> tuple[float, float] | None:
    """(centre, width) of a ``hu-window:LO:HI`` intensity rule; None for other rules."""
    record = _record(preprocessing)
    if record is None or not record.intensity.startswith("hu-window:"):
        return None
    low, high = (float(v) for v in record.intensity.split(":")[1:3])
    return (low + high) / 2, high - low


class LabelValuesd(MapTransform):
    """A label volume as class indices: binary (``num_classes == 2``): any nonzero voxel is 1; else the
    values 1…n−1 are the classes, and another value is a one-line error naming the item (a mask whose
    segments the run does not know). An item with ``label_values`` (``value:class,…``, from its
    ``segments`` record: :func:`medxfer.engine.data.label_values`) has its values mapped first."""

    def __init__(self, keys, num_classes: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes = int(num_classes)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            m = d[key]
            x = m.as_tensor() if isinstance(m, MetaTensor) else torch.as_tensor(np.asarray(m))
            mapping = d.pop("label_values", None)
            if mapping:
                mapped = torch.zeros_like(x)
                for pair in str(mapping).split(","):
                    value, index = (float(v) for v in pair.split(":"))
                    mapped[x == value] = index
                x = mapped
            if self.num_classes == 2:
                out = (x != 0).to(torch.float32)
            else:
                values = torch.unique(x)
                bad = [float(v) for v in values if v < 0 or v >= self.num_classes or v != torch.round(v)]
                if bad:
                    raise ValueError(f"item {d.get('item_id')}: mask values {bad[:5]} are not class values 0..."
                                     f"{self.num_classes - 1} (set segments to name every label value)")
                out = x.to(torch.float32)
            d[key] = MetaTensor(out, meta=dict(m.meta)) if isinstance(m, MetaTensor) else out
        return d


class SharedIndices(np.ndarray):
    """Read-only voxel indices that ``deepcopy`` shares instead of copying: MONAI's ``CacheDataset``
    deep-copies each cached item at every access, and ``RandCropByPosNegLabeld`` only reads them."""

    def __deepcopy__(self, memo):
        return self


class SharedIndicesd(MapTransform):
    """The cached foreground / background indices (``FgBgToIndicesd``) as read-only :class:`SharedIndices`,
    int32 below 2³¹ voxels (half the bytes of MONAI's int64). Measured by ``scripts/bench/bench_3d.py``: the
    deep copy of int64 indices at every access was about a fifth of an epoch on small volumes."""

    def __init__(self, keys=("label_fg_indices", "label_bg_indices")) -> None:
        super().__init__(list(keys))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            values = np.asarray(torch.as_tensor(d[key]).numpy())
            small = values.size == 0 or int(values.max()) < 2 ** 31
            shared = np.array(values, dtype=np.int32 if small else np.int64).view(SharedIndices)
            shared.flags.writeable = False
            d[key] = shared
        return d


class VolumeSpacingd(Spacingd):
    """MONAI ``Spacingd`` for items that carry other ``image_*`` keys (``image_path``): MONAI's takes every
    ``<key>_*`` key for a metadata dict and updates it, which fails on a string. Those keys are set aside
    around the call; ``inverse`` is MONAI's (so ``Invertd`` still undoes the resampling)."""

    def __call__(self, data, lazy=None):
        aside = {k: v for k, v in data.items() if isinstance(k, str) and not isinstance(v, dict)
                 and any(k.startswith(f"{key}_") for key in self.keys)}
        d = super().__call__({k: v for k, v in data.items() if k not in aside}, lazy=lazy)
        d.update(aside)
        return d


def load_and_scale(keys: Sequence[str], preprocessing: Preprocessing | dict, in_channels: int,
                    spacing: tuple[float, ...] | None, num_classes: int | None) -> list:
    """The deterministic, cached part: load → (labels) → spacing → modality preset → weights normalisation."""
    steps: list = [LoadImaged(list(keys), reader="NibabelReader", image_only=True, ensure_channel_first=True,
                              dtype=np.float32)]
    if num_classes is not None:
        steps.append(LabelValuesd("label", num_classes))
    if spacing is not None:
        modes = ["bilinear", "nearest"][:len(keys)]
        steps.append(VolumeSpacingd(list(keys), pixdim=spacing, mode=modes, dtype=np.float32))
    window = ct_window(preprocessing)
    preset = ModalityPresetd("image", mirror_right_mg=False, **({"ct_window": window} if window else {}))
    steps += [preset, WeightsNormalized("image", preprocessing, in_channels)]
    return steps


def augmentations3d(keys: Sequence[str], modes: Sequence[str], prob: float = 0.2) -> list:
    """3D augmentation: rotations up to 15° about each axis and ±10 % scaling (label nearest), then
    intensity scale and shift of the image (after normalisation, so in its units). No flips."""
    angle = np.deg2rad(15)
    return [RandAffined(list(keys), prob=prob, rotate_range=(angle, angle, angle), scale_range=(0.1, 0.1, 0.1),
                        mode=list(modes), padding_mode="zeros"),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5)]


def segmentation_transforms_3d(roi_size: Sequence[int], in_channels: int, preprocessing: Preprocessing | dict,
                               augment: bool, num_classes: int = 2, foreground_ratio: float = 0.5,
                               num_samples: int = 2, spacing: Sequence[float] | None = None,
                               patches: bool | None = None) -> Compose:
    """Volume and label volume: training (``patches``, default ``augment``) yields ``num_samples`` random
    ``roi_size`` patches per volume (foreground-centred with probability ``foreground_ratio``); otherwise
    the whole volume (sliding-window inference covers it)."""
    roi = check_roi_size(roi_size)
    if not 0.0 <= float(foreground_ratio) <= 1.0:
        raise ValueError(f"foreground_ratio {foreground_ratio}: a probability in [0, 1]")
    keys = ("image", "label")
    steps = load_and_scale(keys, preprocessing, in_channels, resolve_spacing(spacing, preprocessing), num_classes)
    if augment if patches is None else patches:
        fg, bg = "label_fg_indices", "label_bg_indices"
        # pad first so every crop fits; indices cached with the volume (not recomputed at each crop)
        steps += [SpatialPadd(list(keys), roi),  # only axes shorter than the patch (SpatialPad never crops)
                  FgBgToIndicesd("label"), SharedIndicesd([fg, bg]),
                  RandCropByPosNegLabeld(list(keys), "label", roi, pos=float(foreground_ratio),
                                         neg=1.0 - float(foreground_ratio), num_samples=int(num_samples),
                                         fg_indices_key=fg, bg_indices_key=bg),
                  DeleteItemsd([fg, bg])]
    if augment:
        steps += augmentations3d(keys, ("bilinear", "nearest"))
    steps.append(EnsureTyped(list(keys), track_meta=False))
    return Compose(steps)


def classification_transforms_3d(roi_size: Sequence[int], in_channels: int, preprocessing: Preprocessing | dict,
                                 augment: bool, spacing: Sequence[float] | None = None) -> Compose:
    """A volume resized (longest side, aspect kept) and zero-padded to ``roi_size``; augmentation in training.
    The ROI is a cube (a volume fitted by its longest side into a box would be cropped along a shorter side)."""
    roi = check_roi_size(roi_size)
    if len(set(roi)) != 1:
        raise ValueError(f"roi_size {list(roi)}: 3D classification fits each whole volume into a cube (e.g. "
                         f"[{max(roi)}, {max(roi)}, {max(roi)}]); a box would crop it along its shorter sides")
    steps = load_and_scale(("image",), preprocessing, in_channels, resolve_spacing(spacing, preprocessing), None)
    steps += [Resized("image", spatial_size=max(roi), size_mode="longest", mode="trilinear", anti_aliasing=False),
              ResizeWithPadOrCropd("image", spatial_size=roi, mode="constant")]
    if augment:
        steps += augmentations3d(("image",), ("bilinear",))
    steps.append(EnsureTyped(["image", "label"], track_meta=False))
    return Compose(steps)
