"""The weights-bound input normalisation as MONAI transforms (array and dictionary forms).

Bundles put :class:`WeightsNormalized` last in the pipeline, after the modality preset has
scaled the image to [0, 1]; the same :class:`~medxfer.models.preprocessing.Preprocessing` record
is logged to MLflow, so a run says exactly what its network saw.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from ..models.preprocessing import Preprocessing
from .presets import with_meta_of


def _record(preprocessing: Preprocessing | dict[str, Any]) -> Preprocessing:
    return preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.from_dict(preprocessing)


class WeightsNormalize(Transform):
    """Channel-first image in [0, 1] → the network input the weights expect.

    Gray images are repeated to 3 channels for a 3-channel stem; channel order, scale, mean and
    std come from the record. MetaTensor metadata is kept.
    """

    backend = [torch.Tensor]

    def __init__(self, preprocessing: Preprocessing | dict[str, Any], in_channels: int | None = None) -> None:
        self.preprocessing = _record(preprocessing)
        # default: the stem the record describes (1 for a summed-stem record, else 3)
        self.in_channels = in_channels if in_channels is not None else len(self.preprocessing.mean)

    def __call__(self, img: Any) -> Any:
        if isinstance(img, MetaTensor):  # the arithmetic on the plain tensor, wrapped once: keep affine and meta
            return with_meta_of(self.preprocessing.apply(img.as_tensor(), self.in_channels, channel_dim=0), img)
        return self.preprocessing.apply(img, self.in_channels, channel_dim=0)


class WeightsNormalized(MapTransform):
    """Dictionary form of :class:`WeightsNormalize` (``keys`` are usually ``["image"]``)."""

    backend = WeightsNormalize.backend

    def __init__(self, keys: KeysCollection, preprocessing: Preprocessing | dict[str, Any],
                 in_channels: int | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalize = WeightsNormalize(preprocessing, in_channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key])
        return d
