"""Public datasets' distribution layouts → what ``medxfer ingest`` reads (an image folder and a
labels CSV with a header and a file-path key column).

Two layouts need this: MedMNIST ships arrays in one ``.npz`` (no image files), and DDTI ships a
header-less ``diagnosis.csv`` of ``<name>,<TI-RADS>`` rows whose names omit the extension and
whose first number is the case (the patient). BUSI needs nothing (its folders and ``labels.csv``
ingest as they are). The converters write only the folder and CSV; labels are copied verbatim
(class grouping, e.g. TI-RADS 2–3 vs 4a–5, is the study spec's ``data.classes`` mapping), and an
unreadable input is an error naming it.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import MedxferError
from .manifest import write_csv

MEDMNIST_SPLITS = ("train", "val", "test")
# DDTI names: "<case>_<image>" or "<case>_<image>(<nodule>)" (an image with two nodules is two crops)
_DDTI_NAME = re.compile(r"^(?P<case>\d+)_(?P<image>\d+)(?:\((?P<nodule>\d+)\))?$")


class ConvertError(MedxferError, ValueError):
    """An input that cannot be converted (reported to the user as a one-line error)."""


@dataclass
class Converted:
    """What a converter wrote, and what it counted."""

    out: Path
    labels: Path
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        return f"wrote {self.labels} ({counts})"


def convert_medmnist(npz: str | os.PathLike, out: str | os.PathLike,
                     label_names: list[str] | None = None) -> Converted:
    """Write a MedMNIST ``.npz`` as PNGs ``OUT/images/<split>/<split>_<index>.png`` and
    ``OUT/labels.csv`` (``image,label,split``).

    ``label_names`` maps class index → name (PneumoniaMNIST: ``normal,pneumonia``); without it the
    label is the index. The split column keeps MedMNIST's official train/val/test assignment for
    users who want it instead of ``medxfer split``'s folds. Multi-label arrays are refused.
    """
    from PIL import Image

    src, out = Path(npz), Path(out)
    try:
        arrays = np.load(src)
        names = set(arrays.files)
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{src}: not a readable .npz ({exc})") from None
    splits = [s for s in MEDMNIST_SPLITS if f"{s}_images" in names]
    if not splits:
        raise ConvertError(f"{src}: no <split>_images arrays (MedMNIST layout: train_images, train_labels, ...); "
                           f"arrays: {sorted(names)}")
    rows, counts = [], {}
    for split in splits:
        images = arrays[f"{split}_images"]
        if f"{split}_labels" not in names:
            raise ConvertError(f"{src}: {split}_images has no {split}_labels")
        labels = np.asarray(arrays[f"{split}_labels"])
        labels = labels.reshape(len(labels), -1)
        if labels.shape[1] != 1:
            raise ConvertError(f"{src}: {split}_labels has {labels.shape[1]} columns (multi-label MedMNIST sets "
                               "are not a single class column)")
        if images.ndim not in (3, 4) or images.dtype != np.uint8 or len(images) != len(labels):
            raise ConvertError(f"{src}: {split}_images is {images.dtype} {images.shape}, expected uint8 N×H×W[×3] "
                               f"matching {len(labels)} labels")
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels[:, 0])):
            rel = f"images/{split}/{split}_{i:05d}.png"
            Image.fromarray(image).save(out / rel)
            index = int(label)
            if label_names is not None and not 0 <= index < len(label_names):
                raise ConvertError(f"{src}: label {index} in {split} has no name in {label_names}")
            rows.append({"image": rel, "label": label_names[index] if label_names else str(index), "split": split})
        counts[split] = len(images)
    labels_csv = _write_labels(out, ["image", "label", "split"], rows)
    return Converted(out, labels_csv, counts)


def convert_ddti(src: str | os.PathLike, out: str | os.PathLike) -> Converted:
    """Write ``OUT/labels.csv`` (``image,tirads,case,mask``) for a DDTI folder (``images/*.png``,
    ``masks/*.gif``, ``diagnosis.csv``); the images stay where they are.

    ``image`` and ``mask`` are relative to SRC (ingest matches them as path tails; segmentation's
    ``mask_root`` is SRC). ``tirads`` is copied verbatim, blank for the unlabelled cases (the study
    leaves them out and counts them). ``case`` is the DDTI case number: pass it as ``medxfer ingest
    --patient-column case`` so that a case's images share a fold. Every diagnosis row must have its
    image; images without a row are listed with a blank ``tirads``.
    """
    src, out = Path(src), Path(out)
    diagnosis = src / "diagnosis.csv"
    if not diagnosis.is_file():
        raise ConvertError(f"{src}: no diagnosis.csv (DDTI layout: images/, masks/, diagnosis.csv)")
    tirads: dict[str, str] = {}
    with open(diagnosis, newline="", encoding="utf-8-sig") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or not row[0].strip():
                continue
            name = row[0].strip()
            if not _DDTI_NAME.match(name):
                raise ConvertError(f"{diagnosis}:{n}: {name!r} is not a DDTI name (<case>_<image>[(<nodule>)])")
            tirads[name] = row[1].strip() if len(row) > 1 else ""
    images = {p.stem: p for p in sorted((src / "images").glob("*.png"))}
    missing = sorted(set(tirads) - set(images))
    if missing:
        raise ConvertError(f"{src}: {len(missing)} diagnosis rows have no image in images/ (e.g. {missing[0]}.png)")
    rows, counts = [], {"images": 0, "labelled": 0, "unlabelled": 0, "no_mask": 0}
    for name, path in images.items():
        match = _DDTI_NAME.match(name)
        if not match:
            raise ConvertError(f"{path}: not a DDTI image name (<case>_<image>[(<nodule>)].png)")
        mask = src / "masks" / f"{name}.gif"
        has_mask = mask.is_file()
        counts["images"] += 1
        counts["labelled" if tirads.get(name) else "unlabelled"] += 1
        counts["no_mask"] += not has_mask
        rows.append({"image": f"images/{path.name}", "tirads": tirads.get(name, ""), "case": match["case"],
                     "mask": f"masks/{mask.name}" if has_mask else ""})
    labels_csv = _write_labels(out, ["image", "tirads", "case", "mask"], rows)
    return Converted(out, labels_csv, counts)


def _write_labels(out: Path, columns: list[str], rows: list[dict]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "labels.csv", rows, columns)  # atomic, like the manifest
    return out / "labels.csv"
