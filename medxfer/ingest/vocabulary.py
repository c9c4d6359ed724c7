"""DICOM defined terms ingest acts on, and the code-string alphabet header values must pass.

Modalities that decide how files become items, the identifiers that are only ever kept as keyed
digests, SOP classes that carry pixels but are not images, mammography view codes, and
:func:`code_string`, the filter every header value copied to the manifest goes through.
"""
from __future__ import annotations

import re

# Modalities that are one 2D item per image (projection radiography and friends).
PROJECTION_MODALITIES = {"CR", "DX", "PX", "IO", "MG", "RF", "RG", "XA", "DR", "OP", "XC", "SC", "OT", "ES", "GM"}
# Identifiers that may be used to join labels; each is stored only as a keyed digest.
LABEL_KEYWORDS = ("PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
# Header values that must never show in a reported path (folders named after them are common).
PATH_IDENTIFIERS = ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID",
                    "SeriesInstanceUID", "SOPInstanceUID", "InstitutionName")
# SOP classes that carry pixel data but are not images to train on.
NON_IMAGE_WITH_PIXELS = {
    "RTDoseStorage": "RT Dose grid",
    "SegmentationStorage": "DICOM SEG segmentation object",
    "EncapsulatedPDFStorage": "encapsulated PDF",
    "RawDataStorage": "raw data",
}
# ImageLaterality / Laterality defined terms (left, right, both, unpaired).
LATERALITIES = ("L", "R", "B", "U")

# SNOMED codes (SRT and SCT) and code meanings for mammography views in ViewCodeSequence.
VIEW_CODES = {
    "R-10242": "CC", "399162004": "CC", "R-10226": "MLO", "399368009": "MLO",
    "R-10224": "ML", "399260004": "ML", "R-10228": "LM", "399352003": "LM",
    "R-1024A": "XCCL", "399192003": "XCCL", "R-1024B": "XCCM", "399101009": "XCCM",
    "R-10230": "LMO", "399099002": "LMO", "R-10244": "FB", "R-40AAA": "SIO",
}
# Searched in this order: the longer meanings first ("cranio-caudal exaggerated lateral" holds "cranio-caudal").
VIEW_MEANINGS = [("cranio-caudal exaggerated lateral", "XCCL"), ("cranio-caudal exaggerated medial", "XCCM"),
                 ("medio-lateral oblique", "MLO"), ("latero-medial oblique", "LMO"), ("cranio-caudal", "CC"),
                 ("medio-lateral", "ML"), ("latero-medial", "LM")]

_CODE_STRING = re.compile(r"[A-Z0-9 _]*")
CODE_STRING_MAX = 16


def code_string(v: object) -> str:
    """A DICOM code string as copied to the manifest: upper-case letters, digits, space, ``_``; ≤ 16.

    These columns (modality, body part, view) are copied from headers, so they are held to the
    code-string alphabet: free text (which could hold anything, a name included) does not pass."""
    v = str(v or "").strip().upper()
    return v if len(v) <= CODE_STRING_MAX and _CODE_STRING.fullmatch(v) else ""
