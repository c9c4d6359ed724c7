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

from .volumes import read_slices, volume_percentiles

PROJECTION = {"CR", "DX", "PX", "IO", "RG", "RF", "XA", "DR"}


class LoadItemd(MapTransform):
    """Load a cached item (``manifest.csv`` ``image``) as a float32 channel-first 2D MetaTensor.

    RGB items (ultrasound) come channel-first; with ``in_channels=1`` they become luminance
    (ITU-R BT.601 weights). Gray items feeding a 3-channel network stay 1-channel here: the
    weights transform repeats them after normalisation.

    A slice sample of a volume or cine (``slice_indices`` ≥ 0, see :mod:`medxfer.engine.slices`)
    reads only those slices (:func:`.volumes.read_slices`): one slice is one channel (a colour
    frame its three), three slices (2.5D) are three channels (colour frames as their luminance).
    """

    def __init__(self, keys: KeysCollection = "image", in_channels: int = 3, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.in_channels = in_channels
        self.loader = LoadImage(reader="NibabelReader", image_only=True, dtype=np.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if key == "image" and _slice_indices(d):
                d[key] = self._load_slices(d)
                continue
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


    def _load_slices(self, d: dict) -> MetaTensor:
        indices = _slice_indices(d)
        arr = torch.from_numpy(read_slices(d["image_path"], indices))  # (X, Y, S) or (X, Y, S, 3)
        if arr.ndim == 4:  # colour frames
            if len(indices) == 1 and self.in_channels != 1:
                arr = arr[:, :, 0].movedim(-1, 0)  # (3, X, Y)
            else:
                arr = (arr * torch.tensor([0.299, 0.587, 0.114])).sum(-1).movedim(-1, 0)
        else:
            arr = arr.movedim(-1, 0)  # (S, X, Y)
        return MetaTensor(arr.float().contiguous(), meta={"filename_or_obj": d["image_path"]})


def _slice_indices(d: Mapping[Hashable, Any]) -> list[int]:
    """The slice indices a slice sample reads; ``[]`` for a whole 2D item."""
    indices = d.get("slice_indices")
    if indices is None:
        return []
    indices = [int(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]
    return indices if indices and indices[0] >= 0 else []


def _percentile_scale(arr: np.ndarray, lower: float, upper: float,
                      bounds: tuple[float, float] | None = None) -> np.ndarray:
    lo, hi = bounds if bounds is not None else np.percentile(arr, [lower, upper])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def _window_scale(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    lo = center - width / 2.0
    return np.clip((arr - lo) / max(width, 1e-6), 0.0, 1.0)


def with_meta_of(x: torch.Tensor, img: MetaTensor, meta: dict | None = None) -> MetaTensor:
    """``x`` as a MetaTensor carrying ``img``'s metadata (``meta`` instead of a copy of ``img.meta`` when
    given): shallow copies of the meta dict and operation list, without MetaTensor's constructor,
    which costs about 0.1 ms per image (MONAI's own ``__torch_function__`` wraps results this way)."""
    out = x.as_subclass(MetaTensor).copy_meta_from(img, copy_attr=False)
    out.meta = dict(img.meta) if meta is None else meta
    out.applied_operations = list(img.applied_operations)
    return out


def _window_tensor(img: Any, center: float, width: float) -> torch.Tensor:
    """:func:`_window_scale` on a plain float32 tensor, with the same float32 arithmetic (so the same
    values): one new tensor, then in place; the input is left as it was."""
    x = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(np.asarray(img, dtype=np.float32))
    x = torch.sub(x.to(torch.float32), center - width / 2.0)
    return x.div_(max(width, 1e-6)).clamp_(0.0, 1.0)


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
        """[0, 1] version of ``arr`` for the item described by ``item`` (a manifest row dict).

        For a slice sample the data-dependent scales (percentiles, min–max, the 8-bit test) are
        those of its whole volume or cine, so all its slices share one scale."""
        modality = str(item.get("modality", "OT")).upper()
        center, width = float(item.get("window_center", math.nan)), float(item.get("window_width", math.nan))
        has_window = self.use_recorded_window and math.isfinite(center) and math.isfinite(width) and width > 0
        whole = item.get("image_path") if _slice_indices(item) else None

        def bounds(lower: float, upper: float) -> tuple[float, float] | None:
            return volume_percentiles(whole, lower, upper) if whole else None

        def min_max() -> tuple[float, float]:  # only where a rule needs it: two passes over the data
            return bounds(0.0, 100.0) or (float(arr.min()), float(arr.max()))

        if modality == "CT":
            return _window_scale(arr, *self.ct_window)
        if modality == "MR":
            return _percentile_scale(arr, *self.mr_percentiles, bounds(*self.mr_percentiles))
        if modality == "US":
            return np.clip(arr / 255.0, 0.0, 1.0)
        if modality == "OT" and not has_window:
            lo, hi = min_max()
            if hi <= 255 and lo >= 0:
                return np.clip(arr / 255.0, 0.0, 1.0)
        if modality == "MG":
            return _percentile_scale(arr, *self.xray_percentiles, bounds(*self.xray_percentiles))
        if has_window:
            return _window_scale(arr, center, width)
        if modality in PROJECTION:
            return _percentile_scale(arr, *self.xray_percentiles, bounds(*self.xray_percentiles))
        lo, hi = min_max()
        return np.clip((arr - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(arr)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if str(d.get("modality", "OT")).upper() == "CT":  # the window on the tensor: no numpy round trip
                x = _window_tensor(img, *self.ct_window)
                d[key] = with_meta_of(x, img) if isinstance(img, MetaTensor) else MetaTensor(x)
                continue
            arr = self.scale(np.asarray(img, dtype=np.float32), d).astype(np.float32)
            if self.mirror_right_mg and str(d.get("modality", "")).upper() == "MG" and d.get("laterality") == "R":
                arr = arr[:, ::-1, :].copy()  # axis 1 is the image column (NIfTI x)
            x = torch.from_numpy(arr)
            d[key] = with_meta_of(x, img) if isinstance(img, MetaTensor) else MetaTensor(x)
        return d


# Interpolation modes that torch.nn.functional.interpolate takes as MONAI's Resize passes them on a 2D image.
_TORCH_MODES = {"area", "nearest", "nearest-exact", "bilinear", "bicubic"}


def longest_side_size(spatial: tuple[int, ...], size: int) -> tuple[int, ...]:
    """The shape that fits the longest side of ``spatial`` to ``size`` keeping the aspect ratio, rounded
    exactly as MONAI's ``Resize(size_mode="longest")`` rounds it."""
    scale = size / max(spatial)
    return tuple(int(round(s * scale)) for s in spatial)


def _resize_pad(img: Any, size: int, mode: str) -> MetaTensor:
    """:class:`ResizeWithPadd` on one channel-first 2D image: ``F.interpolate`` on the plain tensor, then
    zero padding split as ``SpatialPad(method="symmetric")`` splits it (skipped when square). The values
    are those of MONAI's ``Resize`` + ``SpatialPad``; the meta is kept, with the affine (and ``pixdim``)
    updated as MONAI updates them. Not recorded in ``applied_operations``: nothing inverts this step."""
    if isinstance(img, MetaTensor):
        meta, src = dict(img.meta), img.as_tensor()
    else:  # MONAI's output would be a MetaTensor with the default affine
        meta, src = {"affine": torch.eye(4, dtype=torch.float64)}, torch.as_tensor(np.asarray(img))
    spatial = tuple(int(s) for s in src.shape[1:])
    out = longest_side_size(spatial, size)
    pad = [max(size - s, 0) for s in out]
    low = [p // 2 for p in pad]
    x = src.to(torch.float32)
    if out != spatial:
        x = torch.nn.functional.interpolate(x[None], size=out, mode=mode)[0]
    if any(pad):
        x = torch.nn.functional.pad(x, (low[1], pad[1] - low[1], low[0], pad[0] - low[0]))
    elif x is src:
        x = x.clone()  # as MONAI's: the output never shares memory with the input
    if "affine" in meta:  # scale about the centre (MONAI's scale_affine), then shift by the low padding
        affine = np.asarray(torch.as_tensor(meta["affine"], dtype=torch.float64).cpu())
        step = np.eye(affine.shape[-1])
        for i in range(2):
            s = spatial[i] / max(out[i], 1)
            step[i, i], step[i, -1] = s, (s - 1) / 2 - s * low[i]
        affine = affine @ step
        meta["affine"] = torch.from_numpy(affine)
        if "pixdim" in meta:  # the new spacing, as MONAI writes it (into a copy here, not the input's array)
            pixdim = np.array(meta["pixdim"], copy=True)
            pixdim[1:affine.shape[-1]] = np.sqrt((affine[:-1, :-1] ** 2).sum(0))
            meta["pixdim"] = pixdim
    return with_meta_of(x, img, meta) if isinstance(img, MetaTensor) else MetaTensor(x, meta=meta)


class ResizeWithPadd(MapTransform):
    """Longest side to ``size`` keeping the aspect ratio, then zero-pad to ``size × size``.

    A channel-first 2D image goes through :func:`_resize_pad` (the values of MONAI's ``Resize`` with
    ``size_mode="longest"`` and ``SpatialPad(method="symmetric")``, without their per-call metadata
    machinery); anything else through those MONAI transforms."""

    def __init__(self, keys: KeysCollection, size: int, mode: str | list[str] = "area",
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        self.size = int(size)
        self.modes = dict(zip(self.keys, modes))
        self.resize = {k: Resize(spatial_size=size, size_mode="longest", mode=m,
                                 anti_aliasing=False) for k, m in zip(self.keys, modes)}
        self.pad = SpatialPad(spatial_size=(size, size), method="symmetric")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            lazy = isinstance(img, MetaTensor) and img.has_pending_operations
            ndim = img.as_tensor().ndim if isinstance(img, MetaTensor) else np.ndim(img)
            if str(self.modes[key]) in _TORCH_MODES and ndim == 3 and not lazy:
                d[key] = _resize_pad(img, self.size, str(self.modes[key]))
            else:
                d[key] = self.pad(self.resize[key](img))
        return d
