"""Mask transforms: lesion / organ masks loaded and kept aligned with their images.

A slice sample of a volume (``slice`` ≥ 0, see :mod:`medxfer.engine.slices`) takes slice ``k`` of a
mask *volume* on the image volume's grid (a NIfTI label volume, nonzero = foreground), read with
:func:`.volumes.read_slices`: an uncompressed ``.nii`` is memory-mapped and only that slice read; a
``.nii.gz`` is decoded whole once and kept while its slices are read (the last two volumes are kept, so
samples read volume by volume — the bundles' cached datasets, evaluation — decode each mask once). In a
2.5D sample (slices k−1, k, k+1 as channels) the mask is the centre slice k's.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Hashable, Mapping
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform

from .volumes import read_slices


@functools.lru_cache(maxsize=256)
def _grid(path: str, size: int, mtime: int) -> tuple[int, ...]:
    """A NIfTI's spatial grid from its header (trailing singleton axes dropped), keyed by file identity."""
    shape = tuple(int(v) for v in nib.load(path).shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def volume_grid(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape of a NIfTI volume (header only, cached per file and process)."""
    st = os.stat(path)
    return _grid(str(path), st.st_size, st.st_mtime_ns)


def check_mask_grid(item_id: str, mask: str | os.PathLike, image: str | os.PathLike) -> None:
    """A mask volume must have its image volume's grid: else a one-line ``ValueError`` naming the item,
    both shapes and the mask file (headers only)."""
    try:
        mask_grid = volume_grid(mask)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"item {item_id}: mask {mask} is not a readable NIfTI volume ({reason})") from None
    image_grid = volume_grid(image)
    if mask_grid[:3] != image_grid[:3] or len(mask_grid) > 3:
        raise ValueError(f"item {item_id}: mask volume {mask_grid} does not match image volume "
                         f"{image_grid[:3]} ({mask})")


def _slice_sample(d: Mapping[Hashable, Any]) -> int:
    """Slice ``k`` of a volume's slice sample; -1 for a whole 2D item."""
    indices = d.get("slice_indices")
    if indices is None:
        return -1
    first = int(indices[0]) if len(indices) else -1
    return int(d.get("slice", -1)) if first >= 0 else -1


class LoadMaskd(MapTransform):
    """Load a mask (PNG/NIfTI) as a (1, W, H) float {0, 1} MetaTensor in the image's x-first order.

    For a slice sample of a volume: slice ``k`` (the sample's ``slice``, the centre of a 2.5D slab)
    of the mask volume, which must have the image volume's grid (else a one-line error naming the
    item, both shapes and the mask file)."""

    def __init__(self, keys: KeysCollection = "label", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadImage(image_only=True, dtype=np.float32)

    def _slice(self, d: Mapping[Hashable, Any], path: str, k: int) -> torch.Tensor:
        check_mask_grid(d.get("item_id"), path, d["image_path"])
        return torch.from_numpy(read_slices(path, [k])[:, :, 0])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        k = _slice_sample(d)
        for key in self.key_iterator(d):
            m = self._slice(d, str(d[key]), k) if k >= 0 else torch.as_tensor(self.loader(d[key]))
            if m.ndim == 3:  # RGB(A) mask image: any colour channel set (alpha ignored)
                m = m[..., :3].amax(-1)
            mask = (m > 0).float()[None]
            image = d.get("image")
            if image is not None and tuple(image.shape[1:]) != tuple(mask.shape[1:]):
                raise ValueError(f"item {d.get('item_id')}: mask {tuple(mask.shape[1:])} does not match image "
                                 f"{tuple(image.shape[1:])} ({d[key]})")
            d[key] = MetaTensor(mask)
        return d


class MirrorLikePresetd(MapTransform):
    """Mirror masks of right-breast mammograms exactly as :class:`ModalityPresetd` mirrors their
    images (MG, laterality ``R``, axis 1 = image column), so mask and image stay aligned."""

    def __init__(self, keys, mirror_right_mg: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mirror_right_mg = mirror_right_mg

    def __call__(self, data):
        d = dict(data)
        if self.mirror_right_mg and str(d.get("modality", "")).upper() == "MG" and d.get("laterality") == "R":
            for key in self.key_iterator(d):
                d[key] = torch.flip(d[key], dims=(1,))
        return d
