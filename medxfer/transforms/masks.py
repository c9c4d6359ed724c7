"""Mask transforms: lesion / organ masks loaded and kept aligned with their images."""
from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform


class LoadMaskd(MapTransform):
    """Load a mask (PNG/NIfTI) as a (1, W, H) float {0, 1} MetaTensor in the image's x-first order."""

    def __init__(self, keys: KeysCollection = "label", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadImage(image_only=True, dtype=np.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            m = torch.as_tensor(self.loader(d[key]))
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
