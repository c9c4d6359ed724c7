"""A realistic PACS export: several patients' CT, DX, PX, US, MG and SR in a CD layout (with a DICOMDIR)
or a loose folder layout, a labels CSV, and the identifiers its headers carry (:func:`export_identifiers`)."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from .determinism import make_uid, rng_or_default
from .dicom import PathLike
from .modalities import ct_series, mammogram, radiograph, us_cine
from .non_image import sr_document
from .patients import FakePatient, new_patient

__all__ = ["ExportInfo", "export_identifiers", "write_pacs_export"]

#: The header attributes :meth:`FakePatient.identifiers` draws from (sex aside: one letter is no identifier).
_IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
                "ReferringPhysicianName")


@dataclass
class ExportInfo:
    """What :func:`write_pacs_export` wrote. ``kinds`` maps a label (ct, ct_localizer, dx, px, us, mg, sr,
    dicomdir) to its files; ``n_items_expected`` counts image items (one per CT volume, DX, PX, US, MG view)."""

    root: Path
    files: list[Path]
    patients: list[FakePatient]
    n_items_expected: int
    identifiers: list[str]
    kinds: dict[str, list[Path]] = field(default_factory=dict)


def write_pacs_export(root: PathLike, *, n_patients: int = 3, ct_slices: int = 12, with_dicomdir: bool = True,
                      compressed: bool = True, rng: np.random.Generator | None = None,
                      labels_csv: PathLike | None = None, layout: str = "cd") -> ExportInfo:
    """Write a small realistic export under `root`.

    Per patient i: a CT study (shuffled instance numbers + one localizer; transfer syntax cycles
    explicit / RLE (compressed) / implicit), a DX chest (MONOCHROME1 for odd i; JPEG 2000 lossless for
    even i when compressed) and a PX panoramic (RLE when compressed). Patient 0 also gets a US cine
    (JPEG baseline when compressed) and two MG views (L CC with plain attributes, L MLO with sequences,
    JPEG 2000 lossless when compressed) and a Basic Text SR in the CT study.

    with_dicomdir=True: a pydicom FileSet writes root/DICOMDIR and the files in its own extensionless
    layout (root/PT000000/ST000000/SE000000/IM000000); returned paths are the real ones.
    with_dicomdir=False: ``layout="cd"`` gives root/DICOM/PAT0001/STU0001/SER0001/IM000001 (no extension),
    ``layout="loose"`` gives root/<PatientID>/<series>/<n>.dcm.
    `labels_csv`: CSV ``PatientID,label`` with label = i % 2 (not listed in ``files``).
    n_items_expected counts image items: one per CT volume (localizer excluded), DX, PX, US cine and MG view.
    """
    if layout not in ("cd", "loose") or (with_dicomdir and layout != "cd"):
        raise ValueError("layout must be 'cd' or 'loose' ('loose' only without a DICOMDIR)")
    rng, root = rng_or_default(rng), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stage = root / ".staging" if with_dicomdir else root
    loose = layout == "loose"
    patients = [new_patient(i, rng) for i in range(n_patients)]
    kinds: dict[str, list[Path]] = {}

    def loc(pi: int, st: int, se: int, n: int = 1, label: str = "") -> Path:
        if loose:
            return stage / patients[pi].patient_id / f"{se:02d}_{label}" / f"{n:04d}.dcm"
        return stage / "DICOM" / f"PAT{pi + 1:04d}" / f"STU{st:04d}" / f"SER{se:04d}" / f"IM{n:06d}"

    def add(kind: str, *paths: Path) -> None:
        kinds.setdefault(kind, []).extend(paths)

    plain, ct_cycle = ExplicitVRLittleEndian, (ExplicitVRLittleEndian, RLELossless, ImplicitVRLittleEndian)
    for i, p in enumerate(patients):
        ct_ts = ct_cycle[i % 3] if compressed or ct_cycle[i % 3] != RLELossless else plain
        ct = ct_series(loc(i, 1, 1, label="CT").parent, p, n_slices=ct_slices, add_localizer=True, rng=rng,
                       transfer_syntax=ct_ts, filename_pattern="{i:04d}.dcm" if loose else "IM{i:06d}")
        add("ct", *ct.paths[:-1])
        add("ct_localizer", ct.paths[-1])
        dx_ts = JPEG2000Lossless if compressed and i % 2 == 0 else plain
        add("dx", radiograph(loc(i, 2, 1, label="DX"), p, rows=128, cols=160, monochrome1=i % 2 == 1,
                             transfer_syntax=dx_ts, rng=rng).path)
        add("px", radiograph(loc(i, 3, 1, label="PX"), p, modality="PX", rows=96, cols=192, view_position=None,
                             body_part="JAW", transfer_syntax=RLELossless if compressed else plain, rng=rng).path)
        if i == 0:
            add("us", us_cine(loc(i, 4, 1, label="US"), p, frames=6, rng=rng,
                              transfer_syntax=JPEGBaseline8Bit if compressed else plain).path)
            mg_study = make_uid(rng, "mg-study", p.patient_id, stage.resolve())
            mg_series = make_uid(rng, "mg-series", mg_study)
            for n, (view, seq) in enumerate((("CC", False), ("MLO", True)), start=1):
                add("mg", mammogram(loc(i, 5, 1, n, label="MG"), p, view=view, laterality="L", use_sequences=seq,
                                    rows=160, cols=128, study_uid=mg_study, series_uid=mg_series, rng=rng,
                                    transfer_syntax=JPEG2000Lossless if compressed else plain,
                                    extra={"InstanceNumber": n}).path)
            add("sr", sr_document(loc(i, 1, 99, label="SR"), p, study_uid=ct.study_uid, rng=rng))

    if with_dicomdir:
        kinds = _write_dicomdir(root, stage, kinds)
    if labels_csv is not None:
        Path(labels_csv).parent.mkdir(parents=True, exist_ok=True)
        with open(labels_csv, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["PatientID", "label"])
            writer.writerows([p.patient_id, i % 2] for i, p in enumerate(patients))
    files = sorted(p for paths in kinds.values() for p in paths)
    identifiers = list(dict.fromkeys(s for p in patients for s in p.identifiers()))
    n_items = 3 * n_patients + (3 if n_patients else 0)
    return ExportInfo(root=root, files=files, patients=patients, n_items_expected=n_items,
                      identifiers=identifiers, kinds=kinds)


def _write_dicomdir(root: Path, stage: Path, kinds: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """Let pydicom's FileSet lay the staged files out under `root` with a DICOMDIR; return the new paths."""
    from pydicom.fileset import FileSet

    fs = FileSet()
    fs.ID = "MEDXFER_SYNTH"
    fs.UID = generate_uid(entropy_srcs=["fileset", str(root.resolve())])
    sop_of: dict[Path, str] = {}
    for paths in kinds.values():
        for path in paths:
            fs.add(path)
            sop_of[path] = str(pydicom.dcmread(path, stop_before_pixels=True,
                                               specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
    fs.write(root)
    where = {str(inst.SOPInstanceUID): Path(inst.path) for inst in fs}
    shutil.rmtree(stage)
    out = {kind: [where[sop_of[p]] for p in paths] for kind, paths in kinds.items()}
    out["dicomdir"] = [root / "DICOMDIR"]
    return out


def export_identifiers(root: PathLike) -> list[str]:
    """The identifiers the DICOM headers under ``root`` carry, sorted: what a leak test must look for.

    Per readable file, the patient's names (whole and parts), ID, birth date, accession number,
    institution and referring physician, as :meth:`FakePatient.identifiers` lists them, so for a
    generated export this equals its ``ExportInfo.identifiers`` whatever seed and size made it.
    Headers only (no pixel data); files that are not DICOM (labels, notes, a DICOMDIR's records)
    add nothing, and a file whose header does not read (:func:`broken_files`) is skipped.
    """
    found: set[str] = set()
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_IDENTIFYING))
        except (InvalidDicomError, ValueError, EOFError, OSError):
            continue
        values = {kw: str(ds.get(kw, "") or "") for kw in _IDENTIFYING}
        patient = FakePatient(name=values["PatientName"], patient_id=values["PatientID"],
                              birth_date=values["PatientBirthDate"], sex="", institution=values["InstitutionName"],
                              accession=values["AccessionNumber"], referring_physician=values["ReferringPhysicianName"])
        found.update(patient.identifiers())
    return sorted(found)
