"""Multi-view sample transforms: run one image pipeline per view, then fuse the views.

How samples are assembled from manifest items is :mod:`medxfer.engine.multiview`; how a network
reads fused views is :class:`medxfer.models.classifier.MultiViewClassifier`.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.transforms import Compose, MapTransform


class LoadViewsd(MapTransform):
    """Run a single-image pipeline on each view of a sample: ``views[i]`` → ``view{i}`` images.

    Deterministic (MONAI's ``CacheDataset`` caches its output): each view keeps its own
    modality preset (its own VOI window, the right-breast mirroring)."""

    def __init__(self, per_view: Compose, source_key: str = "views") -> None:
        super().__init__([source_key])
        self.per_view = per_view
        self.source_key = source_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = {k: v for k, v in data.items() if k != self.source_key}
        for i, view in enumerate(data[self.source_key]):
            d[f"view{i}"] = self.per_view(dict(view))["image"]
        return d


class FuseViewsd(MapTransform):
    """``view0 … view{V-1}`` → ``image``: stacked (V, C, H, W) for late fusion, or the channels
    of one (3, H, W) image for early fusion (two views: ``[v0, v1, mean]``)."""

    def __init__(self, num_views: int, fusion: str) -> None:
        super().__init__([f"view{i}" for i in range(num_views)])
        self.num_views, self.fusion = num_views, fusion

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        images = [torch.as_tensor(d.pop(f"view{i}")) for i in range(self.num_views)]
        if self.fusion == "late":
            d["image"] = torch.stack(images)
        else:
            gray = [img[:1] for img in images]
            if len(gray) == 2:
                gray.append((gray[0] + gray[1]) / 2)
            while len(gray) < 3:
                gray.append(gray[0])
            d["image"] = torch.cat(gray[:3])
        return d
