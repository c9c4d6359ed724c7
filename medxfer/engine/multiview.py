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

from collections.abc import Sequence

from ..models.classifier import MultiViewError

DEFAULT_GROUP_BY = ("study", "laterality")


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
        sample.update({"item_id": ids, "sample_id": ids, "view": "+".join(wanted), "image_path": first["image_path"],
                       "views": [dict(p) for p in parts]})
        for key in ("label", "label_name"):
            if key in first:
                sample[key] = first[key]
        samples.append(sample)
    return samples, {k: v for k, v in skipped.items() if v}
