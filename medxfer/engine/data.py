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
from ..ingest.manifest import SLICE_LABELS_FILE, parse_list, read_manifest, read_slice_labels
from ..models.classifier import MultiViewError, check_views
from .multiview import group_views
from .segmentation3d import safe_class_name
from .slices import SliceSelection, check_aggregate, check_input, check_slices, slab


class CohortError(MedxferError, ValueError):
    """A manifest that cannot feed training (message says what to run or fix)."""


@dataclass
class Cohort:
    """Samples of one fold, as dicts that MONAI dictionary transforms read.

    A sample is an item (a 2D image) or one slice / frame of a volume or cine item (see
    :mod:`.slices`): every sample has ``item_id`` (the manifest item it comes from) and a unique
    ``sample_id``. Results are per item: :meth:`items` gives one record per item of a role."""

    task: str
    label: str
    classes: list[str]
    fold: int
    folds: list[int]
    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    input: str = "2d"
    slices: str | None = None
    aggregate: str = "mean"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def volumetric(self) -> bool:
        """Whether samples are whole volumes for a 3D network (``input: 3d``)."""
        return self.input == "3d"

    @property
    def sliced(self) -> bool:
        """Whether volumes / cines were cut into slice samples (results then aggregate per item)."""
        return self.slices is not None

    def items(self, role: str) -> list[dict]:
        """One record per item of ``role`` (its first sample, with the item's label), in order."""
        seen: dict[str, dict] = {}
        for sample in getattr(self, role):
            if sample["item_id"] not in seen:
                seen[sample["item_id"]] = {**sample, "label": sample.get("item_label", sample["label"]),
                                           "label_name": sample.get("item_label_name", sample.get("label_name"))}
        return list(seen.values())

    def counts(self) -> dict[str, int]:
        """Items per role."""
        return {role: len({s["item_id"] for s in getattr(self, role)}) for role in ("train", "val", "test")}

    def sample_counts(self) -> dict[str, int]:
        """Samples (slices, frames, 2D items) per role."""
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
    """A 2D item (image, or RGB image): what the 2D bundles take whole; volumes and cines are not (a
    colour cine's ``shape`` is width x height x frames, its channels are not in it)."""
    if row.get("kind") in ("volume", "cine"):
        return False
    spatial = len(parse_list(row.get("shape", ""), int)) - (1 if int(row.get("channels") or 1) > 1 else 0)
    return spatial <= 2


def slice_count(row: dict) -> int:
    """Slices (volume) or frames (cine) along the item's third axis; 0 for a 2D item or one with
    more than three spatial axes (a 4D NIfTI time series), which slice sampling cannot cut."""
    if is_2d(row):
        return 0
    shape = parse_list(row.get("shape", ""), int)
    spatial = shape[:3] if int(row.get("channels") or 1) == 3 and row.get("kind") == "cine" else shape
    return int(spatial[2]) if len(spatial) == 3 else 0


def reference_images(rows: list[dict]) -> set[str]:
    """Item ids of 2D images that belong to the series of a volume: the localizer or the lone reference
    slice of another orientation that ingest keeps beside the stack. A cohort (or prediction) cut into
    slices leaves them out: they are not slices of the volume, and not what the task is about."""
    stacked = {r["series"] for r in rows if r.get("series") and r.get("kind") == "volume"}
    return {r["item_id"] for r in rows if is_2d(r) and r.get("series") in stacked}


def slice_samples(item: dict, n: int, picks: list[int], input_mode: str,
                  slice_labels: dict[int, int] | None = None, class_names: list[str] | None = None) -> list[dict]:
    """The samples of a volume / cine item: one per picked slice, with the slab of slice indices
    its channels read (:func:`.slices.slab`), ``sample_id = <item_id>@<slice>`` and the slice's own
    label where it has one (``item_label`` keeps the item's)."""
    out = []
    for k in picks:
        sample = {**item, "slice": k, "slice_indices": slab(k, n, input_mode),
                  "sample_id": f"{item['item_id']}@{k}", "item_label": item["label"]}
        if "label_name" in item:
            sample["item_label_name"] = item["label_name"]
        if slice_labels and k in slice_labels:
            sample["label"] = slice_labels[k]
            if "label_name" in item and class_names:
                sample["label_name"] = class_names[slice_labels[k]]
        out.append(sample)
    return out


def _window(row: dict, key: str) -> float:
    """The recorded VOI window, unless ingest already baked it into the pixels (``voi_applied``)."""
    if row.get("voi_applied") == "1" or not row.get(key):
        return float("nan")
    return float(row[key].split("\\")[0])


def is_volume(row: dict) -> bool:
    """A volume with three spatial axes: what ``input: 3d`` takes whole (not a cine, whose third axis is
    time, nor a 4D series)."""
    return row.get("kind") == "volume" and slice_count(row) > 0


def _item(row: dict, root: Path, dims: int = 2) -> dict:
    # fixed-length metadata so any mix of items collates into a batch (dims values: 3 in a 3D cohort)
    shape = (parse_list(row.get("shape", ""), int) + [0] * dims)[:dims]
    spacing = parse_list(row.get("spacing", ""), float) if row.get("spacing_source") not in (None, "", "none") else []
    spacing = (spacing + [math.nan] * dims)[:dims]
    return {
        "image": str(root / row["image"]),
        "image_path": str(root / row["image"]),  # kept when "image" becomes a tensor
        "item_id": row["item_id"],
        "patient": row.get("patient", ""),  # the manifest's keyed pseudonym: predictions.csv, patient-level statistics
        "kind": row.get("kind", "") or "image",  # image | volume | cine (a cine's frames are times, not places)
        "fold": int(row["fold"]),
        "modality": row.get("modality", "") or "OT",
        "body_part": row.get("body_part", ""),
        "view": row.get("view", ""),
        "laterality": row.get("laterality", ""),
        "channels": int(row.get("channels") or 1),
        "shape": shape,  # width, height (NIfTI x, y), and slices in a 3D cohort
        "spacing": spacing,  # mm; NaN where no header gave one (raster images)
        "window_center": _window(row, "window_center"),
        "window_width": _window(row, "window_width"),
        "sample_id": row["item_id"],
        "slice": -1,  # a whole 2D item; slice samples of volumes / cines set it (see slice_samples)
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
                fusion: str = "late", localization: bool = False, input: str | None = "2d",
                slices: str | None = None, aggregate: str | None = "mean",
                segments: list[str] | None = None) -> Cohort:
    """Read ``manifest`` (``medxfer ingest`` + ``medxfer split``) into a :class:`Cohort`.

    Classification: ``label`` is the class column (rows without a value are skipped and counted);
    classes are the sorted distinct values unless ``classes`` names them (their order is the class
    index order; rows with another value are left out and counted as ``other_class``), as a list or
    as a mapping class -> the column values it groups (:func:`class_values`). Segmentation:
    ``mask_column`` holds a mask image path relative to the manifest (``label`` then names it).
    ``modalities`` keeps only items of those modalities (a PACS export mixes PX and ceph DX).
    Mask paths are absolute or relative to ``mask_root`` (default: the manifest's folder); a
    missing mask file is an error that names it.

    ``input``, ``slices`` and ``aggregate`` (:mod:`.slices`) cut volumes and cines into slice
    samples; without ``slices`` (and with ``input: 2d``) only 2D items are used, as before. ``input: 3d``
    takes volumes whole (3D networks): 2D items and cines are left out and counted (``not_volume``).
    Segmentation ``segments`` names the label values 1…n of the mask volumes (classes are then
    ``background`` + those; default: a ``segments`` record of the manifest — ``1=Liver;2=Spine`` from
    DICOM SEG / RTSTRUCT ingest — where all items share one, else binary: any nonzero is foreground). Per-slice
    labels (``slice_labels.csv`` beside the manifest, from a labels CSV keyed by SOPInstanceUID) give
    slices their own label; a volume labelled only per slice takes the class latest in class order
    among its slices (binary ``[negative, positive]``: positive when any slice is).

    ``views`` (classification) makes each sample a group of items, one per view, grouped by
    ``group_by`` (default study and laterality): see :mod:`.multiview`. ``localization``
    (classification) attaches each item's lesion mask from ``mask_column`` as ``item["mask"]``
    where the row has one, for Grad-CAM scoring.
    """
    path = Path(manifest)
    if not path.is_file():
        raise CohortError(f"{path}: no such manifest (run medxfer ingest first)")
    input_mode, aggregate = check_input(input), check_aggregate(aggregate)
    selection = check_slices(slices)
    if input_mode == "3d" and (selection is not None or views or localization):
        what = "slices" if selection is not None else "views" if views else "localization"
        raise CohortError(f"input: 3d feeds whole volumes to a 3D network: {what} does not apply (leave it unset)")
    if selection is None and input_mode == "2.5d":
        selection, slices = SliceSelection("all"), "all"
    if selection is not None and views:
        raise CohortError("views (multi-view samples) group 2D images; slices of volumes are not grouped by view "
                          "(leave views unset, or slices unset)")
    if selection is not None and localization:
        raise CohortError("localization scores 2D images against their masks: not with slices (set localization: "
                          "false)")
    rows, columns = read_manifest(path)
    if "fold" not in columns:
        raise CohortError(f"{path}: no fold column; run `medxfer split {path.parent} --folds K` first")
    column = label if task == "classification" else (mask_column if mask_column in columns else label)
    per_slice = read_slice_labels(path.parent / SLICE_LABELS_FILE) \
        if selection is not None and task == "classification" else {}
    slice_values = {item_id: {k: v[column] for k, v in by_slice.items() if v.get(column)}
                    for item_id, by_slice in per_slice.items()}
    slice_values = {item_id: values for item_id, values in slice_values.items() if values}
    if column not in columns and not slice_values:
        raise CohortError(f"{path}: no column {column!r}; columns: {', '.join(columns)}")
    root = path.parent
    skipped = {"other_modality": 0, "no_label": 0, "no_fold": 0, "volume": 0, "not_sliceable": 0,
               "reference_image": 0, "other_class": 0, "no_labelled_slice": 0, "not_volume": 0}
    references = reference_images(rows) if selection is not None else set()
    keep = {m.upper() for m in modalities} if modalities else None
    usable = []
    for row in rows:
        if keep is not None and (row.get("modality") or "").upper() not in keep:
            skipped["other_modality"] += 1
        elif not row.get(column) and row["item_id"] not in slice_values:
            skipped["no_label"] += 1
        elif row.get("fold", "") == "":
            skipped["no_fold"] += 1
        elif input_mode == "3d":
            if is_volume(row):
                usable.append(row)
            else:
                skipped["not_volume"] += 1  # a 2D image, a cine or a 4D series: not a 3D sample
        elif not is_2d(row) and selection is None:
            skipped["volume"] += 1  # 2D items only unless slices says how to cut volumes and cines
        elif not is_2d(row) and slice_count(row) == 0:
            skipped["not_sliceable"] += 1  # a 4D time series: no single slice axis
        elif row["item_id"] in references:
            skipped["reference_image"] += 1  # a localizer / reference slice beside its series' volume
        elif selection is not None and selection.mode == "labelled" and not is_2d(row) \
                and row["item_id"] not in slice_values:
            skipped["no_labelled_slice"] += 1
        else:
            usable.append(row)
    if not usable:
        hint = "; volumes and cines need slices (e.g. slices: all)" if skipped["volume"] else ""
        raise CohortError(f"{path}: no usable item (skipped: {({k: v for k, v in skipped.items() if v})}){hint}")
    if isinstance(classes, str):
        raise CohortError(f"classes must be a list (JSON on the command line: --classes '[\"normal\", \"abnormal\"]'), "
                          f"got {classes!r}")
    if task == "classification":
        values = sorted({r[column] for r in usable if r.get(column)}
                        | {v for r in usable for v in slice_values.get(r["item_id"], {}).values()})
        classes_given = bool(classes)
        class_of = class_values(classes) if classes else {v: v for v in values}
        classes = list(dict.fromkeys(class_of.values()))
        if not set(class_of) & set(values):
            raise CohortError(f"none of classes {sorted(class_of)} is a value of column {column!r} (values: {values})")
        # classes chosen for the task (BUSI benign vs malignant without its normal images): the
        # other values' rows are left out and counted, never relabelled
        if not classes_given and any(not r.get(column) for r in usable) and not _numeric_order(values):
            raise CohortError(f"{path}: volumes labelled per slice take the label of their most severe slice: name "
                              f"the classes in order of severity (e.g. classes: {list(reversed(values))[:2]} "
                              "with the negative class first)")
        kept = []
        for r in usable:
            value = r.get(column) or _most_severe(slice_values.get(r["item_id"], {}).values(), class_of, classes)
            if value in class_of:
                kept.append({**r, column: value})
            else:
                skipped["other_class"] += 1
        usable = kept
        if len(classes) < 2:
            raise CohortError(f"column {column!r} has a single class {classes}: nothing to classify")
    else:
        if segments and input_mode != "3d":
            raise CohortError("segments (one class per label value of the mask volumes) are for input: 3d; the "
                              "2D bundles segment foreground (any nonzero mask value) against background")
        named = (segments or _manifest_segments(usable, path)) if input_mode == "3d" else None
        classes = ["background", *(named or ["foreground"])]
        _check_class_names(classes)
    if not usable:
        raise CohortError(f"{path}: no usable item (skipped: {({k: v for k, v in skipped.items() if v})})")
    folds = sorted({int(r["fold"]) for r in usable})
    roles = fold_roles(folds, fold)
    cohort = Cohort(task=task, label=column, classes=classes, fold=fold, folds=folds,
                    skipped={k: v for k, v in skipped.items() if v}, input=input_mode, slices=slices,
                    aggregate=aggregate)
    pairs = []
    for row in usable:
        item = _item(row, root, 3 if input_mode == "3d" else 2)
        if task == "classification":
            item["label_name"] = class_of[row[column]]
            item["label"] = classes.index(item["label_name"])
            if localization and row.get(mask_column):
                item["mask"] = str(_mask_path(row, mask_column, mask_root, root))
        else:
            item["label"] = str(_mask_path(row, column, mask_root, root))
            if input_mode == "3d" and classes[1:] != ["foreground"] and row.get("segments"):
                item["label_values"] = label_values(row, classes)
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
    elif selection is not None:
        samples = _slice_cohort(pairs, selection, input_mode, slice_values, class_of if task == "classification"
                                else {}, classes, cohort.skipped)
    else:
        samples = [item for _, item in pairs]
    for item in samples:
        role = next(r for r, fs in roles.items() if item["fold"] in fs)
        getattr(cohort, role).append(item)
    return cohort


def parse_segments(text: str) -> dict[int, str]:
    """A manifest ``segments`` record (``1=Liver;2=Spine``) as ``{label value: name}``."""
    out: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in str(text or "").split(";"))):
        value, _, name = part.partition("=")
        out[int(value)] = name.strip()
    return out


def _manifest_segments(rows: list[dict], path: Path) -> list[str] | None:
    """The segment names of label values 1…n when every row records the same contiguous ``segments``
    (DICOM SEG / RTSTRUCT ingest); None when no row records any (binary: any nonzero is foreground).
    Rows whose records differ (one patient's ROI 1 is BODY, another's Liver) are an error: a label value
    would mean different things, so the run must name its classes."""
    records = {r.get("segments", "") for r in rows if r.get("segments")}
    if not records:
        return None
    found = parse_segments(next(iter(records)))
    if len(records) == 1 and sorted(found) == list(range(1, len(found) + 1)):
        return [found[v] for v in sorted(found)]
    names = sorted({n for record in records for n in parse_segments(record).values()})
    raise CohortError(f"{path}: the items' mask volumes record different segments ({len(records)} different "
                      f"records); name the classes to train with segments (e.g. segments: {names[:4]}); each "
                      "item's label values are then mapped by segment name, unnamed segments to background")


def label_values(row: dict, classes: list[str]) -> str:
    """``value:class index`` pairs (``1:2,2:0``) mapping a row's recorded label values (its ``segments``
    record) to the run's classes by name; a segment the run does not name is background (0)."""
    index = {name: i for i, name in enumerate(classes) if i > 0}
    return ",".join(f"{v}:{index.get(n, 0)}" for v, n in sorted(parse_segments(row["segments"]).items()))


def _check_class_names(classes: list[str]) -> None:
    """Two classes whose names reduce to one metric name (``Left Lung`` / ``left-lung``) would overwrite each
    other's per-class results: refuse them."""
    seen: dict[str, str] = {}
    for name in classes:
        key = safe_class_name(name)
        if key in seen:
            raise CohortError(f"classes {seen[key]!r} and {name!r} have one name in the results (dice_{key}); "
                              "rename one (segments: [...])")
        seen[key] = name


def _numeric_order(values: list[str]) -> bool:
    """Whether sorted label values are whole numbers in numeric order (0 < 1 < 2: a severity scale)."""
    try:
        return [int(v) for v in values] == sorted(int(v) for v in values)
    except ValueError:
        return False


def _most_severe(values, class_of: dict[str, str], classes: list[str]) -> str:
    """The slice value of the class latest in class order (the item label of a volume labelled per
    slice); ``""`` when none of its slices has a value of the task's classes."""
    ranked = [(classes.index(class_of[v]), v) for v in values if v in class_of]
    return max(ranked)[1] if ranked else ""


def _slice_cohort(pairs: list[tuple[dict, dict]], selection: SliceSelection, input_mode: str,
                  slice_values: dict[str, dict[int, str]], class_of: dict[str, str], classes: list[str],
                  skipped: dict[str, int]) -> list[dict]:
    """Every item cut into its samples (2D items stay whole); keys made uniform for collation."""
    width = 3 if input_mode == "2.5d" else 1
    samples: list[dict] = []
    for row, item in pairs:
        n = slice_count(row)
        if n == 0:  # a 2D image: itself, in any slice mode
            samples.append({**item, "slice_indices": [-1] * width, "item_label": item["label"],
                            **({"item_label_name": item["label_name"]} if "label_name" in item else {})})
            continue
        own = {k: classes.index(class_of[v]) for k, v in slice_values.get(item["item_id"], {}).items()
               if v in class_of and 0 <= k < n}
        picks = selection.select(n, own)
        if not picks:
            skipped["no_labelled_slice"] = skipped.get("no_labelled_slice", 0) + 1
            continue
        samples.extend(slice_samples(item, n, picks, input_mode, own, classes))
    return samples


def _mask_path(row: dict, column: str, mask_root: str | os.PathLike | None, root: Path) -> Path:
    """A mask file named in ``row[column]``: absolute, or relative to ``mask_root`` (default: the
    manifest's folder); missing is an error that names it."""
    mask = Path(row[column])
    mask = mask if mask.is_absolute() else Path(mask_root or root) / mask
    if not mask.is_file():
        raise CohortError(f"item {row['item_id']}: mask file {mask} not found (set mask_root to the "
                          "folder the mask paths are relative to)")
    return mask
