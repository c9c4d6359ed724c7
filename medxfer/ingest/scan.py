"""Walk a source folder and read every file's header once: classify it and keep a de-identified summary.

This is the first ingest pass (headers only, ``stop_before_pixels``); it runs in worker processes.
A :class:`FileRecord` holds no identifier: patient, study, series and instance identities are kept
as keyed digests (:class:`~medxfer.ingest.deid.Pseudonymizer`), everything else is technical
(geometry, pixel format, view, laterality) that the series grouping and the pixel pass need.
"""
from __future__ import annotations

import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from .deid import Pseudonymizer, path_tokens

# Modalities that are one 2D item per image (projection radiography and friends).
PROJECTION_MODALITIES = {"CR", "DX", "PX", "IO", "MG", "RF", "RG", "XA", "DR", "OP", "XC", "SC", "OT", "ES", "GM"}
# Identifiers that may be used to join labels; each is stored only as a keyed digest.
LABEL_KEYWORDS = ("PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
# SOP classes that carry pixel data but are not images to train on.
NON_IMAGE_WITH_PIXELS = {
    "RTDoseStorage": "RT Dose grid",
    "SegmentationStorage": "DICOM SEG segmentation object",
    "EncapsulatedPDFStorage": "encapsulated PDF",
    "RawDataStorage": "raw data",
}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Header values that must never show in a reported path (folders named after them are common).
PATH_IDENTIFIERS = ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID",
                    "SeriesInstanceUID", "SOPInstanceUID", "InstitutionName")
RASTER_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"P2": "PGM", b"P5": "PGM", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP"}

# SNOMED codes (SRT and SCT) and code meanings for mammography views in ViewCodeSequence.
_VIEW_CODES = {
    "R-10242": "CC", "399162004": "CC", "R-10226": "MLO", "399368009": "MLO",
    "R-10224": "ML", "399260004": "ML", "R-10228": "LM", "399352003": "LM",
    "R-1024A": "XCCL", "399192003": "XCCL", "R-1024B": "XCCM", "399101009": "XCCM",
    "R-10230": "LMO", "399099002": "LMO", "R-10244": "FB", "R-40AAA": "SIO",
}
_VIEW_MEANINGS = [("cranio-caudal exaggerated lateral", "XCCL"), ("cranio-caudal exaggerated medial", "XCCM"),
                  ("medio-lateral oblique", "MLO"), ("latero-medial oblique", "LMO"), ("cranio-caudal", "CC"),
                  ("medio-lateral", "ML"), ("latero-medial", "LM")]


_CHARSET_VR = {"PN", "LO", "SH", "ST", "LT", "UT", "UC"}
_BINARY_VR = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "AT": "I"}


class FastHeader:
    """Read element values straight from pydicom's raw elements.

    pydicom converts an element on first access through its hook machinery (~25 µs each); the
    header summary reads ~50 elements per file, which made the header pass three times slower
    than ``dcmread`` itself. Plain text and binary numeric VRs are decoded here; sequences and
    anything unusual fall back to pydicom. Text is decoded as latin-1 (identifiers are only hashed).
    """

    def __init__(self, ds):
        self.ds = ds
        implicit, little = ds.original_encoding
        self._endian = "<" if little in (True, None) else ">"
        self._encodings: list[str] | None = None
        charset = self.get("SpecificCharacterSet")
        if charset and charset not in ("ISO_IR 6", "ISO_IR 100"):
            try:
                self._encodings = pydicom.charset.convert_encodings(charset if isinstance(charset, list) else [charset])
            except Exception:
                self._encodings = None

    def __contains__(self, keyword: str) -> bool:
        return self.get(keyword) not in (None, "", [])

    def get(self, keyword: str, default=None):
        tag = _tag(keyword)
        try:
            elem = self.ds.get_item(tag)
        except (KeyError, ValueError):
            elem = None
        if elem is None:
            return default
        if not isinstance(elem, pydicom.dataelem.RawDataElement):
            value = elem.value
            return default if value is None else value
        vr = elem.VR or pydicom.datadict.dictionary_VR(tag)
        raw = elem.value
        if raw is None or len(raw) == 0:
            return default
        if vr in _BINARY_VR:
            fmt = _BINARY_VR[vr]
            n = len(raw) // struct.calcsize(fmt)
            vals = struct.unpack(f"{self._endian}{n}{fmt}", raw[: n * struct.calcsize(fmt)])
            return vals[0] if n == 1 else list(vals)
        if vr in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "US or SS", "OB or OW", "US or OW"):
            return self.ds.get(keyword, default)  # pydicom's own conversion
        if self._encodings and vr in _CHARSET_VR:  # names in UTF-8, GB18030, JIS …
            text = pydicom.charset.decode_bytes(raw, self._encodings, {0x5C, 0x5E, 0x3D} if vr == "PN" else {0x5C})
        else:
            text = raw.decode("latin-1")
        parts = text.split("\\")
        parts = [p.strip(" \x00") for p in parts]
        return parts[0] if len(parts) == 1 else parts


_TAG_CACHE: dict[str, int] = {}


def _tag(keyword: str) -> int:
    tag = _TAG_CACHE.get(keyword)
    if tag is None:
        tag = _TAG_CACHE[keyword] = pydicom.datadict.tag_for_keyword(keyword)
    return tag


@dataclass
class FileRecord:
    """What the header pass learned about one file. ``kind`` is one of
    ``dicom`` (an image), ``nifti``, ``raster`` (PNG/JPEG/PGM/TIFF), or ``skip`` (with ``reason``)."""

    path: str  # relative to SRC, POSIX separators
    size: int
    mtime_ns: int
    kind: str
    reason: str | None = None
    category: str | None = None  # machine-readable reason: empty, not_image, unreadable, non_image, ...
    header: dict[str, Any] = field(default_factory=dict)
    id_tokens: list[str] = field(default_factory=list)  # keyed digests of identifiers to hide in paths

    def to_json(self) -> dict:
        return dict(vars(self))  # fields are JSON-native; asdict's deep copy is slow at 100k files

    @classmethod
    def from_json(cls, d: dict) -> "FileRecord":
        return cls(**d)


@dataclass
class Walk:
    files: list[str]  # every regular file to ingest, relative, sorted
    excluded: dict[str, str]  # relative path -> reason (files we saw but must not ingest, folders we could not list)


def walk(src: Path, outputs: tuple[Path, ...] = ()) -> Walk:
    """Every file under ``src``, following folder links once (a link loop is not walked twice).

    Files inside a medxfer output folder (``outputs``, or any folder holding ``.medxfer/index.json``:
    an earlier OUT placed inside SRC) are listed as excluded, never ingested; a folder that cannot
    be listed is reported as excluded too.
    """
    files: list[str] = []
    excluded: dict[str, str] = {}
    seen: set[tuple[int, int]] = set()
    output_roots = [o.relative_to(src).as_posix() for o in outputs if o.is_relative_to(src) and o != src]

    def onerror(err: OSError) -> None:
        rel = os.path.relpath(err.filename, src) if err.filename else "?"
        excluded[Path(rel).as_posix() + "/"] = f"cannot list folder: {err.strerror or type(err).__name__}"

    for root, dirs, names in os.walk(src, followlinks=True, onerror=onerror):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:  # a link back to a folder already walked
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        rel_root = Path(os.path.relpath(root, src)).as_posix()
        if (Path(root) / STATE_MARK).is_file():
            output_roots.append(rel_root)
        inside_output = any(o == "." or rel_root == o or rel_root.startswith(o + "/") for o in output_roots)
        for name in names:
            rel = f"{rel_root}/{name}" if rel_root != "." else name
            if inside_output:
                excluded[rel] = "inside a medxfer output folder (the cache, manifest or report of an ingest)"
            else:
                files.append(rel)
    return Walk(sorted(files), excluded)


STATE_MARK = ".medxfer/index.json"


def read_file_record(src: Path, rel: str, pseudo: Pseudonymizer) -> FileRecord:
    """Classify one file and read its header; never raises for a bad file."""
    full = src / rel
    try:
        st = full.stat()
    except OSError as exc:
        return FileRecord(rel, 0, 0, "skip", f"cannot read file: {exc.strerror}", "unreadable")
    rec = FileRecord(rel, st.st_size, st.st_mtime_ns, "skip")
    if st.st_size == 0:
        rec.reason, rec.category = "empty file (0 bytes)", "empty"
        return rec
    try:
        with open(full, "rb") as f:
            head = f.read(132)
    except OSError as exc:
        rec.reason, rec.category = f"cannot read file: {exc.strerror}", "unreadable"
        return rec
    lower = rel.lower()
    if head[128:132] == b"DICM" or _looks_like_raw_dicom(head):
        return _read_dicom(full, rec, pseudo, has_preamble=head[128:132] == b"DICM")
    if lower.endswith(NIFTI_SUFFIXES):
        rec.kind = "nifti"
        _path_identity(rec, pseudo)
        return rec
    for magic, fmt in RASTER_MAGIC.items():
        if head.startswith(magic):
            rec.kind = "raster"
            _path_identity(rec, pseudo)
            rec.header["format"] = fmt
            return rec
    rec.reason = "not an image file: no DICOM 'DICM' marker and not NIfTI, PNG, JPEG, PGM or TIFF"
    rec.category = "not_image"
    return rec


_BIDS_SUBJECT = re.compile(r"(?:^|/)sub-([A-Za-z0-9]+)")


def _path_identity(rec: FileRecord, pseudo: Pseudonymizer) -> None:
    """Keyed identity of a file without DICOM headers; a BIDS ``sub-<label>`` (often an MRN) is hidden."""
    rec.header = {"path_key": pseudo.digest("FilePath", rec.path)}
    m = _BIDS_SUBJECT.search(rec.path)
    if m:
        rec.id_tokens = sorted(path_tokens({"BIDSSubject": m.group(1)}, pseudo))


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A DICOM dataset written without preamble/meta (old ACR-NEMA style): starts with group 0008 or 0002."""
    if len(head) < 8:
        return False
    group, elem = struct.unpack("<HH", head[:4])
    return group in (0x0002, 0x0008) and elem <= 0x0020


def _read_dicom(full: Path, rec: FileRecord, pseudo: Pseudonymizer, *, has_preamble: bool) -> FileRecord:
    try:
        with warnings.catch_warnings(), open(full, "rb") as f:
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=not has_preamble)
            pixel_pos = f.tell()
            pixel_element = f.read(12)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, struct.error, OverflowError) as exc:
        rec.reason, rec.category = f"unreadable DICOM header: {describe_error(exc)}", "unreadable"
        return rec
    except Exception as exc:  # pydicom raises a wide variety on corrupt input; classify, never crash
        rec.reason, rec.category = f"unreadable DICOM header: {describe_error(exc)}", "unreadable"
        return rec
    try:
        fh = FastHeader(ds)
        rec.id_tokens = sorted(path_tokens({kw: _text(fh.get(kw, "")) for kw in PATH_IDENTIFIERS}, pseudo))
    except Exception:  # a broken identifier element: hide this file's own name rather than risk it
        rec.id_tokens = sorted(path_tokens({"FileName": rec.path.rsplit("/", 1)[-1]}, pseudo))
    try:
        return _classify_dicom(FastHeader(ds), rec, pseudo, pixel_pos, pixel_element, full)
    except Exception as exc:
        rec.kind, rec.header = "skip", {}
        rec.reason, rec.category = f"broken DICOM header: {describe_error(exc)}", "broken_header"
        return rec


_PIXEL_TAG_LE, _PIXEL_TAG_BE = b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"


def _has_pixel_data(ds, pixel_element: bytes, full: Path) -> bool:
    if pixel_element[:4] in (_PIXEL_TAG_LE, _PIXEL_TAG_BE):
        return True
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts == pydicom.uid.DeflatedExplicitVRLittleEndian:  # file offsets mean nothing in a deflated stream
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return "PixelData" in pydicom.dcmread(full, force=True)
    return False


def _classify_dicom(fh: FastHeader, rec: FileRecord, pseudo: Pseudonymizer, pixel_pos: int, pixel_element: bytes, full: Path) -> FileRecord:
    ds = fh.ds
    meta = getattr(ds, "file_meta", None)
    sop_class = UID(str(fh.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "")))
    # Only registered names: an unregistered value is free text and might hold anything.
    sop_name = sop_class.name if sop_class and sop_class.is_valid and sop_class.name != str(sop_class) else "an unregistered SOP class"
    if sop_class.keyword == "MediaStorageDirectoryStorage" or "DirectoryRecordSequence" in fh:
        n = len(ds.get("DirectoryRecordSequence", []))
        rec.kind, rec.category = "skip", "dicomdir"
        rec.reason = f"DICOMDIR index ({n} directory records, no pixels); the files it lists are ingested on their own"
        return rec
    if not _has_pixel_data(ds, pixel_element, full):
        rec.category = "non_image"
        if "Image Storage" in sop_name:
            rec.reason = f"{sop_name} file without pixel data (no PixelData element; e.g. a stripped or header-only copy)"
        else:
            rec.reason = f"non-image DICOM: {sop_name} (no pixel data)"
        return rec
    if sop_class.keyword in NON_IMAGE_WITH_PIXELS:
        rec.category = "non_image"
        rec.reason = f"non-image DICOM: {NON_IMAGE_WITH_PIXELS[sop_class.keyword]} ({sop_name}) is not ingested as an image"
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
    ts = _transfer_syntax(ds)
    if ts is None:
        rec.category, rec.reason = "broken_header", "broken header: no TransferSyntaxUID (0002,0010) and none could be inferred"
        return rec
    codec_problem = _codec_problem(ts)
    if codec_problem:
        rec.category, rec.reason = "no_decoder", codec_problem
        return rec
    rec.kind = "dicom"
    rec.header = _summarize(fh, pseudo, ts, pixel_pos, pixel_element)
    return rec


def _transfer_syntax(ds) -> UID | None:
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
    missing = "; ".join(f"{k}: {', '.join(v)}" if isinstance(v, list) else str(v)
                        for k, v in decoder.missing_dependencies.items()) if isinstance(
        decoder.missing_dependencies, dict) else ", ".join(decoder.missing_dependencies)
    return f"cannot decode {ts.name}: no decoder installed (needs {missing or 'pylibjpeg plugins or python-gdcm'})"


def _code_string(v: str) -> str:
    """A DICOM code string as copied to the manifest: upper-case letters, digits, space, ``_``; ≤ 16.

    These columns (modality, body part, view) are copied from headers, so they are held to the
    code-string alphabet: free text (which could hold anything, a name included) does not pass."""
    v = str(v or "").strip().upper()
    return v if len(v) <= 16 and re.fullmatch(r"[A-Z0-9 _]*", v) else ""


def _text(v) -> str:
    """A value as text; multi-valued as DICOM writes them (backslash-joined)."""
    if v is None:
        return ""
    if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(x) for x in v)
    return str(v)


def _floats(v, n: int) -> list[float] | None:
    try:
        vals = [float(x) for x in (v if isinstance(v, (list, tuple, pydicom.multival.MultiValue)) else [v])]
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n else None


def _first(v):
    if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
        return v[0] if len(v) else None
    return v


def _num(v, default=None):
    v = _first(v)
    try:
        return float(v) if v not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _summarize(fh: FastHeader, pseudo: Pseudonymizer, ts: UID, pixel_pos: int, pixel_element: bytes) -> dict[str, Any]:
    """The de-identified header summary the later passes need. Identifiers only as keyed digests."""
    ds = fh.ds
    meta = getattr(ds, "file_meta", None)
    ident = {
        "PatientID": str(fh.get("PatientID", "") or ""),
        "AccessionNumber": str(fh.get("AccessionNumber", "") or ""),
        "StudyInstanceUID": str(fh.get("StudyInstanceUID", "") or ""),
        "SeriesInstanceUID": str(fh.get("SeriesInstanceUID", "") or ""),
        "SOPInstanceUID": str(fh.get("SOPInstanceUID", "") or (meta.get("MediaStorageSOPInstanceUID", "") if meta else "")),
    }
    keys = {kw: pseudo.digest(kw, v) for kw, v in ident.items() if v.strip()}
    # Patient identity: the ID; else name + birth date; else the study (each study its own patient).
    if ident["PatientID"].strip():
        patient_key = keys["PatientID"]
    elif str(fh.get("PatientName", "") or "").strip():
        patient_key = pseudo.digest("PatientNameBirthDate", f"{_text(fh.get('PatientName'))}|{_text(fh.get('PatientBirthDate', ''))}")
    else:
        patient_key = pseudo.digest("StudyInstanceUID", ident["StudyInstanceUID"] or ident["SOPInstanceUID"])
    study_key = keys.get("StudyInstanceUID") or pseudo.digest("StudyFallback", patient_key)
    series_key = keys.get("SeriesInstanceUID") or pseudo.digest("SeriesFallback", study_key + ident["SOPInstanceUID"])

    explicit = not ts.is_implicit_VR
    length = None
    header_len = 0
    if ts in (pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian) and pixel_element[:4] == _PIXEL_TAG_LE:
        if explicit:
            length = struct.unpack("<I", pixel_element[8:12])[0] if len(pixel_element) >= 12 else None
            header_len = 12
        else:
            length = struct.unpack("<I", pixel_element[4:8])[0] if len(pixel_element) >= 8 else None
            header_len = 8
    encapsulated = bool(ts.is_compressed)
    image_type = [x.upper() for x in _text(fh.get("ImageType")).split("\\") if x]
    frames = int(_num(fh.get("NumberOfFrames"), 1) or 1)
    h: dict[str, Any] = {
        "keys": keys,
        "patient": patient_key, "study": study_key, "series": series_key,
        "sop": keys.get("SOPInstanceUID"),
        "modality": str(fh.get("Modality", "") or "").upper(),
        "sop_class": str(fh.get("SOPClassUID", "") or ""),
        "ts": str(ts),
        "rows": int(fh.get("Rows")), "cols": int(fh.get("Columns")), "frames": max(frames, 1),
        "spp": int(fh.get("SamplesPerPixel", 1) or 1),
        "photometric": str(fh.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper(),
        "bits_allocated": int(fh.get("BitsAllocated")),
        "bits_stored": int(fh.get("BitsStored") or fh.get("BitsAllocated")),
        "pixel_representation": int(fh.get("PixelRepresentation", 0) or 0),
        "planar": int(fh.get("PlanarConfiguration", 0) or 0),
        "slope": _num(fh.get("RescaleSlope"), 1.0), "intercept": _num(fh.get("RescaleIntercept"), 0.0),
        "rescale_type": str(fh.get("RescaleType", "") or ""),
        "window_center": _num(fh.get("WindowCenter")), "window_width": _num(fh.get("WindowWidth")),
        "voi_lut": "VOILUTSequence" in fh,
        "image_type": image_type,
        "localizer": "LOCALIZER" in image_type,
        "iop": _floats(fh.get("ImageOrientationPatient"), 6),
        "ipp": _floats(fh.get("ImagePositionPatient"), 3),
        "thickness": _num(fh.get("SliceThickness")),
        "echo": _num(fh.get("EchoNumbers")), "temporal": _num(fh.get("TemporalPositionIdentifier")),
        "acquisition": _num(fh.get("AcquisitionNumber")),
        "body_part": str(fh.get("BodyPartExamined", "") or "").upper(),
        "frame_time": _num(fh.get("FrameTime")),
        "pixel_offset": pixel_pos + header_len if length is not None and not encapsulated else None,
        "pixel_length": length if not encapsulated else None,
        "encapsulated": encapsulated,
    }
    h["spacing"], h["spacing_source"] = _pixel_spacing(fh)
    h["view"] = _code_string(_view(fh))
    laterality = _laterality(fh)
    h["laterality"] = laterality if laterality in ("L", "R", "B", "U") else ""
    h["modality"] = _code_string(h["modality"])
    h["body_part"] = _code_string(h["body_part"])
    if frames > 1 and "PerFrameFunctionalGroupsSequence" in fh:
        _enhanced_geometry(ds, h)
    return h


def _pixel_spacing(fh: FastHeader) -> tuple[list[float] | None, str]:
    """(row spacing, column spacing) in mm and where it came from."""
    for kw in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        v = _floats(fh.get(kw), 2)
        if v and all(x > 0 for x in v):
            return v, kw
    shared = fh.get("SharedFunctionalGroupsSequence")
    if shared:
        pm = shared[0].get("PixelMeasuresSequence")
        if pm:
            v = _floats(pm[0].get("PixelSpacing"), 2)
            if v and all(x > 0 for x in v):
                return v, "PixelMeasuresSequence"
    regions = fh.get("SequenceOfUltrasoundRegions")
    if regions:
        r = regions[0]
        dx, dy = _num(r.get("PhysicalDeltaX")), _num(r.get("PhysicalDeltaY"))
        ux, uy = r.get("PhysicalUnitsXDirection"), r.get("PhysicalUnitsYDirection")
        if dx and dy and ux == 3 and uy == 3:  # 3 = cm
            return [abs(dy) * 10.0, abs(dx) * 10.0], "UltrasoundRegions"
    return None, "none"


def _view(fh: FastHeader) -> str:
    vp = str(fh.get("ViewPosition", "") or "").strip().upper()
    if vp:
        return vp
    seq = fh.get("ViewCodeSequence")
    if seq:
        code = str(seq[0].get("CodeValue", "") or "")
        if code in _VIEW_CODES:
            return _VIEW_CODES[code]
        meaning = str(seq[0].get("CodeMeaning", "") or "").lower()
        for text, view in _VIEW_MEANINGS:
            if text in meaning:
                return view
    return ""


def _laterality(fh: FastHeader) -> str:
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


def _enhanced_geometry(ds, h: dict) -> None:
    """Per-frame positions (Enhanced CT/MR and friends) from the functional groups."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else None
    iop = None
    if shared_item is not None and shared_item.get("PlaneOrientationSequence"):
        iop = _floats(shared_item.PlaneOrientationSequence[0].get("ImageOrientationPatient"), 6)
    positions, orientations = [], []
    for item in ds.PerFrameFunctionalGroupsSequence:
        pp = item.get("PlanePositionSequence")
        positions.append(_floats(pp[0].get("ImagePositionPatient"), 3) if pp else None)
        po = item.get("PlaneOrientationSequence")
        orientations.append(_floats(po[0].get("ImageOrientationPatient"), 6) if po else iop)
        if not h.get("thickness"):
            pm = item.get("PixelMeasuresSequence")
            if pm:
                h["thickness"] = _num(pm[0].get("SliceThickness"))
    # Enhanced objects keep rescale in PixelValueTransformationSequence: shared, or per frame
    # (then it may differ between frames, e.g. PET or scaled MR: kept per frame).
    pvt = shared_item.get("PixelValueTransformationSequence") if shared_item is not None else None
    if pvt:
        h["slope"], h["intercept"] = _num(pvt[0].get("RescaleSlope"), 1.0), _num(pvt[0].get("RescaleIntercept"), 0.0)
        h["rescale_type"] = str(pvt[0].get("RescaleType", "") or "")
    else:
        per_frame = []
        for item in ds.PerFrameFunctionalGroupsSequence:
            pvt = item.get("PixelValueTransformationSequence")
            per_frame.append([_num(pvt[0].get("RescaleSlope"), 1.0), _num(pvt[0].get("RescaleIntercept"), 0.0)]
                             if pvt else [1.0, 0.0])
        if per_frame:
            h["slope"], h["intercept"] = per_frame[0]
            first_pvt = ds.PerFrameFunctionalGroupsSequence[0].get("PixelValueTransformationSequence")
            h["rescale_type"] = str(first_pvt[0].get("RescaleType", "") or "") if first_pvt else ""
            if any(fr != per_frame[0] for fr in per_frame):
                h["frame_rescale"] = per_frame
    if shared_item is not None and shared_item.get("PixelMeasuresSequence") and not h.get("thickness"):
        h["thickness"] = _num(shared_item.PixelMeasuresSequence[0].get("SliceThickness"))
    if all(p is not None for p in positions) and all(o is not None for o in orientations):
        h["frame_ipp"] = positions
        h["frame_iop"] = orientations
        h["iop"] = h["iop"] or orientations[0]


_QUOTED = re.compile(r"""(['"]).*?\1""")


def describe_error(exc: BaseException, *, scrub: bool | str = True) -> str:
    """A short, person-readable error text.

    ``scrub=True`` removes every quoted value: header-parsing errors quote element values, which
    may be identifiers. ``scrub="paths"`` (decoder errors, which quote codec names worth keeping)
    removes quoted values that look like paths or hold a ``^`` (a DICOM name)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    msg = " ".join(lines)  # decoder plugins list one failure per line: keep them all
    if scrub == "paths":
        msg = _QUOTED.sub(lambda m: "'…'" if any(c in m.group(0) for c in "/\\^") else m.group(0), msg)
        msg = re.sub(r"(/[^\s'\"]+)+", "…", msg)  # unquoted absolute paths too
    elif scrub:
        msg = _QUOTED.sub("'…'", msg)
    if len(msg) > 400:
        msg = msg[:400] + "…"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
