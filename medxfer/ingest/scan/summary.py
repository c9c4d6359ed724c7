"""The de-identified summary of an image's header: what grouping and the pixel pass need, no identifier.

Patient, study, series and instance identities are kept as keyed digests
(:class:`~medxfer.ingest.deid.Pseudonymizer`); everything else is technical (geometry, pixel
format, rescale, window, view, laterality). Every text value kept is a DICOM defined term
(:func:`~medxfer.ingest.vocabulary.defined_term`): a value outside its vocabulary is kept as ``""``
and its attribute's keyword (never the value) is listed in ``unrecognised``, which the report counts.
"""
from __future__ import annotations

import struct
from typing import Any

import pydicom
from pydicom.uid import UID

from ..deid import Pseudonymizer
from ..vocabulary import (BODY_PARTS, BURNED_IN_VALUES, IMAGE_TYPES, LATERALITIES, MODALITIES,
                          PHOTOMETRIC_INTERPRETATIONS, RESCALE_TYPES, UNRECOGNISED, VIEW_CODES, VIEW_MEANINGS,
                          VIEW_POSITIONS, defined_term, registered_sop_class)
from .header import PIXEL_DATA_TAG_LE, FastHeader, float_values, number_value, text_value


def summarize(fh: FastHeader, pseudo: Pseudonymizer, ts: UID, pixel_pos: int, pixel_element: bytes) -> dict[str, Any]:
    """The de-identified header summary the later passes need. Identifiers only as keyed digests.

    ``pixel_pos`` and ``pixel_element`` (from :func:`~medxfer.ingest.scan.header.read_header`) give
    the offset and length of native little-endian pixel data, read later without a second parse."""
    ds = fh.ds
    meta = getattr(ds, "file_meta", None)
    ident = {
        "PatientID": str(fh.get("PatientID", "") or ""),
        "AccessionNumber": str(fh.get("AccessionNumber", "") or ""),
        "StudyInstanceUID": str(fh.get("StudyInstanceUID", "") or ""),
        "SeriesInstanceUID": str(fh.get("SeriesInstanceUID", "") or ""),
        "SOPInstanceUID": str(fh.get("SOPInstanceUID", "")
                              or (meta.get("MediaStorageSOPInstanceUID", "") if meta else "")),
    }
    keys = {kw: pseudo.digest(kw, v) for kw, v in ident.items() if v.strip()}
    # Patient identity: the ID; else name + birth date; else the study (each study its own patient).
    if ident["PatientID"].strip():
        patient_key = keys["PatientID"]
    elif str(fh.get("PatientName", "") or "").strip():
        name_and_birth = f"{text_value(fh.get('PatientName'))}|{text_value(fh.get('PatientBirthDate', ''))}"
        patient_key = pseudo.digest("PatientNameBirthDate", name_and_birth)
    else:
        patient_key = pseudo.digest("StudyInstanceUID", ident["StudyInstanceUID"] or ident["SOPInstanceUID"])
    study_key = keys.get("StudyInstanceUID") or pseudo.digest("StudyFallback", patient_key)
    series_key = keys.get("SeriesInstanceUID") or pseudo.digest("SeriesFallback", study_key + ident["SOPInstanceUID"])

    explicit = not ts.is_implicit_VR
    length = None
    header_len = 0
    native_le = ts in (pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian)
    if native_le and pixel_element[:4] == PIXEL_DATA_TAG_LE:
        if explicit:
            length = struct.unpack("<I", pixel_element[8:12])[0] if len(pixel_element) >= 12 else None
            header_len = 12
        else:
            length = struct.unpack("<I", pixel_element[4:8])[0] if len(pixel_element) >= 8 else None
            header_len = 8
    encapsulated = bool(ts.is_compressed)
    image_type = [x for x in (defined_term(v, IMAGE_TYPES) for v in text_value(fh.get("ImageType")).split("\\")) if x]
    unrecognised: list[str] = []

    def term(keyword: str, terms, value: object = None, **kw) -> str:
        """The defined term the header holds ("" when empty or unrecognised; the keyword noted then)."""
        v = defined_term(fh.get(keyword, "") if value is None else value, terms, **kw)
        if v is None:
            unrecognised.append(keyword)
        return v or ""

    frames = int(number_value(fh.get("NumberOfFrames"), 1) or 1)
    h: dict[str, Any] = {
        "keys": keys,
        "patient": patient_key, "study": study_key, "series": series_key,
        "sop": keys.get("SOPInstanceUID"),
        "modality": term("Modality", MODALITIES),
        "sop_class": registered_sop_class(fh.get("SOPClassUID", "")),
        "ts": str(ts),
        "rows": int(fh.get("Rows")), "cols": int(fh.get("Columns")), "frames": max(frames, 1),
        "spp": int(fh.get("SamplesPerPixel", 1) or 1),
        "photometric": photometric(fh) or "",  # classify skips a file whose value is not a defined term
        "bits_allocated": int(fh.get("BitsAllocated")),
        "bits_stored": int(fh.get("BitsStored") or fh.get("BitsAllocated")),
        "pixel_representation": int(fh.get("PixelRepresentation", 0) or 0),
        "planar": int(fh.get("PlanarConfiguration", 0) or 0),
        "slope": number_value(fh.get("RescaleSlope"), 1.0), "intercept": number_value(fh.get("RescaleIntercept"), 0.0),
        "rescale_type": _rescale_type(fh.get("RescaleType", ""), unrecognised),
        "window_center": number_value(fh.get("WindowCenter")), "window_width": number_value(fh.get("WindowWidth")),
        "voi_lut": "VOILUTSequence" in fh,
        "image_type": image_type,
        "localizer": "LOCALIZER" in image_type,
        "iop": float_values(fh.get("ImageOrientationPatient"), 6),
        "ipp": float_values(fh.get("ImagePositionPatient"), 3),
        "thickness": number_value(fh.get("SliceThickness")),
        "echo": number_value(fh.get("EchoNumbers")), "temporal": number_value(fh.get("TemporalPositionIdentifier")),
        "acquisition": number_value(fh.get("AcquisitionNumber")),
        "body_part": term("BodyPartExamined", BODY_PARTS, squeeze=True),
        "burned_in": term("BurnedInAnnotation", BURNED_IN_VALUES),  # "" = unknown
        "frame_time": number_value(fh.get("FrameTime")),
        "pixel_offset": pixel_pos + header_len if length is not None and not encapsulated else None,
        "pixel_length": length if not encapsulated else None,
        "encapsulated": encapsulated,
    }
    h["spacing"], h["spacing_source"] = pixel_spacing(fh)
    position = defined_term(fh.get("ViewPosition", ""), VIEW_POSITIONS)
    h["view"] = position or view_from_codes(fh)
    if position is None and not h["view"]:
        unrecognised.append("ViewPosition")
    h["laterality"] = term("ImageLaterality", LATERALITIES, laterality(fh))
    if frames > 1 and "PerFrameFunctionalGroupsSequence" in fh:
        _enhanced_geometry(ds, h, unrecognised)
    h["modality_lut"] = False
    if "ModalityLUTSequence" in fh and h["photometric"].startswith("MONOCHROME"):
        _modality_lut(fh, h, unrecognised)
    h["unrecognised"] = sorted(set(unrecognised))
    return h


def photometric(fh: FastHeader) -> str | None:
    """PhotometricInterpretation (MONOCHROME2 when missing); None when it is not a defined term."""
    return defined_term(fh.get("PhotometricInterpretation", "") or "MONOCHROME2", PHOTOMETRIC_INTERPRETATIONS)


def _modality_lut(fh: FastHeader, h: dict, unrecognised: list[str]) -> None:
    """A Modality LUT Sequence maps stored values to modality values in place of rescale (PS3.3 C.11.1).

    The pixel pass applies it (pydicom reads the table from the file); the summary records that it
    exists, the bits of its output (the value range for MONOCHROME1 inversion) and its type."""
    item = fh.get("ModalityLUTSequence")[0]
    descriptor = item.get("LUTDescriptor")
    bits = int(descriptor[2]) if isinstance(descriptor, (list, tuple, pydicom.multival.MultiValue)) \
        and len(descriptor) == 3 else 16
    h["modality_lut"], h["lut_bits"] = True, min(max(bits, 8), 16)
    h["slope"], h["intercept"] = 1.0, 0.0  # the LUT replaces rescale (pydicom applies the LUT, not both)
    h.pop("frame_rescale", None)
    h["rescale_type"] = _rescale_type(item.get("ModalityLUTType", ""), unrecognised)


def pixel_spacing(fh: FastHeader) -> tuple[list[float] | None, str]:
    """(row spacing, column spacing) in mm and where it came from (``none`` when no header gives one)."""
    for kw in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        v = float_values(fh.get(kw), 2)
        if v and all(x > 0 for x in v):
            return v, kw
    shared = fh.get("SharedFunctionalGroupsSequence")
    if shared:
        pm = shared[0].get("PixelMeasuresSequence")
        if pm:
            v = float_values(pm[0].get("PixelSpacing"), 2)
            if v and all(x > 0 for x in v):
                return v, "PixelMeasuresSequence"
    regions = fh.get("SequenceOfUltrasoundRegions")
    if regions:
        r = regions[0]
        dx, dy = number_value(r.get("PhysicalDeltaX")), number_value(r.get("PhysicalDeltaY"))
        ux, uy = r.get("PhysicalUnitsXDirection"), r.get("PhysicalUnitsYDirection")
        if dx and dy and ux == 3 and uy == 3:  # 3 = cm
            return [abs(dy) * 10.0, abs(dx) * 10.0], "UltrasoundRegions"
    return None, "none"


def view_from_codes(fh: FastHeader) -> str:
    """The mammography view (``CC``, ``MLO`` …) of the ViewCodeSequence: its code, else its meaning."""
    seq = fh.get("ViewCodeSequence")
    if seq:
        code = str(seq[0].get("CodeValue", "") or "")
        if code in VIEW_CODES:
            return VIEW_CODES[code]
        meaning = str(seq[0].get("CodeMeaning", "") or "").lower()
        for text, name in VIEW_MEANINGS:
            if text in meaning:
                return name
    return ""


def laterality(fh: FastHeader) -> str:
    """ImageLaterality, else Laterality, else the functional groups' FrameLaterality (raw: check it)."""
    for kw in ("ImageLaterality", "Laterality"):
        v = str(fh.get(kw, "") or "").strip().upper()
        if v:
            return v
    for seq_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = fh.get(seq_kw)
        if seq:
            fa = seq[0].get("FrameAnatomySequence")
            if fa and fa[0].get("FrameLaterality"):
                return str(fa[0].FrameLaterality).upper()
    return ""


def _enhanced_geometry(ds: pydicom.Dataset, h: dict, unrecognised: list[str]) -> None:
    """Per-frame positions (Enhanced CT/MR and friends) from the functional groups."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else None
    iop = None
    if shared_item is not None and shared_item.get("PlaneOrientationSequence"):
        iop = float_values(shared_item.PlaneOrientationSequence[0].get("ImageOrientationPatient"), 6)
    positions, orientations = [], []
    for item in ds.PerFrameFunctionalGroupsSequence:
        pp = item.get("PlanePositionSequence")
        positions.append(float_values(pp[0].get("ImagePositionPatient"), 3) if pp else None)
        po = item.get("PlaneOrientationSequence")
        orientations.append(float_values(po[0].get("ImageOrientationPatient"), 6) if po else iop)
        if not h.get("thickness"):
            pm = item.get("PixelMeasuresSequence")
            if pm:
                h["thickness"] = number_value(pm[0].get("SliceThickness"))
    # Enhanced objects keep rescale in PixelValueTransformationSequence: shared, or per frame
    # (then it may differ between frames, e.g. PET or scaled MR: kept per frame).
    pvt = shared_item.get("PixelValueTransformationSequence") if shared_item is not None else None
    if pvt:
        h["slope"] = number_value(pvt[0].get("RescaleSlope"), 1.0)
        h["intercept"] = number_value(pvt[0].get("RescaleIntercept"), 0.0)
        h["rescale_type"] = _rescale_type(pvt[0].get("RescaleType", ""), unrecognised)
    else:
        per_frame = []
        for item in ds.PerFrameFunctionalGroupsSequence:
            pvt = item.get("PixelValueTransformationSequence")
            per_frame.append([number_value(pvt[0].get("RescaleSlope"), 1.0),
                              number_value(pvt[0].get("RescaleIntercept"), 0.0)] if pvt else [1.0, 0.0])
        if per_frame:
            h["slope"], h["intercept"] = per_frame[0]
            first_pvt = ds.PerFrameFunctionalGroupsSequence[0].get("PixelValueTransformationSequence")
            h["rescale_type"] = _rescale_type(first_pvt[0].get("RescaleType", ""), unrecognised) if first_pvt else ""
            if any(fr != per_frame[0] for fr in per_frame):
                h["frame_rescale"] = per_frame
    if shared_item is not None and shared_item.get("PixelMeasuresSequence") and not h.get("thickness"):
        h["thickness"] = number_value(shared_item.PixelMeasuresSequence[0].get("SliceThickness"))
    if all(p is not None for p in positions) and all(o is not None for o in orientations):
        h["frame_ipp"] = positions
        h["frame_iop"] = orientations
        h["iop"] = h["iop"] or orientations[0]


def _rescale_type(value: object, unrecognised: list[str]) -> str:
    """RescaleType / ModalityLUTType: a defined term, ``""`` (none: HU for CT), or ``unrecognised`` (not HU)."""
    v = defined_term(value, RESCALE_TYPES)
    if v is None:
        unrecognised.append("RescaleType")
        return UNRECOGNISED
    return v
