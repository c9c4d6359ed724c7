"""What a DICOM SEG or RT structure set refers to: the images its masks lie on, as keyed digests.

The header pass keeps this summary of a mask object (:data:`~medxfer.ingest.vocabulary.MASK_SOP_CLASSES`)
so that the mask pass (:mod:`medxfer.ingest.masks`) finds the image item each object belongs to from
the index alone. UIDs are kept only as keyed digests, in the same domains as an image's own
(``SeriesInstanceUID``, ``SOPInstanceUID``): a reference matches an image by digest. Segment labels
and ROI names (free text) are not kept here; the mask pass reads them and keeps them only when they
hold no identifier.
"""
from __future__ import annotations

from typing import Any

import pydicom

from ..deid import Pseudonymizer

SEGMENTATION_TYPES = ("BINARY", "FRACTIONAL", "LABELMAP")


def _items(ds: Any, keyword: str) -> list:
    """The items of a sequence (none when it is absent or empty)."""
    seq = ds.get(keyword) if ds is not None else None
    return list(seq) if seq else []


def _uid(ds: Any, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().strip("\x00")


def mask_header(ds: pydicom.Dataset, pseudo: Pseudonymizer, mask_type: str) -> dict[str, Any]:
    """The de-identified summary of a SEG / RT structure set header: its own SOP digest, the digests
    of the series and the instances it references, and (SEG) its segmentation type.

    ``ref_sops``: the instances its masks are drawn on: a SEG's per-frame source images (else the
    instances of its ReferencedSeriesSequence); an RT structure set's contour images (often absent:
    then the contours are placed by their coordinates on the referenced series)."""
    series: set[str] = set()
    sops: set[str] = set()
    seg_type = ""
    if mask_type == "DICOM SEG":
        for ref in _items(ds, "ReferencedSeriesSequence"):
            series.add(_uid(ref, "SeriesInstanceUID"))
        groups = _items(ds, "PerFrameFunctionalGroupsSequence") + _items(ds, "SharedFunctionalGroupsSequence")
        for group in groups:
            for derivation in _items(group, "DerivationImageSequence"):
                for source in _items(derivation, "SourceImageSequence"):
                    sops.add(_uid(source, "ReferencedSOPInstanceUID"))
        if not sops - {""}:
            for ref in _items(ds, "ReferencedSeriesSequence"):
                sops.update(_uid(i, "ReferencedSOPInstanceUID") for i in _items(ref, "ReferencedInstanceSequence"))
        value = str(ds.get("SegmentationType", "") or "").strip().upper()
        seg_type = value if value in SEGMENTATION_TYPES else ""
    else:
        for frame in _items(ds, "ReferencedFrameOfReferenceSequence"):
            for study in _items(frame, "RTReferencedStudySequence"):
                for ref in _items(study, "RTReferencedSeriesSequence"):
                    series.add(_uid(ref, "SeriesInstanceUID"))
        for roi in _items(ds, "ROIContourSequence"):
            for contour in _items(roi, "ContourSequence"):
                sops.update(_uid(i, "ReferencedSOPInstanceUID") for i in _items(contour, "ContourImageSequence"))
    meta = getattr(ds, "file_meta", None)
    own = _uid(ds, "SOPInstanceUID") or (_uid(meta, "MediaStorageSOPInstanceUID") if meta is not None else "")
    return {
        "mask_type": mask_type,
        "sop": pseudo.digest("SOPInstanceUID", own) if own else None,
        "ref_series": sorted(pseudo.digest("SeriesInstanceUID", s) for s in series if s),
        "ref_sops": sorted(pseudo.digest("SOPInstanceUID", s) for s in sops if s),
        "segmentation_type": seg_type,
    }
