"""Public datasets' distribution layouts → what ``medxfer ingest`` reads (an image folder and a
labels CSV with a header and a file-path key column).

Two layouts need this: MedMNIST ships arrays in one ``.npz`` (no image files: 2D sets become PNGs,
3D sets NIfTI volumes), and DDTI ships a header-less ``diagnosis.csv`` of ``<name>,<TI-RADS>`` rows
whose names omit the extension and whose first number is the case (the patient). BUSI needs nothing
(its folders and ``labels.csv`` ingest as they are). The converters write only the folder and CSV;
labels are copied verbatim (class grouping, e.g. TI-RADS 2–3 vs 4a–5, is the study spec's
``data.classes`` mapping), and an unreadable input is an error naming it.
"""
from __future__ import annotations

import csv
import gzip
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import MedxferError
from .manifest import write_csv

MEDMNIST_SPLITS = ("train", "val", "test")
_NIFTI_OFFSET = 352  # NIfTI-1: 348-byte header + 4-byte extension flag
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
    """Write a MedMNIST ``.npz`` as image files and ``OUT/labels.csv`` (``image,label,split``).

    2D sets (uint8 ``N×H×W``, ``N×H×W×1`` or ``N×H×W×3``) become PNGs
    ``OUT/images/<split>/<split>_<index>.png``; 3D sets (uint8 ``N×D0×D1×D2``, or ``N×D0×D1×D2×1``:
    OrganMNIST3D, NoduleMNIST3D, AdrenalMNIST3D, VesselMNIST3D, ... at 28³ or 64³) become NIfTI volumes
    ``OUT/images/<split>/<split>_<index>.nii.gz`` that ingest reads as ``volume`` items.

    3D axis order: each array ``volume[a, b, c]`` is written unchanged as NIfTI voxel ``(i, j, k)``, so
    the array's last axis is the NIfTI third axis (z), the one 2D/2.5D training slices along. Evidence
    that it is the original axial (CT slice) axis: in AdrenalMNIST3D 64³ (1 mm voxels: a 64 mm cube), adjacent
    slices along the last axis are identical every 5th step (median 20 % of slice pairs; ~0 % along the
    other two axes): the signature of 1.25 mm CT slices resampled to 1 mm, i.e. the coarse through-plane
    axis; and slices across the last axis show the adrenal's axial Y/λ shape. VesselMNIST3D (meshes
    voxelised with trimesh, which indexes ``[x, y, z]``) carries no such signature; its last axis is the
    mesh's z. Same order as MedMNIST's arrays, so a network trained on them sees the same volumes.

    Spacing and direction are not recorded in MedMNIST (each subject was resampled to a cube): the
    NIfTI affine is the identity, i.e. 1 mm isotropic voxels (AdrenalMNIST3D's real voxel is
    64 mm / size); the RAS directions it implies are a placeholder (which way is the patient's left or
    head is not known). Voxel values are copied verbatim (the 3D sets are 0/255 masks).

    ``label_names`` maps class index → name (PneumoniaMNIST: ``normal,pneumonia``); without it the
    label is the index. The split column keeps MedMNIST's official train/val/test assignment for
    users who want it instead of ``medxfer split``'s folds (the npz has no patient identity: each item
    is its own patient in ingest, so AdrenalMNIST3D's two glands of one patient may land in different
    folds; the official split is patient-level). Multi-label arrays are refused.
    """
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
        if f"{split}_labels" not in names:
            raise ConvertError(f"{src}: {split}_images has no {split}_labels")
        try:
            images = arrays[f"{split}_images"]
            labels = np.asarray(arrays[f"{split}_labels"])
        except (OSError, ValueError, EOFError) as exc:  # a truncated or corrupt member
            raise ConvertError(f"{src}: {split} arrays unreadable ({exc})") from None
        labels = labels.reshape(len(labels), -1)
        if labels.shape[1] != 1:
            raise ConvertError(f"{src}: {split}_labels has {labels.shape[1]} columns (multi-label MedMNIST sets "
                               "are not a single class column)")
        images, suffix, save = _medmnist_layout(src, split, images, len(labels))
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels[:, 0])):
            index = int(label)
            if label_names is not None and not 0 <= index < len(label_names):
                raise ConvertError(f"{src}: label {index} in {split} has no name in {label_names}")
            rel = f"images/{split}/{split}_{i:05d}{suffix}"
            save(image, out / rel)
            rows.append({"image": rel, "label": label_names[index] if label_names else str(index), "split": split})
        counts[split] = len(images)
    labels_csv = _write_labels(out, ["image", "label", "split"], rows)
    return Converted(out, labels_csv, counts)


def _medmnist_layout(src: Path, split: str, images: np.ndarray, n_labels: int):
    """(images without a singleton channel axis, file suffix, writer) for a 2D or 3D MedMNIST array."""
    shape = images.shape
    if images.dtype == np.uint8 and len(images) == n_labels:
        if images.ndim == 3 or (images.ndim == 4 and shape[-1] in (1, 3)):  # N×H×W[×1|×3]
            return (images[..., 0] if shape[-1] == 1 and images.ndim == 4 else images), ".png", _save_png
        if images.ndim == 4 or (images.ndim == 5 and shape[-1] == 1):  # N×D0×D1×D2[×1]
            return (images[..., 0] if images.ndim == 5 else images), ".nii.gz", _nifti_writer(shape[1:4])
    raise ConvertError(f"{src}: {split}_images is {images.dtype} {shape}, expected uint8 N×H×W[×1|×3] (2D) or "
                       f"N×D×H×W[×1] (3D) matching {n_labels} labels")


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


def _nifti_writer(shape: tuple[int, ...]):
    """A writer of uint8 volumes of ``shape`` as ``.nii.gz``: voxel (i, j, k) = ``volume[i, j, k]``, identity
    affine (1 mm, placeholder directions). Header built once, data gzipped in one write (about half the time of
    ``nibabel.save``, which copies in chunks: 1,584 volumes of 64³ in ~3 s)."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.uint8)
    hdr.set_xyzt_units("mm")
    hdr.set_qform(np.eye(4), code="aligned")  # both forms agree, so readers need not choose
    hdr.set_sform(np.eye(4), code="aligned")
    hdr.set_data_offset(_NIFTI_OFFSET)
    head = hdr.binaryblock + b"\x00" * (_NIFTI_OFFSET - len(hdr.binaryblock))  # no extensions

    def save(volume: np.ndarray, path: Path) -> None:
        with gzip.open(path, "wb", compresslevel=1) as f:
            f.write(head)
            f.write(volume.tobytes(order="F"))  # NIfTI stores the first index fastest

    return save


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
