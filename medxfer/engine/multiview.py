"""Multi-view samples: several images of one exam side form one classification sample.

A mammography exam has a cranio-caudal (CC) and a medio-lateral oblique (MLO) view of each
breast; the mammography pretraining study reads both. With ``views: [CC, MLO]`` a sample is a
group of manifest items — by default those with the same ``study`` and ``laterality`` (one
breast of one exam), or any manifest columns named in ``group_by`` — holding one item per view.

Fusion (``fusion``):

- ``late`` (default): one shared encoder reads each view; the pooled features of the views are
  concatenated (in ``views`` order) and one linear head classifies them
  (:class:`medxfer.models.classifier.MultiViewClassifier`).
- ``early``: the views become the channels of one image — ``[CC, MLO, mean]`` for two views,
  ``[v1, v2, v3]`` for three — so a 3-channel pretrained stem reads them unchanged. Each view is
  read as gray; at most three views.

Assembly rules (counted in ``Cohort.skipped``, never silently): a group missing a view is left
out (``incomplete_view_group``); a second image of the same view in a group (a repeated
exposure) is left out (``extra_view_image``; the item with the smallest ``item_id`` is kept, so
the choice is reproducible); items whose view is not among ``views`` are left out
(``other_view``). All items of a group must share the label and the fold: anything else is an
error that names the group's item ids (pseudonyms), since a split or a labels file is wrong.

The sample's ``item_id`` is its items' ids joined with ``+`` in ``views`` order: predictions,
paired DeLong tests and the feature cache key on it like on a single image.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.transforms import Compose, MapTransform

FUSIONS = ("late", "early")
DEFAULT_GROUP_BY = ("study", "laterality")
MAX_EARLY_VIEWS = 3


class MultiViewError(ValueError):
    """Unusable multi-view settings or an inconsistent group."""


def check_views(views: Sequence[str] | None, fusion: str = "late") -> list[str]:
    """Validated view names (upper case, distinct) for ``fusion``; ``[]`` for single-view."""
    if not views:
        return []
    if isinstance(views, str):
        raise MultiViewError(f"views is a list of view names, e.g. [CC, MLO]; got {views!r}")
    names = [str(v).strip().upper() for v in views]
    if len(set(names)) != len(names) or any(not v for v in names):
        raise MultiViewError(f"views must be distinct, non-empty names; got {list(views)}")
    if fusion not in FUSIONS:
        raise MultiViewError(f"fusion must be one of {list(FUSIONS)}; got {fusion!r}")
    if fusion == "early" and len(names) > MAX_EARLY_VIEWS:
        raise MultiViewError(f"early fusion puts the views in the 3 channels of one image: at most "
                             f"{MAX_EARLY_VIEWS} views, got {len(names)} (use fusion: late)")
    return names


def network_channels(views: Sequence[str] | None, fusion: str, in_channels: int) -> int:
    """Input channels of the network: 3 for early fusion (views as channels), else ``in_channels``."""
    return 3 if views and fusion == "early" else int(in_channels)


def view_channels(views: Sequence[str] | None, fusion: str, in_channels: int) -> int:
    """Channels each view is read with: gray for early fusion, else ``in_channels``."""
    return 1 if views and fusion == "early" else int(in_channels)


def group_views(rows_items: list[tuple[dict, dict]], views: Sequence[str], group_by: Sequence[str] | str | None,
                view_column: str = "view") -> tuple[list[dict], dict[str, int]]:
    """Samples from ``(manifest row, item)`` pairs: one per complete group, in first-seen order.

    Returns the samples and the counts of what was left out (see the module docstring)."""
    keys = [group_by] if isinstance(group_by, str) else list(group_by or DEFAULT_GROUP_BY)
    wanted = [v.upper() for v in views]
    skipped = {"other_view": 0, "extra_view_image": 0, "incomplete_view_group": 0}
    groups: dict[tuple, dict[str, tuple[dict, dict]]] = {}
    missing = [k for k in keys if rows_items and k not in rows_items[0][0]]  # rows of one manifest
    if missing:
        raise MultiViewError(f"group_by column(s) {missing} are not in the manifest")
    for row, item in rows_items:
        view = (row.get(view_column) or "").strip().upper()
        if view not in wanted:
            skipped["other_view"] += 1
            continue
        group = groups.setdefault(tuple(row.get(k, "") for k in keys), {})
        if view in group:
            skipped["extra_view_image"] += 1
            if item["item_id"] < group[view][1]["item_id"]:
                group[view] = (row, item)
        else:
            group[view] = (row, item)
    samples = []
    for members in groups.values():
        if len(members) < len(wanted):
            skipped["incomplete_view_group"] += len(members)
            continue
        parts = [members[v][1] for v in wanted]
        ids = "+".join(p["item_id"] for p in parts)
        for key in ("label", "fold"):
            values = {str(p.get(key)) for p in parts}
            if len(values) > 1:
                what = "labels" if key == "label" else "folds (split by patient, e.g. medxfer split)"
                raise MultiViewError(f"view group {ids}: its images have different {what}: {sorted(values)}")
        first = parts[0]
        sample = {k: first[k] for k in ("fold", "modality", "body_part", "laterality") if k in first}
        sample.update({"item_id": ids, "view": "+".join(wanted), "image_path": first["image_path"],
                       "views": [dict(p) for p in parts]})
        for key in ("label", "label_name"):
            if key in first:
                sample[key] = first[key]
        samples.append(sample)
    return samples, {k: v for k, v in skipped.items() if v}


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


def multiview_transforms(image_size: int, in_channels: int, preprocessing, augment: bool,
                         views: Sequence[str], fusion: str) -> Compose:
    """The classification pipeline for multi-view samples (see :func:`classification_transforms`)."""
    from monai.transforms import ToTensord

    from ..transforms import WeightsNormalized
    from .classification import augmentations, deterministic_transforms

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
