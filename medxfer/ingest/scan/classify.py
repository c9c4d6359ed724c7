"""Decide what a DICOM file is: an image to ingest, or a skip with a reason a person can act on.

A file is skipped when its header does not read, when it is a DICOMDIR, carries no pixel data or
non-image pixels (RT Dose, PDF …), when an element the pixel pass needs is missing or holds a
value outside its defined terms, or when no installed decoder handles its transfer syntax. An image
gets its header summary (:func:`~medxfer.ingest.scan.summary.summarize`). Nothing here raises for a
bad file, and no reason quotes a header value: only registered names and defined terms.
A DICOM SEG or RT structure set becomes a ``mask`` record (:func:`~medxfer.ingest.scan.references.mask_header`):
the mask pass (:mod:`medxfer.ingest.masks`) turns it into a label volume on its image item's grid.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
from pydicom.uid import UID

from ..deid import Pseudonymizer, path_tokens
from ..scrub import describe_error
from ..vocabulary import MASK_SOP_CLASSES, NON_IMAGE_WITH_PIXELS, PATH_IDENTIFIERS, registered_sop_class
from .header import PIXEL_DATA_TAG_BE, PIXEL_DATA_TAG_LE, FastHeader, read_header, text_value
from .record import FileRecord
from .references import mask_header
from .summary import photometric, summarize


def read_dicom_record(full: Path, rec: FileRecord, pseudo: Pseudonymizer, *, has_preamble: bool) -> FileRecord:
    """Read the header of the DICOM file ``full`` and classify it into ``rec`` (returned)."""
    try:
        raw = read_header(full, force=not has_preamble)
    except Exception as exc:  # pydicom raises a wide variety on corrupt input; classify, never crash
        rec.reason, rec.category = f"unreadable DICOM header: {describe_error(exc)}", "unreadable"
        return rec
    ds = raw.ds
    identifiers: dict[str, str] = {}
    try:
        fh: FastHeader | None = FastHeader(ds)
    except Exception:  # a broken SpecificCharacterSet
        fh = None
    broken = fh is None
    for kw in PATH_IDENTIFIERS if fh is not None else ():  # one broken element must not cost the others
        try:
            identifiers[kw] = text_value(fh.get(kw, ""))
        except Exception:
            broken = True
    if broken:  # and hide this file's own name rather than risk it
        identifiers["FileName"] = rec.path.rsplit("/", 1)[-1]
    rec.id_tokens = sorted(path_tokens(identifiers, pseudo))
    try:
        return _classify_dicom(FastHeader(ds), rec, pseudo, raw.pixel_pos, raw.pixel_element, full)
    except Exception as exc:
        rec.kind, rec.header = "skip", {}
        rec.reason, rec.category = f"broken DICOM header: {describe_error(exc)}", "broken_header"
        return rec


def _has_pixel_data(ds: pydicom.Dataset, pixel_element: bytes, full: Path) -> bool:
    if pixel_element[:4] in (PIXEL_DATA_TAG_LE, PIXEL_DATA_TAG_BE):
        return True
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts == pydicom.uid.DeflatedExplicitVRLittleEndian:  # file offsets mean nothing in a deflated stream
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return "PixelData" in pydicom.dcmread(full, force=True)
    return False


def _sop_class_name(sop_class: UID) -> str:
    """Only registered names: an unregistered value is free text and might hold anything."""
    if sop_class and sop_class.is_valid and sop_class.name != str(sop_class):
        return sop_class.name
    return "an unregistered SOP class"


def _classify_dicom(fh: FastHeader, rec: FileRecord, pseudo: Pseudonymizer, pixel_pos: int, pixel_element: bytes,
                    full: Path) -> FileRecord:
    ds = fh.ds
    meta = getattr(ds, "file_meta", None)
    sop_class = UID(str(fh.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "")))
    sop_name = _sop_class_name(sop_class)
    if sop_class.keyword == "MediaStorageDirectoryStorage" or "DirectoryRecordSequence" in fh:
        n = len(ds.get("DirectoryRecordSequence", []))
        rec.kind, rec.category = "skip", "dicomdir"
        rec.reason = f"DICOMDIR index ({n} directory records, no pixels); the files it lists are ingested on their own"
        return rec
    if sop_class.keyword in MASK_SOP_CLASSES:  # a SEG / RT structure set: a label volume in the mask pass
        rec.kind, rec.header = "mask", mask_header(ds, pseudo, MASK_SOP_CLASSES[sop_class.keyword])
        rec.header["sop_class"] = registered_sop_class(sop_class)
        return rec
    # non-image records name their SOP class (a record without it predates the mask pass: read again)
    rec.header = {"sop_class": registered_sop_class(sop_class)}
    if not _has_pixel_data(ds, pixel_element, full):
        rec.category = "non_image"
        if "Image Storage" in sop_name:
            rec.reason = (f"{sop_name} file without pixel data "
                          "(no PixelData element; e.g. a stripped or header-only copy)")
        else:
            rec.reason = f"non-image DICOM: {sop_name} (no pixel data)"
        return rec
    if sop_class.keyword in NON_IMAGE_WITH_PIXELS:
        rec.category = "non_image"
        rec.reason = (f"non-image DICOM: {NON_IMAGE_WITH_PIXELS[sop_class.keyword]} ({sop_name}) "
                      "is not ingested as an image")
        return rec
    if not fh.get("SOPInstanceUID") and not (meta and meta.get("MediaStorageSOPInstanceUID")):
        rec.category, rec.reason = "broken_header", "broken header: SOPInstanceUID (0008,0018) is missing"
        return rec
    for kw, tag in (("Rows", "(0028,0010)"), ("Columns", "(0028,0011)"), ("BitsAllocated", "(0028,0100)")):
        v = fh.get(kw)
        if v is None or (isinstance(v, int) and v <= 0):
            rec.category = "broken_header"
            rec.reason = f"broken header: {kw} {tag} is {'missing' if v is None else 'not positive'}"
            return rec
    if photometric(fh) is None:  # the decoder would quote the value in its error
        rec.category = "broken_header"
        rec.reason = "broken header: an unrecognised PhotometricInterpretation (0028,0004)"
        return rec
    ts = transfer_syntax(ds)
    if ts is None:
        rec.category = "broken_header"
        rec.reason = "broken header: no TransferSyntaxUID (0002,0010) and none could be inferred"
        return rec
    codec_problem = _codec_problem(ts)
    if codec_problem:
        rec.category, rec.reason = "no_decoder", codec_problem
        return rec
    rec.kind = "dicom"
    rec.header = summarize(fh, pseudo, ts, pixel_pos, pixel_element)
    return rec


def transfer_syntax(ds: pydicom.Dataset) -> UID | None:
    """The file meta's TransferSyntaxUID, else the encoding pydicom inferred (None when it could not)."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    # Raw datasets: pydicom inferred the encoding while reading.
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return None
    if implicit:
        return pydicom.uid.ImplicitVRLittleEndian
    return pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian


def _codec_problem(ts: UID) -> str | None:
    """A person-readable reason when no installed decoder handles ``ts`` (None if one does)."""
    if not ts.is_compressed:
        if ts.is_transfer_syntax or ts in (pydicom.uid.DeflatedExplicitVRLittleEndian,):
            return None
        return "unsupported transfer syntax (not a DICOM standard transfer syntax)"
    try:
        decoder = pydicom.pixels.get_decoder(ts)
    except NotImplementedError:
        return f"cannot decode {ts.name or ts}: pydicom has no decoder for this transfer syntax"
    if decoder.is_available:
        return None
    missing_deps = decoder.missing_dependencies
    if isinstance(missing_deps, dict):
        missing = "; ".join(f"{k}: {', '.join(v)}" if isinstance(v, list) else str(v) for k, v in missing_deps.items())
    else:
        missing = ", ".join(missing_deps)
    return f"cannot decode {ts.name}: no decoder installed (needs {missing or 'pylibjpeg plugins or python-gdcm'})"
