"""DICOM dataset primitives: the header every synthetic file starts from, DS strings, code items, windows.

:func:`base_dataset` fills the file meta information (MediaStorageSOPClassUID / InstanceUID,
TransferSyntaxUID, ImplementationClassUID) and the SOP common, patient, general study, series
and equipment modules; study date, time and ID derive from the study UID, so every series of a
study agrees on them.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from .patients import FakePatient

PathLike = str | Path

__all__ = ["PathLike", "base_dataset", "code_item", "format_ds", "set_window"]

_EQUIPMENT = {  # modality -> (Manufacturer, ManufacturerModelName)
    "CT": ("ACME Medical Systems", "Acme CT Vision 64"),
    "MR": ("ACME Medical Systems", "Acme MR Aura 1.5T"),
    "DX": ("Fakeray Imaging", "FR-DR 4343"),
    "CR": ("Fakeray Imaging", "FR-CR Reader 2"),
    "PX": ("Denta Fictiva", "PanoView 3"),
    "IO": ("Denta Fictiva", "IntraSense S1"),
    "MG": ("Mammo Mock Corp", "MMX Selenia-like"),
    "US": ("Sonofake", "SF Echo 7"),
}


def format_ds(v: float) -> str:
    """Format a number as a DS string (<= 16 chars)."""
    s = f"{float(v):.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """A code sequence item: CodeValue, CodingSchemeDesignator, CodeMeaning."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _study_meta(study_uid: str) -> tuple[str, str, str]:
    """StudyDate, StudyTime, StudyID derived from the study UID (consistent across its series)."""
    h = int(hashlib.sha256(study_uid.encode()).hexdigest(), 16)
    d = date(2023, 1, 2) + timedelta(days=h % 700)
    secs = 7 * 3600 + (h >> 20) % (11 * 3600)
    tm = f"{secs // 3600:02d}{secs % 3600 // 60:02d}{secs % 60:02d}"
    return d.strftime("%Y%m%d"), tm, str(1000 + (h >> 48) % 9000)


def _age(birth: str, on: str) -> str:
    b, o = (date(int(s[:4]), int(s[4:6]), int(s[6:8])) for s in (birth, on))
    years = o.year - b.year - ((o.month, o.day) < (b.month, b.day))
    return f"{max(years, 0):03d}Y"


def base_dataset(patient: FakePatient, *, sop_class: str, sop_uid: str, modality: str, study_uid: str,
                 series_uid: str, series_number: int, series_description: str, study_description: str = "",
                 body_part: str | None = None, instance_number: int | None = 1) -> Dataset:
    """File meta + SOP common, patient, general study/series/equipment modules."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDXFER_SYNTH"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    sdate, stime, study_id = _study_meta(study_uid)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = sdate
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = stime
    ds.AccessionNumber = patient.accession
    ds.Modality = modality
    ds.Manufacturer, ds.ManufacturerModelName = _EQUIPMENT.get(modality, ("medxfer", "synthetic"))
    ds.SoftwareVersions = "synth-1.0"
    ds.InstitutionName = patient.institution
    ds.ReferringPhysicianName = patient.referring_physician
    ds.StudyDescription = study_description or f"{modality} EXAM"
    ds.SeriesDescription = series_description
    ds.PatientName, ds.PatientID = patient.name, patient.patient_id
    ds.PatientBirthDate, ds.PatientSex = patient.birth_date, patient.sex
    ds.PatientAge = _age(patient.birth_date, sdate)
    if body_part:
        ds.BodyPartExamined = body_part
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyID, ds.SeriesNumber = study_id, series_number
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    return ds


def set_window(ds: Dataset, center: float, width: float) -> None:
    """Set WindowCenter / WindowWidth as DS strings."""
    ds.WindowCenter, ds.WindowWidth = format_ds(center), format_ds(width)
