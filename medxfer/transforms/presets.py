"""Modality presets as MONAI dictionary transforms: cached NIfTI item → channel-first [0, 1] image.

The manifest says what each item is (``modality``, the recorded VOI window, ``laterality``), so
one transform serves a cohort that mixes CR and DX, or carries PX and ceph together:

- CT: a window in HU (default soft tissue, centre 40 / width 400), clipped to [0, 1];
- MR: 1st–99th percentile → [0, 1] (MR intensities have no absolute scale);
- US and 8-bit rasters: /255 (the display scale the sonographer saw);
- projection X-ray (CR, DX, PX, IO, RG, RF, XA, OT-with-window): the VOI window recorded at ingest
  when there is one, else the 0.5–99.5 percentiles;
- MG: 0.5–99.5 percentiles; right-breast images are mirrored so the chest wall is on one side.

Then :class:`ResizeWithPadd` fits the longest side to the network size and pads the rest, which
keeps the aspect of dental panoramics (about 2:1) and cephalograms instead of squashing them.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, Resize, SpatialPad

PROJECTION = {"CR", "DX", "PX", "IO", "RG", "RF", "XA", "DR"}


class LoadItemd(MapTransform):
    """Load a cached item (``manifest.csv`` ``image``) as a float32 channel-first 2D MetaTensor.

    RGB items (ultrasound) come channel-first; with ``in_channels=1`` they become luminance
    (ITU-R BT.601 weights). Gray items feeding a 3-channel network stay 1-channel here: the
    weights transform repeats them after normalisation.
    """

    def __init__(self, keys: KeysCollection = "image", in_channels: int = 3, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.in_channels = in_channels
        self.loader = LoadImage(reader="NibabelReader", image_only=True, dtype=np.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = self.loader(d[key])
            arr = torch.as_tensor(img)
            rgb = int(d.get("channels", 1)) == 3 and arr.shape[-1] == 3
            if rgb:
                arr = arr.movedim(-1, 0)
            else:
                arr = arr[None]
            while arr.ndim > 3 and arr.shape[-1] == 1:  # (C, W, H, 1) → (C, W, H)
                arr = arr[..., 0]
            if arr.ndim != 3:
                raise ValueError(f"{d.get('item_id', d[key])}: a {tuple(arr.shape[1:])} image is not 2D")
            if rgb and self.in_channels == 1:
                weights = torch.tensor([0.299, 0.587, 0.114]).reshape(3, 1, 1)
                arr = (arr * weights).sum(0, keepdim=True)
            meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
            d[key] = MetaTensor(arr.float().contiguous(), meta=meta)
        return d


def _percentile_scale(arr: np.ndarray, lower: float, upper: float) -> np.ndarray:
    lo, hi = np.percentile(arr, [lower, upper])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def _window_scale(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    lo = center - width / 2.0
    return np.clip((arr - lo) / max(width, 1e-6), 0.0, 1.0)


class ModalityPresetd(MapTransform):
    """Scale each item to [0, 1] by its modality (see the module docstring for the rules)."""

    def __init__(self, keys: KeysCollection = "image", ct_window: tuple[float, float] = (40.0, 400.0),
                 mr_percentiles: tuple[float, float] = (1.0, 99.0), xray_percentiles: tuple[float, float] = (0.5, 99.5),
                 use_recorded_window: bool = True, mirror_right_mg: bool = True, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.ct_window = tuple(ct_window)
        self.mr_percentiles = tuple(mr_percentiles)
        self.xray_percentiles = tuple(xray_percentiles)
        self.use_recorded_window = use_recorded_window
        self.mirror_right_mg = mirror_right_mg

    def scale(self, arr: np.ndarray, item: Mapping[Hashable, Any]) -> np.ndarray:
        """[0, 1] version of ``arr`` for the item described by ``item`` (a manifest row dict)."""
        modality = str(item.get("modality", "OT")).upper()
        center, width = float(item.get("window_center", math.nan)), float(item.get("window_width", math.nan))
        has_window = self.use_recorded_window and math.isfinite(center) and math.isfinite(width) and width > 0
        if modality == "CT":
            return _window_scale(arr, *self.ct_window)
        if modality == "MR":
            return _percentile_scale(arr, *self.mr_percentiles)
        if modality == "US" or (modality == "OT" and arr.max() <= 255 and arr.min() >= 0 and not has_window):
            return np.clip(arr / 255.0, 0.0, 1.0)
        if modality == "MG":
            return _percentile_scale(arr, *self.xray_percentiles)
        if has_window:
            return _window_scale(arr, center, width)
        if modality in PROJECTION:
            return _percentile_scale(arr, *self.xray_percentiles)
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = self.scale(np.asarray(img, dtype=np.float32), d).astype(np.float32)
            if self.mirror_right_mg and str(d.get("modality", "")).upper() == "MG" and d.get("laterality") == "R":
                arr = arr[:, ::-1, :].copy()  # axis 1 is the image column (NIfTI x)
            d[key] = MetaTensor(torch.from_numpy(arr), meta=getattr(img, "meta", {}))
        return d


class ResizeWithPadd(MapTransform):
    """Longest side to ``size`` keeping the aspect ratio, then zero-pad to ``size × size``."""

    def __init__(self, keys: KeysCollection, size: int, mode: str | list[str] = "area",
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        self.resize = {k: Resize(spatial_size=size, size_mode="longest", mode=m,
                                 anti_aliasing=False) for k, m in zip(self.keys, modes)}
        self.pad = SpatialPad(spatial_size=(size, size), method="symmetric")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.pad(self.resize[key](d[key]))
        return d
