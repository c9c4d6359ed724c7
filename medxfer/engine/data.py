"""From an ingested manifest to the train / validation / test item lists of one fold.

Fold roles (documented contract): with K folds and ``fold = k``, fold ``k`` is the **test** set,
fold ``(k + 1) mod K`` the **validation** set (model selection, early stopping), and every other
fold is **training**. Running ``fold = 0 … K-1`` therefore tests every item exactly once, and
a test item never influences the checkpoint chosen for it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import MedxferError
from ..ingest.manifest import parse_list, read_manifest
from ..models.classifier import MultiViewError, check_views
from .multiview import group_views


class CohortError(MedxferError, ValueError):
    """A manifest that cannot feed training (message says what to run or fix)."""


@dataclass
class Cohort:
    """Items of one fold, as dicts that MONAI dictionary transforms read."""

    task: str
    label: str
    classes: list[str]
    fold: int
    folds: list[int]
    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def class_counts(self, role: str = "train") -> list[int]:
        counts = [0] * self.num_classes
        for item in getattr(self, role):
            counts[int(item["label"])] += 1
        return counts


def fold_roles(folds: list[int], fold: int) -> dict[str, list[int]]:
    """``{"test": [k], "val": [next], "train": [rest]}`` for the sorted fold numbers."""
    folds = sorted(set(folds))
    if fold not in folds:
        raise CohortError(f"fold {fold} is not in the manifest (folds {folds})")
    if len(folds) < 3:
        raise CohortError(f"{len(folds)} folds: at least 3 are needed (test, validation, training); "
                          "run medxfer split with --folds 3 or more")
    i = folds.index(fold)
    val = folds[(i + 1) % len(folds)]
    return {"test": [fold], "val": [val], "train": [f for f in folds if f not in (fold, val)]}


def is_2d(row: dict) -> bool:
    """A 2D item (image, or RGB image): what the 2D bundles can use; volumes and cines are not."""
    spatial = len(parse_list(row.get("shape", ""), int)) - (1 if int(row.get("channels") or 1) > 1 else 0)
    return row.get("kind") != "volume" and spatial <= 2


def _window(row: dict, key: str) -> float:
    """The recorded VOI window, unless ingest already baked it into the pixels (``voi_applied``)."""
    if row.get("voi_applied") == "1" or not row.get(key):
        return float("nan")
    return float(row[key].split("\\")[0])


def _item(row: dict, root: Path) -> dict:
    # fixed-length metadata so any mix of items collates into a batch
    shape = (parse_list(row.get("shape", ""), int) + [0, 0])[:2]
    spacing = parse_list(row.get("spacing", ""), float) if row.get("spacing_source") not in (None, "", "none") else []
    spacing = (spacing + [math.nan, math.nan])[:2]
    return {
        "image": str(root / row["image"]),
        "image_path": str(root / row["image"]),  # kept when "image" becomes a tensor
        "item_id": row["item_id"],
        "fold": int(row["fold"]),
        "modality": row.get("modality", "") or "OT",
        "body_part": row.get("body_part", ""),
        "view": row.get("view", ""),
        "laterality": row.get("laterality", ""),
        "channels": int(row.get("channels") or 1),
        "shape": shape,  # width, height (NIfTI x, y)
        "spacing": spacing,  # mm; NaN where no header gave one (raster images)
        "window_center": _window(row, "window_center"),
        "window_width": _window(row, "window_width"),
    }


def class_values(classes: list | dict) -> dict[str, str]:
    """Column value -> class name for a ``classes`` setting.

    A list names the classes (each its own value, in class index order). A mapping groups values
    into classes, e.g. DDTI's ``{benign: [2, 3], suspicious: [4a, 4b, 4c, 5]}`` (TI-RADS 2–3 vs
    4a–5); values compare as text, and a value may belong to one class only.
    """
    if isinstance(classes, dict):
        class_of: dict[str, str] = {}
        for name, members in classes.items():
            members = members if isinstance(members, (list, tuple)) else [members]
            if not members:
                raise CohortError(f"class {name!r} of classes groups no value")
            for value in members:
                value = _text_value(value)
                if value in class_of:
                    raise CohortError(f"classes: value {value!r} is in both {class_of[value]!r} and {name!r}")
                class_of[value] = str(name)
        return class_of
    if not isinstance(classes, (list, tuple)):
        raise CohortError(f"classes is a list of values or a mapping class -> values, got {classes!r}")
    names = [_text_value(c) for c in classes]
    if len(set(names)) != len(names):
        raise CohortError(f"classes lists a value twice: {names}")
    return {n: n for n in names}


def _text_value(value) -> str:
    """A YAML/JSON label value as the manifest's text (``3`` and ``3.0`` -> ``"3"``)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def load_cohort(manifest: str | os.PathLike, label: str, fold: int = 0, task: str = "classification",
                mask_column: str = "mask", classes: list[str] | None = None,
                modalities: list[str] | None = None, mask_root: str | os.PathLike | None = None,
                views: list[str] | None = None, group_by: list[str] | str | None = None, view_column: str = "view",
                fusion: str = "late", localization: bool = False) -> Cohort:
    """Read ``manifest`` (``medxfer ingest`` + ``medxfer split``) into a :class:`Cohort`.

    Classification: ``label`` is the class column (rows without a value are skipped and counted);
    classes are the sorted distinct values unless ``classes`` names them (their order is the class
    index order; rows with another value are left out and counted as ``other_class``), as a list or
    as a mapping class -> the column values it groups (:func:`class_values`). Segmentation:
    ``mask_column`` holds a mask image path relative to the manifest (``label`` then names it).
    ``modalities`` keeps only items of those modalities (a PACS export mixes PX and ceph DX).
    Mask paths are absolute or relative to ``mask_root`` (default: the manifest's folder); a
    missing mask file is an error that names it.

    ``views`` (classification) makes each sample a group of items, one per view, grouped by
    ``group_by`` (default study and laterality): see :mod:`.multiview`. ``localization``
    (classification) attaches each item's lesion mask from ``mask_column`` as ``item["mask"]``
    where the row has one, for Grad-CAM scoring.
    """
    path = Path(manifest)
    if not path.is_file():
        raise CohortError(f"{path}: no such manifest (run medxfer ingest first)")
    rows, columns = read_manifest(path)
    if "fold" not in columns:
        raise CohortError(f"{path}: no fold column; run `medxfer split {path.parent} --folds K` first")
    column = label if task == "classification" else (mask_column if mask_column in columns else label)
    if column not in columns:
        raise CohortError(f"{path}: no column {column!r}; columns: {', '.join(columns)}")
    root = path.parent
    skipped = {"other_modality": 0, "no_label": 0, "no_fold": 0, "volume": 0, "other_class": 0}
    keep = {m.upper() for m in modalities} if modalities else None
    usable = []
    for row in rows:
        if keep is not None and (row.get("modality") or "").upper() not in keep:
            skipped["other_modality"] += 1
        elif not row.get(column):
            skipped["no_label"] += 1
        elif row.get("fold", "") == "":
            skipped["no_fold"] += 1
        elif not is_2d(row):
            skipped["volume"] += 1  # the bundles are 2D
        else:
            usable.append(row)
    if not usable:
        raise CohortError(f"{path}: no usable item (skipped: {skipped})")
    if isinstance(classes, str):
        raise CohortError(f"classes must be a list (JSON on the command line: --classes '[\"normal\", \"abnormal\"]'), "
                          f"got {classes!r}")
    if task == "classification":
        values = sorted({r[column] for r in usable})
        class_of = class_values(classes) if classes else {v: v for v in values}
        classes = list(dict.fromkeys(class_of.values()))
        if not set(class_of) & set(values):
            raise CohortError(f"none of classes {sorted(class_of)} is a value of column {column!r} (values: {values})")
        # classes chosen for the task (BUSI benign vs malignant without its normal images): the
        # other values' rows are left out and counted, never relabelled
        skipped["other_class"] = sum(1 for r in usable if r[column] not in class_of)
        usable = [r for r in usable if r[column] in class_of]
        if len(classes) < 2:
            raise CohortError(f"column {column!r} has a single class {classes}: nothing to classify")
    else:
        classes = ["background", "foreground"]
    folds = sorted({int(r["fold"]) for r in usable})
    roles = fold_roles(folds, fold)
    cohort = Cohort(task=task, label=column, classes=classes, fold=fold, folds=folds,
                    skipped={k: v for k, v in skipped.items() if v})
    pairs = []
    for row in usable:
        item = _item(row, root)
        if task == "classification":
            item["label_name"] = class_of[row[column]]
            item["label"] = classes.index(item["label_name"])
            if localization and row.get(mask_column):
                item["mask"] = str(_mask_path(row, mask_column, mask_root, root))
        else:
            item["label"] = str(_mask_path(row, column, mask_root, root))
        pairs.append((row, item))
    if views:
        if task != "classification":
            raise CohortError("views (multi-view samples) are for classification")
        if localization:
            raise CohortError("localization scores single images against their masks: not with views "
                              "(set localization: false for multi-view runs)")
        try:
            samples, left_out = group_views(pairs, check_views(views, fusion), group_by, view_column)
        except MultiViewError as exc:
            raise CohortError(f"{path}: {exc}") from None
        if not samples:
            raise CohortError(f"{path}: no complete group of views {list(views)} (left out: {left_out})")
        cohort.skipped.update(left_out)
    else:
        samples = [item for _, item in pairs]
    for item in samples:
        role = next(r for r, fs in roles.items() if item["fold"] in fs)
        getattr(cohort, role).append(item)
    return cohort


def _mask_path(row: dict, column: str, mask_root: str | os.PathLike | None, root: Path) -> Path:
    """A mask file named in ``row[column]``: absolute, or relative to ``mask_root`` (default: the
    manifest's folder); missing is an error that names it."""
    mask = Path(row[column])
    mask = mask if mask.is_absolute() else Path(mask_root or root) / mask
    if not mask.is_file():
        raise CohortError(f"item {row['item_id']}: mask file {mask} not found (set mask_root to the "
                          "folder the mask paths are relative to)")
    return mask
