"""Learnable cohorts: exports whose images carry a finding a small network learns, with their labels.

* dental: panoramics (PX) with or without a supernumerary tooth, lateral cephalograms (DX) that
  show sex — :func:`write_dental_export`, ingested and split by :func:`dental_cohort` (the demo's data);
* screening mammography: CC and MLO of both breasts, pathology per breast and density per patient —
  :func:`write_mammography_export`, :func:`mammography_cohort`;
* ultrasound lesions: 8-bit PNGs with lesion masks in BUSI's layout — :func:`write_lesion_pngs`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from pydicom.uid import JPEG2000Lossless, RLELossless

from ..ingest import ingest, split
from .determinism import rng_or_default
from .dicom import PathLike
from .export import ExportInfo
from .modalities import mammogram, radiograph
from .patients import new_patient

__all__ = ["MAMMO_PATHOLOGIES", "dental_cohort", "mammography_cohort", "write_dental_export", "write_lesion_pngs",
           "write_mammography_export"]


def _panoramic_image(rng: np.random.Generator, finding: bool, rows: int, cols: int, maxval: int) -> np.ndarray:
    """A panoramic-like image: jaw arch of bright teeth on a soft background; ``finding`` adds a
    supernumerary tooth (an extra, smaller bright crown) between the arches."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    img = 0.25 + 0.1 * np.exp(-((xx - cols / 2) ** 2) / (2 * (cols / 3) ** 2))
    for upper in (True, False):
        n_teeth = 14
        for k in range(n_teeth):
            t = (k + 0.5) / n_teeth
            cx = cols * (0.12 + 0.76 * t) + rng.normal(0, 1.5)
            bend = (t - 0.5) ** 2 * rows * 0.5
            cy = rows * (0.40 if upper else 0.62) + (-bend if upper else bend) * 0.4 + rng.normal(0, 1.0)
            rx, ry = cols * 0.022, rows * (0.09 if upper else 0.085)
            img += 0.45 * (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0)
    if finding:
        cx = cols * rng.uniform(0.3, 0.7)
        cy = rows * rng.uniform(0.49, 0.53)
        img += 0.6 * (((xx - cx) / (cols * 0.024)) ** 2 + ((yy - cy) / (rows * 0.06)) ** 2 <= 1.0)
    img += rng.normal(0, 0.04, img.shape)
    return np.clip(img / 1.4, 0, 1) * maxval


def _ceph_image(rng: np.random.Generator, rows: int, cols: int, maxval: int, male: bool = False) -> np.ndarray:
    """A lateral-cephalogram-like image: skull outline and jaw. Sex shows as it does on real
    cephalograms, on average: a more prominent brow ridge and a larger, heavier mandible in men
    (with individual variation, so the task is learnable but not trivial)."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    skull = ((xx - cols * 0.5) / (cols * 0.38)) ** 2 + ((yy - rows * 0.42) / (rows * 0.36)) ** 2
    img = 0.2 + 0.5 * ((skull <= 1.0) & (skull >= 0.8)) + 0.15 * (skull < 0.8)
    scale = (1.12 if male else 1.0) + rng.normal(0, 0.04)
    jaw = ((xx - cols * 0.55) / (cols * 0.25 * scale)) ** 2 + ((yy - rows * 0.8) / (rows * 0.12 * scale)) ** 2
    img += 0.35 * ((jaw <= 1.0) & (jaw >= (0.45 if male else 0.6)))
    brow = ((xx - cols * 0.2) / (cols * 0.06)) ** 2 + ((yy - rows * 0.3) / (rows * 0.05)) ** 2
    img += (0.3 if male else 0.1) * (1 + rng.normal(0, 0.3)) * (brow <= 1.0)
    img += rng.normal(0, 0.04, img.shape)
    return np.clip(img, 0, 1) * maxval


def write_dental_export(root: PathLike, *, n_patients: int = 24, rows: int = 96, cols: int = 192,
                        ceph: bool = True, rng: np.random.Generator | None = None,
                        labels_csv: PathLike | None = None) -> ExportInfo:
    """A dental PACS export: per patient one panoramic (PX, RLE or J2K lossless) and, with ``ceph``,
    one lateral cephalogram (DX). Half the patients have a supernumerary tooth (patients 1, 2 of
    every 4, independent of sex), a finding a small CNN learns; the cephalograms show sex (the
    dental study's second task). Headers carry realistic fake identifiers.

    ``labels_csv``: ``PatientID,supernumerary,sex`` (1/0, F/M) for every patient.
    """
    rng, root = rng_or_default(rng), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    patients = [new_patient(i, rng) for i in range(n_patients)]
    files: list[Path] = []
    kinds: dict[str, list[Path]] = {"px": [], "ceph": []}
    labels = []
    for i, p in enumerate(patients):
        finding = i % 4 in (1, 2)  # independent of sex, which alternates
        labels.append((p.patient_id, int(finding), p.sex))
        folder = root / "DICOM" / f"PAT{i + 1:04d}"
        px = radiograph(folder / "STU0001" / "SER0001" / "IM000001", p, modality="PX", rows=rows, cols=cols,
                        view_position=None, body_part="JAW", bits_stored=12, window=(2048, 4096),
                        image=_panoramic_image(rng, finding, rows, cols, 4095),
                        transfer_syntax=(RLELossless, JPEG2000Lossless)[i % 2], rng=rng)
        kinds["px"].append(px.path)
        files.append(px.path)
        if ceph:
            c = radiograph(folder / "STU0001" / "SER0002" / "IM000001", p, modality="DX", rows=cols, cols=rows * 2 - 32,
                           view_position="LL", body_part="SKULL", bits_stored=12, window=(2048, 4096),
                           image=_ceph_image(rng, cols, rows * 2 - 32, 4095, male=p.sex == "M"), rng=rng,
                           study_uid=px.study_uid)
            kinds["ceph"].append(c.path)
            files.append(c.path)
    if labels_csv is not None:
        with open(labels_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["PatientID", "supernumerary", "sex"])
            w.writerows(labels)
    identifiers = sorted({s for p in patients for s in p.identifiers()})
    return ExportInfo(root=root, files=files, patients=patients, n_items_expected=len(files),
                      identifiers=identifiers, kinds=kinds)


def dental_cohort(root: PathLike, *, n_patients: int = 24, ceph: bool = True, folds: int = 5,
                  rng: np.random.Generator | None = None, workers: int = 1) -> tuple[Path, ExportInfo | None]:
    """A dental export under ``root/export`` ingested (labels joined by PatientID) into
    ``root/cohort`` and split by patient into ``folds`` stratified by ``supernumerary``: the
    labelled cohort tests and benchmarks train on. Returns (manifest path, export info); an
    existing cohort is reused (info None)."""
    root = Path(root)
    manifest = root / "cohort" / "manifest.csv"
    if manifest.exists():
        return manifest, None
    info = write_dental_export(root / "export", n_patients=n_patients, ceph=ceph, rng=rng,
                               labels_csv=root / "labels.csv")
    ingest(root / "export", root / "cohort", labels=root / "labels.csv", key="PatientID", workers=workers)
    split(root / "cohort", folds, stratify="supernumerary", seed=0)
    return manifest, info


def write_lesion_pngs(root: PathLike, *, n_images: int = 16, size: tuple[int, int] = (96, 128),
                      rng: np.random.Generator | None = None, classes: bool = False) -> Path:
    """Ultrasound-like 8-bit PNGs with one dark elliptical lesion each and its binary mask PNG
    (BUSI's layout: ``images/``, ``masks/`` and ``labels.csv`` with ``image,mask,group`` columns,
    paths relative to ``root``). Returns the labels CSV.

    With ``classes`` the CSV gains a ``malignant`` column (``yes`` / ``no``, alternating, so
    balanced): a malignant lesion carries bright internal echoes (four small bright spots
    *inside* the ellipse, wholly within the mask), a benign one is plain. The finding that
    separates the classes therefore lies in the mask (what a Grad-CAM localization score can
    check). Without ``classes`` the output is unchanged (same files, same random draws)."""
    from PIL import Image

    rng, root = rng_or_default(rng), Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows, cols = size
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    lines = []
    for i in range(n_images):
        speckle = rng.gamma(2.0, 0.5, (rows, cols)).astype(np.float32)
        img = 110 + 25 * (yy / rows) + 30 * (speckle - 1)
        cy, cx = rng.uniform(0.3, 0.7) * rows, rng.uniform(0.3, 0.7) * cols
        ry, rx = rng.uniform(0.1, 0.2) * rows, rng.uniform(0.1, 0.2) * cols
        lesion = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        img[lesion] = 35 + 12 * (speckle[lesion] - 1)
        line = (f"images/case{i:03d}.png", f"masks/case{i:03d}_mask.png", f"P{i:03d}")
        if classes:
            malignant = i % 2 == 1
            if malignant:  # bright internal echoes: small bright spots scattered inside the ellipse
                r = 0.25 * min(ry, rx)
                for angle, dist in zip(rng.uniform(0, 2 * np.pi, 4), rng.uniform(0.0, 0.6, 4)):
                    sy, sx = cy + dist * ry * np.sin(angle), cx + dist * rx * np.cos(angle)
                    spot = lesion & (((yy - sy) ** 2 + (xx - sx) ** 2) <= r * r)
                    img[spot] = 240 + 8 * (speckle[spot] - 1)  # brighter than the speckle's bright tail
            line += ("yes" if malignant else "no",)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"case{i:03d}.png")
        Image.fromarray((lesion * 255).astype(np.uint8)).save(root / "masks" / f"case{i:03d}_mask.png")
        lines.append(line)
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "mask", "group"] + (["malignant"] if classes else []))
        w.writerows(lines)
    return labels


MAMMO_PATHOLOGIES = ("normal", "benign", "malignant")


def _mammo_exam_image(rng: np.random.Generator, rows: int, cols: int, maxval: int, laterality: str, view: str,
                      dense: bool, pathology: str, depth: float, height: float) -> np.ndarray:
    """One mammographic view: breast against the chest wall, fibroglandular texture (brighter and
    more extensive when ``dense``), and the breast's lesion if it has one. The lesion lies at the
    same depth from the nipple in both views (``depth``), at ``height`` on the CC and higher on the
    MLO, as on real exams; benign: a faint smooth oval; malignant: a brighter, spiculated mass."""
    yy, xx = np.mgrid[0:1:rows * 1j, 0:1:cols * 1j]
    wall = xx if laterality.upper() == "L" else 1 - xx
    breast = ((yy - 0.5) / 0.44) ** 2 + (wall / 0.8) ** 2 <= 1
    tissue = rng.normal(0, 1, (rows // 4 + 1, cols // 4 + 1))
    tissue = np.kron(tissue, np.ones((4, 4)))[:rows, :cols]
    gland = np.exp(-((yy - 0.5) ** 2 / 0.06 + (wall - 0.3) ** 2 / (0.05 if dense else 0.02)))
    img = 0.3 + (0.32 if dense else 0.18) * gland + (0.05 if dense else 0.03) * tissue * gland
    if view.upper() == "MLO":  # the pectoral muscle in the upper chest-wall corner
        img = np.where(wall + 0.6 * yy < 0.25, 0.62, img)
    if pathology != "normal":
        cy = height - (0.12 if view.upper() == "MLO" else 0.0)
        r2 = ((yy - cy) / 0.05) ** 2 + ((wall - depth) / 0.05) ** 2
        if pathology == "malignant":
            angle = np.arctan2(yy - cy, wall - depth)
            spicules = 1.0 + 0.6 * np.cos(7 * angle) ** 8
            img = img + 0.28 * (r2 <= spicules ** 2)
        else:
            img = img + 0.12 * np.exp(-r2 / 1.2)
    img = np.where(breast, img, 0.02) + rng.normal(0, 0.015, img.shape)
    m = max(2, min(rows, cols) // 16)
    img[:m, :m] = 1.0
    return np.rint(np.clip(img, 0, 1) * maxval).astype(np.int64)


def write_mammography_export(root: PathLike, *, n_patients: int = 16, rows: int = 96, cols: int = 80,
                             rng: np.random.Generator | None = None,
                             labels_csv: PathLike | None = None) -> ExportInfo:
    """A screening-mammography PACS export: per patient one study with CC and MLO views of both
    breasts (4 MG images), realistic headers with fake identifiers.

    Each breast has a pathology (``normal``/``benign``/``malignant``, cycling so every class is
    frequent) seen in both of its views; each patient a breast density (``dense``/``fatty``,
    independent of pathology) — the mammography study's tasks: binary (malignant), 3-class
    (pathology) and density pretraining. ``labels_csv``: ``file,pathology,malignant,density``
    keyed by each image's path relative to ``root`` (per-image labels, the same for both views).
    """
    rng, root = rng_or_default(rng), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    patients = [new_patient(i, rng) for i in range(n_patients)]
    files: list[Path] = []
    labels = []
    for i, p in enumerate(patients):
        dense = i % 2 == 1
        study_uid = None
        for b, lat in enumerate(("L", "R")):
            pathology = MAMMO_PATHOLOGIES[(i + 2 * b) % 3]
            depth, height = rng.uniform(0.25, 0.45), rng.uniform(0.4, 0.6)
            for s, view in enumerate(("CC", "MLO")):
                path = root / "DICOM" / f"PAT{i + 1:04d}" / "STU0001" / f"SER{2 * b + s + 1:04d}" / "IM000001"
                image = _mammo_exam_image(rng, rows, cols, 4095, lat, view, dense, pathology, depth, height)
                info = mammogram(path, p, view=view, laterality=lat, rows=rows, cols=cols, image=image,
                                 study_uid=study_uid, rng=rng)
                study_uid = info.study_uid
                files.append(info.path)
                labels.append((info.path.relative_to(root).as_posix(), pathology,
                               "yes" if pathology == "malignant" else "no", "dense" if dense else "fatty"))
    if labels_csv is not None:
        with open(labels_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "pathology", "malignant", "density"])
            w.writerows(labels)
    identifiers = sorted({s for p in patients for s in p.identifiers()})
    return ExportInfo(root=root, files=files, patients=patients, n_items_expected=len(files),
                      identifiers=identifiers, kinds={"mg": files})


def mammography_cohort(root: PathLike, *, n_patients: int = 16, folds: int = 4,
                       rng: np.random.Generator | None = None, workers: int = 1) -> tuple[Path, ExportInfo | None]:
    """A mammography export under ``root/export`` ingested (labels joined by file path) into
    ``root/cohort`` and split by patient into ``folds``, stratified by ``malignant``. Returns
    (manifest path, export info); an existing cohort is reused (info None)."""
    root = Path(root)
    manifest = root / "cohort" / "manifest.csv"
    if manifest.exists():
        return manifest, None
    info = write_mammography_export(root / "export", n_patients=n_patients, rng=rng, labels_csv=root / "labels.csv")
    ingest(root / "export", root / "cohort", labels=root / "labels.csv", key="file", workers=workers)
    split(root / "cohort", folds, stratify="malignant", seed=0)
    return manifest, info
