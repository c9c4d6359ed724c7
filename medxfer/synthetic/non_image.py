"""Non-image DICOM objects of an export: a Basic Text SR report and a Grayscale Softcopy Presentation State."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    BasicTextSRStorage,
    DigitalXRayImageStorageForPresentation,
    GrayscaleSoftcopyPresentationStateStorage,
)

from .determinism import make_uid, rng_or_default
from .dicom import PathLike, base_dataset, code_item
from .encoding import save_dataset
from .modalities import InstanceInfo
from .patients import FakePatient

__all__ = ["presentation_state", "sr_document"]


def sr_document(path: PathLike, patient: FakePatient, *, study_uid: str | None = None,
                rng: np.random.Generator | None = None) -> Path:
    """Write a Basic Text SR report (no pixel data)."""
    rng, path = rng_or_default(rng), Path(path)
    study_uid = study_uid or make_uid(rng, "study", patient.patient_id, path.resolve())
    series_uid, sop = make_uid(rng, "series", study_uid, path.resolve()), make_uid(rng, "sop", path.resolve())
    ds = base_dataset(patient, sop_class=BasicTextSRStorage, sop_uid=sop, modality="SR", study_uid=study_uid,
                      series_uid=series_uid, series_number=99, series_description="Radiology Report")
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [code_item("18748-4", "LN", "Diagnostic Imaging Report")]
    ds.PerformedProcedureCodeSequence, ds.ReferencedPerformedProcedureStepSequence = [], []
    items = []
    for text in ("No acute abnormality.", "Lungs are clear. Heart size normal."):
        item = Dataset()
        item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", text
        item.ConceptNameCodeSequence = [code_item("121071", "DCM", "Finding")]
        items.append(item)
    ds.ContentSequence = items
    return save_dataset(ds, path)


def presentation_state(path: PathLike, patient: FakePatient, *, study_uid: str | None = None,
                       referenced: InstanceInfo | None = None, rng: np.random.Generator | None = None) -> Path:
    """Write a Grayscale Softcopy Presentation State (no pixels), referencing `referenced` or a made-up DX image."""
    rng, path = rng_or_default(rng), Path(path)
    study_uid = study_uid or (referenced.study_uid if referenced else None) or make_uid(
        rng, "study", patient.patient_id, path.resolve())
    series_uid, sop = make_uid(rng, "series", study_uid, path.resolve()), make_uid(rng, "sop", path.resolve())
    ds = base_dataset(patient, sop_class=GrayscaleSoftcopyPresentationStateStorage, sop_uid=sop, modality="PR",
                      study_uid=study_uid, series_uid=series_uid, series_number=90, series_description="Presentation")
    ds.PresentationCreationDate, ds.PresentationCreationTime = ds.ContentDate, ds.ContentTime
    ds.ContentLabel, ds.ContentDescription, ds.ContentCreatorName = "WINDOW", "Soft tissue preset", ""
    ref_img = Dataset()
    ref_img.ReferencedSOPClassUID = DigitalXRayImageStorageForPresentation
    ref_img.ReferencedSOPInstanceUID = referenced.sop_uid if referenced else make_uid(rng, "ref", sop)
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = referenced.series_uid if referenced else make_uid(rng, "refser", sop)
    ref_series.ReferencedImageSequence = [ref_img]
    ds.ReferencedSeriesSequence = [ref_series]
    rows, cols = referenced.image.shape[:2] if referenced is not None and referenced.image is not None else (256, 320)
    area = Dataset()
    area.DisplayedAreaTopLeftHandCorner, area.DisplayedAreaBottomRightHandCorner = [1, 1], [cols, rows]
    area.PresentationSizeMode = "SCALE TO FIT"
    ds.DisplayedAreaSelectionSequence = [area]
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = "2048", "4096"
    ds.SoftcopyVOILUTSequence = [voi]
    ds.PresentationLUTShape, ds.ImageHorizontalFlip, ds.ImageRotation = "IDENTITY", "N", 0
    return save_dataset(ds, path)
