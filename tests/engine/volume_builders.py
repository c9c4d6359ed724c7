"""Small volume and cine cohorts for the slice / 2.5D / frame tests: NIfTI volumes with marker
slices mixed with 2D images, CT exports where only some slices carry a finding (labels keyed by
SOPInstanceUID), colour ultrasound cines of two classes. Each is ingested and split with medxfer's
own library functions."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image

from medxfer import synthetic
from medxfer.ingest import ingest, split
from medxfer.ingest.manifest import read_manifest


@dataclass
class Built:
    """An ingested, split cohort: ``out`` (the ingest folder), its manifest, the identifiers its
    sources hold (for leak scans) and facts about the sources the tests check against."""

    src: Path
    out: Path
    manifest: Path
    identifiers: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return read_manifest(self.manifest)[0]


def fixed_secret(root: Path) -> Path:
    """A fixed pseudonymisation secret in ``root``: item ids, patient pseudonyms and so the folds of
    ``medxfer split`` are the same on every run (a random secret would give each run other folds)."""
    path = root / "secret"
    path.write_text("medxfer-volume-builders-fixed-secret-0123456789abcdef")
    path.chmod(0o600)
    return path


def marker(k: int) -> int:
    """The value of every voxel of slice ``k`` of a :func:`nifti_cohort` volume (outside its blob)."""
    return 10 * k + 1


def nifti_cohort(root: Path, n_volumes: int = 9, n_slices: int = 8, n_images: int = 6, folds: int = 3,
                 four_d: bool = False) -> Built:
    """NIfTI volumes ``vNN`` (16×16×``n_slices``, slice k filled with :func:`marker`, a bright square in
    the middle slices of the ``pos`` ones) and 2D PNG images ``iNN``, labelled ``pos``/``neg`` alternately
    by a CSV keyed by path (column ``source_file`` keeps each source's name), ingested as OT and split
    into ``folds`` folds (each file its own patient). ``four_d`` adds a 4D NIfTI time series."""
    src = root / "src"
    src.mkdir(parents=True)
    rows = []
    for i in range(n_volumes):
        vol = np.zeros((16, 16, n_slices), np.int16) + np.array([marker(k) for k in range(n_slices)], np.int16)
        if i % 2:
            vol[5:11, 5:11, n_slices // 2 - 1:n_slices // 2 + 1] = 250
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(src / f"v{i:02d}.nii"))
        rows.append({"file": f"v{i:02d}.nii", "label": ["neg", "pos"][i % 2], "source_file": f"v{i:02d}"})
    for i in range(n_images):
        Image.fromarray(np.full((20, 24), 30 + 20 * i, np.uint8)).save(src / f"i{i:02d}.png")
        rows.append({"file": f"i{i:02d}.png", "label": ["neg", "pos"][i % 2], "source_file": f"i{i:02d}"})
    if four_d:
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.int16), np.eye(4)), str(src / "t4d.nii"))
        rows.append({"file": "t4d.nii", "label": "pos", "source_file": "t4d"})
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.DictWriter(f, ["file", "label", "source_file"])
        w.writeheader()
        w.writerows(rows)
    out = root / "out"
    res = ingest(src, out, labels=labels, key="file", modality="OT", workers=1, secret_file=fixed_secret(root))
    split(out, folds, stratify="label")
    return Built(src, out, res.manifest, facts={"n_slices": n_slices})


def ct_finding_export(root: Path, n_patients: int = 24, n_slices: int = 10, size: int = 32, folds: int = 4,
                      seed: int = 0) -> Built:
    """One CT series per patient (InstanceNumbers shuffled), soft tissue with noise; in every other
    patient three consecutive slices carry a finding (a bright 200 HU blob). A labels CSV keyed by
    SOPInstanceUID labels every slice ``finding`` or ``none``; ingested with ``--key SOPInstanceUID``
    and split into ``folds`` patient-level folds.

    ``facts``: ``positive`` (patient indices with a finding) and ``labels`` (the CSV)."""
    rng = np.random.default_rng(seed)
    src, labels = root / "src", root / "slice_labels_by_sop.csv"
    yy, xx = np.mgrid[:size, :size]
    body = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (0.45 * size) ** 2
    identifiers, rows, positive = [], [], []
    for i in range(n_patients):
        patient = synthetic.new_patient(100 + i, rng=rng)
        hu = np.where(body, 30.0, -1000.0)[None].repeat(n_slices, 0) + rng.normal(0, 15, (n_slices, size, size))
        with_finding = set()
        if i % 2:
            positive.append(i)
            start = int(rng.integers(1, n_slices - 3))
            cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
            for k in range(start, start + 3):
                hu[k][blob] = 200.0
                with_finding.add(k)
        info = synthetic.ct_series(src / f"case{i:02d}", patient, n_slices=n_slices, rows=size, cols=size,
                                   volume=hu, shuffle_instance_numbers=True, rng=rng)
        rows += [(sop, "finding" if k in with_finding else "none") for k, sop in enumerate(info.sop_uids)]
        identifiers += [*patient.identifiers(), info.study_uid, info.series_uid, *info.sop_uids]
    rng.shuffle(rows)
    out, manifest = _labelled_ingest(root, src, labels, ["SOPInstanceUID", "finding"], rows, folds)
    return Built(src, out, manifest, identifiers, facts={"positive": positive, "labels": labels})


def _labelled_ingest(root: Path, src: Path, labels: Path, header: list[str], rows: list, folds: int
                     ) -> tuple[Path, Path]:
    """Write the labels CSV (keyed by ``header[0]``), ingest ``src`` into ``root/out`` with it and split
    that into ``folds`` folds; (out, manifest)."""
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    out = root / "out"
    res = ingest(src, out, labels=labels, key=header[0], workers=1, secret_file=fixed_secret(root))
    split(out, folds)
    return out, res.manifest


def colour_cine_export(root: Path, n_cines: int = 16, frames: int = 8, rows: int = 32, cols: int = 48,
                       folds: int = 4, seed: int = 0) -> Built:
    """Colour (RGB) ultrasound cines, one patient each: ``flow`` cines show a red colour-Doppler blob,
    ``noflow`` ones are the same grey B-mode frames without colour. Labelled by PatientID, ingested
    and split into ``folds`` folds."""
    rng = np.random.default_rng(seed)
    src, labels = root / "src", root / "labels.csv"
    identifiers, labelled = [], []
    for i in range(n_cines):
        patient = synthetic.new_patient(200 + i, rng=rng)
        path = src / f"cine{i:02d}.dcm"
        info = synthetic.us_cine(path, patient, frames=frames, rows=rows, cols=cols, rgb=True, rng=rng)
        flow = i % 2 == 1
        if not flow:  # the grey frames only: every colour pixel back to its B-mode grey
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array.copy()
            red = (arr[..., 0] > arr[..., 1] + 50)
            arr[red] = 128
            ds.set_pixel_data(arr, "RGB", 8, generate_instance_uid=False)
            ds.save_as(path, enforce_file_format=True)
        labelled.append((patient.patient_id, "flow" if flow else "noflow"))
        identifiers += [*patient.identifiers(), info.study_uid, info.series_uid, info.sop_uid]
    out, manifest = _labelled_ingest(root, src, labels, ["PatientID", "doppler"], labelled, folds)
    return Built(src, out, manifest, identifiers, facts={"frames": frames, "labels": labels})


def two_label_volumes(root: Path, n: int, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                      seed: int, classes: tuple[str, str] = ("a", "b"), folds: int = 3,
                      extra_2d: bool = False) -> Path:
    """``n`` MR-like volumes with two touching boxes (label 1 bright, in front of label 2 brighter; every
    other volume's box 1 four slices deeper) and their label volumes (``masks/``, outside the ingested
    folder), a class column ``cls`` alternating ``classes``; ``extra_2d`` adds a 2D PNG item. Ingested
    with a labels CSV ``image, mask, cls`` and split into ``folds``. Returns the manifest."""
    (root / "src").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    rows = []
    for i in range(n):
        x0, y0, z0 = (int(v) for v in rng.integers(4, 10, 3))
        labels = np.zeros(shape, dtype=np.uint8)
        labels[x0:x0 + 8, y0:y0 + 10, z0:z0 + 6 + i % 2 * 4] = 1
        labels[x0 + 8:x0 + 14, y0:y0 + 10, z0:z0 + 6] = 2
        image = rng.normal(100, 15, shape).astype(np.float32)
        image[labels == 1] += 150
        image[labels == 2] += 300
        nib.save(nib.Nifti1Image(image, affine), root / "src" / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), root / "masks" / f"v{i}.nii.gz")
        rows.append({"image": f"v{i}.nii.gz", "mask": str(root / "masks" / f"v{i}.nii.gz"), "cls": classes[i % 2]})
    if extra_2d:
        Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(root / "src" / "photo.png")
        rows.append({"image": "photo.png", "mask": str(root / "masks" / "v0.nii.gz"), "cls": classes[0]})
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "mask", "cls"])
        writer.writeheader()
        writer.writerows(rows)
    ingest(root / "src", root / "cohort", labels=root / "labels.csv", key="image", modality="MR", workers=1)
    split(root / "cohort", folds, seed=0)
    return root / "cohort" / "manifest.csv"
