"""Synthetic, valid DICOM Part-10 files for tests, benchmarks and demos (a fake "PACS export").

Every writer produces a proper file (128-byte preamble, ``DICM``, file meta information with
MediaStorageSOPClassUID / MediaStorageSOPInstanceUID / TransferSyntaxUID / ImplementationClassUID)
that :func:`pydicom.dcmread` reads back and whose ``pixel_array`` decodes.

Determinism: every function takes an optional ``rng`` (default ``np.random.default_rng(0)``).
UIDs come from :func:`pydicom.uid.generate_uid` with ``entropy_srcs`` built from rng draws, the
patient and the output path, so the same rng and location reproduce the same UIDs while two calls
writing to different places never share UIDs.

Encoders used per transfer syntax (see :func:`compress_file`):

* RLE Lossless: pydicom ``Dataset.compress`` (first available of its gdcm / pylibjpeg-rle / pydicom plugins)
* JPEG 2000 lossless, JPEG 2000 (lossy, PSNR 60 dB): pydicom ``Dataset.compress`` with pylibjpeg-openjpeg;
  GDCM when openjpeg refuses (images under ~32 px per side)
* JPEG-LS lossless / near-lossless: pydicom when pyjpegls is installed, else GDCM
* JPEG Lossless SV1 (process 14), JPEG Lossless (process 14), JPEG Extended 12-bit: GDCM
* JPEG Baseline 8-bit: Pillow (quality 95, 4:2:2 for colour -> YBR_FULL_422) + ``pydicom.encaps.encapsulate``
* Deflated Explicit VR Little Endian: pydicom's own writer
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    PYDICOM_IMPLEMENTATION_UID,
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalIntraOralXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MRImageStorage,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

PathLike = str | Path

__all__ = [
    "FakePatient",
    "SeriesInfo",
    "InstanceInfo",
    "ExportInfo",
    "new_patient",
    "ct_series",
    "radiograph",
    "mammogram",
    "us_cine",
    "enhanced_mr",
    "compress_file",
    "sr_document",
    "presentation_state",
    "broken_files",
    "write_pacs_export",
    "LOSSLESS_SYNTAXES",
]

#: Transfer syntaxes :func:`compress_file` re-encodes bit-exactly.
LOSSLESS_SYNTAXES = (
    RLELossless,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLosslessSV1,
    JPEGLossless,
    DeflatedExplicitVRLittleEndian,
)
_LOSSY_METHOD = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGExtended12Bit: "ISO_10918_1",
    JPEG2000: "ISO_15444_1",
    JPEGLSNearLossless: "ISO_14495_1",
}
_GDCM_SYNTAX = {  # pydicom UID -> gdcm.TransferSyntax attribute name
    JPEGLSLossless: "JPEGLSLossless",
    JPEGLSNearLossless: "JPEGLSNearLossless",
    JPEGLosslessSV1: "JPEGLosslessProcess14_1",
    JPEGLossless: "JPEGLosslessProcess14",
    JPEGExtended12Bit: "JPEGExtendedProcess2_4",
    JPEG2000Lossless: "JPEG2000Lossless",  # fallback only (openjpeg via pydicom fails below ~32 px)
    JPEG2000: "JPEG2000",  # fallback only
}
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
_XR_SOP = {
    "DX": DigitalXRayImageStorageForPresentation,
    "CR": ComputedRadiographyImageStorage,
    "PX": DigitalXRayImageStorageForPresentation,
    "IO": DigitalIntraOralXRayImageStorageForPresentation,
    "MG": DigitalMammographyXRayImageStorageForPresentation,
}
#: MG view -> (SNOMED-RT code, meaning) used in ViewCodeSequence (CodingSchemeDesignator "SRT").
MG_VIEW_CODES = {
    "CC": ("R-10242", "cranio-caudal"),
    "MLO": ("R-10226", "medio-lateral oblique"),
    "ML": ("R-10224", "medio-lateral"),
    "LM": ("R-10228", "latero-medial"),
}
_GIVEN = ("ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF", "HOTEL",
          "INDIA", "JULIET", "KILO", "LIMA", "MIKE", "NOVEMBER", "OSCAR", "PAPA")
_INSTITUTIONS = ("General Hospital", "St. Elsewhere Medical Center",
                 "Riverside Community Clinic", "Northgate University Hospital")
_REFERRING = ("HOUSE^GREGORY", "QUINN^MICHAELA", "KILDARE^JAMES", "GREY^MEREDITH")


# --------------------------------------------------------------------------- data classes
@dataclass
class FakePatient:
    """Fake patient/visit identifiers; :meth:`identifiers` lists what de-identification must remove."""

    name: str = "DOE^JANE"
    patient_id: str = "PID-0001"
    birth_date: str = "19700101"
    sex: str = "F"
    institution: str = "General Hospital"
    accession: str = "ACC0001"
    referring_physician: str = "HOUSE^GREGORY"

    def identifiers(self) -> list[str]:
        """Every identifying string written into headers: names (whole and parts), id, birth date,
        accession, institution, referring physician."""
        vals = [self.name, *self.name.split("^"), self.patient_id, self.birth_date, self.accession,
                self.institution, self.referring_physician, *self.referring_physician.split("^")]
        return list(dict.fromkeys(v for v in vals if v))


@dataclass
class SeriesInfo:
    """What :func:`ct_series` wrote. ``paths``: slices in spatial order, then the localizer (if any).

    ``sop_uids`` / ``positions`` / ``instance_numbers`` cover the slices only (spatial order)."""

    paths: list[Path]
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    volume_hu: np.ndarray
    localizer_path: Path | None = None
    positions: np.ndarray | None = None
    instance_numbers: list[int | None] = field(default_factory=list)


@dataclass
class InstanceInfo:
    """One written instance. ``image``: presentation values; ``stored``: the decoded stored values."""

    path: Path
    sop_uid: str
    series_uid: str
    study_uid: str
    image: np.ndarray | None = None
    stored: np.ndarray | None = None


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


# --------------------------------------------------------------------------- small helpers
def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return np.random.default_rng(0) if rng is None else rng


def _uid(rng: np.random.Generator, *parts: Any) -> UID:
    """A UID from generate_uid, reproducible for the same rng state and parts."""
    salt = [str(int(v)) for v in rng.integers(0, 2**63 - 1, size=2)]
    return generate_uid(entropy_srcs=[*salt, *(str(p) for p in parts)])


def _ds(v: float) -> str:
    """Format a number as a DS string (<= 16 chars)."""
    s = f"{float(v):.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def _code(value: str, scheme: str, meaning: str) -> Dataset:
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


def _shuffled_order(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation that is neither the identity nor its reverse (when n allows)."""
    if n < 2:
        return np.arange(n)
    if n == 2:
        return np.array([1, 0])
    while True:
        p = rng.permutation(n)
        if not (np.array_equal(p, np.arange(n)) or np.array_equal(p, np.arange(n)[::-1])):
            return p


def _header(patient: FakePatient, *, sop_class: str, sop_uid: str, modality: str, study_uid: str,
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


def _set_window(ds: Dataset, center: float, width: float) -> None:
    ds.WindowCenter, ds.WindowWidth = _ds(center), _ds(width)


# --------------------------------------------------------------------------- encoding / saving
def _gdcm_encode(ds: Dataset, ts: UID) -> None:
    """Replace ds's native PixelData by GDCM's encapsulated encoding in `ts` (headers stay pydicom's)."""
    try:
        import gdcm
    except ImportError as exc:  # pragma: no cover - gdcm is an install requirement
        alt = {JPEGLSLossless: " or pyjpegls", JPEGLSNearLossless: " or pyjpegls",
               JPEG2000Lossless: " or pylibjpeg-openjpeg", JPEG2000: " or pylibjpeg-openjpeg"}.get(ts, "")
        raise RuntimeError(f"Encoding {ts.name} needs GDCM (python-gdcm){alt}, which is not installed") from exc
    with tempfile.TemporaryDirectory() as td:
        src, dst = Path(td) / "in.dcm", Path(td) / "out.dcm"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(src, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(src))
        if not reader.Read():
            raise RuntimeError(f"GDCM could not read the file to encode as {ts.name}")
        image = reader.GetImage()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, _GDCM_SYNTAX[ts])))
        if ts == JPEGExtended12Bit:
            if ds.BitsStored > 12:
                raise ValueError(f"JPEG Extended 12-bit needs BitsStored <= 12, not {ds.BitsStored}")
            if ds.BitsAllocated == 16:  # GDCM takes the JPEG precision from BitsAllocated: 12-bit samples
                pf = image.GetPixelFormat()  # live in 16-bit containers, so declare 12 to get precision 12
                pf.SetBitsAllocated(12)
                image.SetPixelFormat(pf)
            codec = gdcm.JPEGCodec()
            codec.SetLossless(False)
            codec.SetQuality(95)
            change.SetUserCodec(codec)
        elif ts == JPEGLSNearLossless:
            codec = gdcm.JPEGLSCodec()
            codec.SetLossless(False)
            codec.SetLossyError(2)
            change.SetUserCodec(codec)
        change.SetInput(image)
        if not change.Change():
            raise RuntimeError(f"GDCM failed to encode {ts.name} (BitsStored={ds.BitsStored})")
        writer = gdcm.ImageWriter()
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        writer.SetFileName(str(dst))
        if not writer.Write():
            raise RuntimeError(f"GDCM failed to write {ts.name}")
        out = pydicom.dcmread(dst)
    ds.PixelData = out.PixelData
    for kw in ("PhotometricInterpretation", "PlanarConfiguration"):
        if kw in out:
            setattr(ds, kw, out[kw].value)


def _pil_jpeg_encode(ds: Dataset, quality: int = 95) -> None:
    """8-bit JPEG baseline per frame with Pillow; colour is stored as YBR_FULL_422 (4:2:2)."""
    from PIL import Image

    if ds.BitsAllocated != 8:
        raise ValueError(f"JPEG Baseline 8-bit needs 8-bit pixels, not BitsAllocated={ds.BitsAllocated}")
    arr = ds.pixel_array
    n = int(ds.get("NumberOfFrames", 1) or 1)
    arr = arr[None] if n == 1 else arr
    rgb = ds.SamplesPerPixel == 3
    frames = []
    for frame in arr:
        buf = io.BytesIO()
        Image.fromarray(frame, "RGB" if rgb else "L").save(
            buf, format="JPEG", quality=quality, subsampling=1 if rgb else 0)  # 1 = 4:2:2
        frames.append(buf.getvalue())
    ds.PixelData = encapsulate(frames)
    if rgb:
        ds.PhotometricInterpretation, ds.PlanarConfiguration = "YBR_FULL_422", 0


def _encode(ds: Dataset, ts: UID) -> None:
    """Encode ds's native PixelData to the compressed transfer syntax `ts` in place."""
    from pydicom.pixels import get_encoder

    raw_size = len(ds.PixelData)
    if ts == JPEGBaseline8Bit:
        _pil_jpeg_encode(ds)
    elif ts in (RLELossless, JPEG2000Lossless, JPEG2000) or (
        ts in (JPEGLSLossless, JPEGLSNearLossless) and get_encoder(ts).is_available
    ):
        kwargs: dict[str, Any] = {"j2k_psnr": [60]} if ts == JPEG2000 else {}
        if ts == JPEGLSNearLossless:
            kwargs["jls_error"] = 2
        try:
            ds.compress(ts, generate_instance_uid=False, **kwargs)
        except Exception as exc:  # e.g. openjpeg's default 6 resolution levels need >= 32 px per side
            if ts not in _GDCM_SYNTAX:
                raise
            try:
                _gdcm_encode(ds, ts)
            except Exception as exc2:
                raise RuntimeError(f"Cannot encode {ts.name}: pydicom: {exc}; GDCM: {exc2}") from exc2
    elif ts in _GDCM_SYNTAX:
        _gdcm_encode(ds, ts)
    else:
        raise ValueError(f"No encoder for transfer syntax {ts} ({ts.name})")
    elem = ds["PixelData"]
    elem.VR, elem.is_undefined_length = "OB", True
    ds.file_meta.TransferSyntaxUID = ts
    if ts in _LOSSY_METHOD:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = _LOSSY_METHOD[ts]
        ds.LossyImageCompressionRatio = _ds(round(raw_size / max(len(ds.PixelData), 1), 2))


def _save(ds: Dataset, path: PathLike, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    """Write ds as a Part-10 file in `transfer_syntax`, encoding pixel data when it is compressed."""
    path, ts = Path(path), UID(transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ts.is_compressed and "PixelData" in ds:
        _encode(ds, ts)
    elif ts.is_compressed:
        raise ValueError(f"{ts.name} needs pixel data")
    elif ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        raise ValueError(f"Unsupported transfer syntax for writing: {ts} ({ts.name})")
    else:
        ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- patients
def new_patient(i: int, rng: np.random.Generator | None = None) -> FakePatient:
    """Distinct, realistic fake identifiers for patient number `i` (name TESTPAT^<GIVEN><i>, MRN<7 digits>, ...)."""
    rng = _rng(rng)
    birth = date(1935, 1, 1) + timedelta(days=i * 367 + int(rng.integers(0, 360)))
    return FakePatient(
        name=f"TESTPAT^{_GIVEN[i % len(_GIVEN)]}{i}",
        patient_id=f"MRN{1_000_000 + i * 7919 + int(rng.integers(0, 7919)):07d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex="FM"[i % 2],
        institution=_INSTITUTIONS[i % len(_INSTITUTIONS)],
        accession=f"ACC{i:04d}{int(rng.integers(0, 10_000)):04d}",
        referring_physician=_REFERRING[i % len(_REFERRING)],
    )


# --------------------------------------------------------------------------- CT / MR series
def _phantom(n: int, rows: int, cols: int, mr: bool) -> np.ndarray:
    """HU = -1000 background, a central disk of 10*k + 40 in slice k, a 2000 HU top-left marker (MR: +1000)."""
    yy, xx = np.mgrid[:rows, :cols]
    disk = (yy - (rows - 1) / 2) ** 2 + (xx - (cols - 1) / 2) ** 2 <= (0.35 * min(rows, cols)) ** 2
    vol = np.full((n, rows, cols), -1000.0)
    vol[:, disk] = (10.0 * np.arange(n) + 40.0)[:, None]
    m = max(2, min(rows, cols) // 10)
    vol[:, :m, :m] = 2000.0
    return vol + 1000.0 if mr else vol


def _to_stored(values: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, int]:
    """Stored integers (uint16, or int16 when negative) and BitsStored (12 when it fits, else 16)."""
    stored = np.rint((np.asarray(values, dtype=np.float64) - intercept) / slope)
    lo, hi = stored.min(), stored.max()
    if lo >= 0:
        if hi > 65535:
            raise ValueError(f"stored values up to {hi} do not fit in 16 bits")
        return stored.astype(np.uint16), 12 if hi <= 4095 else 16
    if lo < -32768 or hi > 32767:
        raise ValueError(f"stored values [{lo}, {hi}] do not fit in int16")
    return stored.astype(np.int16), 12 if (lo >= -2048 and hi <= 2047) else 16


def _modality_attrs(ds: Dataset, mr: bool, slope: float, intercept: float, thickness: float) -> None:
    if mr:
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType, ds.RepetitionTime, ds.EchoTime = "2D", "500", "15"
        ds.EchoTrainLength, ds.MagneticFieldStrength, ds.ImagingFrequency = 1, "1.5", "63.87"
        ds.SpacingBetweenSlices = _ds(thickness)
        _set_window(ds, 1500, 3000)
    else:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds(intercept), _ds(slope), "HU"
        ds.KVP, ds.ConvolutionKernel, ds.PatientPosition = "120", "B30f", "HFS"
        _set_window(ds, 40, 400)


def ct_series(out_dir: PathLike, patient: FakePatient, *, n_slices: int = 20, rows: int = 64, cols: int = 64,
              spacing: tuple[float, float] = (0.7, 0.7), slice_thickness: float = 2.5,
              orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
              origin: tuple[float, float, float] = (-100.0, -100.0, -50.0), shuffle_instance_numbers: bool = True,
              add_localizer: bool = False, missing_instance_number: bool = False, modality: str = "CT",
              rng: np.random.Generator | None = None, transfer_syntax: str = ExplicitVRLittleEndian,
              volume: np.ndarray | None = None, rescale: tuple[float, float] = (1.0, -1024.0),
              filename_pattern: str = "{i:04d}.dcm", study_uid: str | None = None,
              series_number: int = 2) -> SeriesInfo:
    """Write a single-frame CT (or MR: no rescale, MR Image Storage) series, one file per slice.

    Slice k sits at ``origin + k * slice_thickness * normal`` (normal = row x col of `orientation`).
    Pixels: `volume` (n_slices, rows, cols) in HU (MR: stored units), else :func:`_phantom`.
    InstanceNumber is a permutation of the spatial order when `shuffle_instance_numbers`; file names are
    ``filename_pattern.format(i=<instance number>, k=<spatial index>, uid=<SOPInstanceUID>)``.
    `add_localizer` adds one sagittal LOCALIZER in the same series (paths[-1]).
    """
    rng, out_dir, mr = _rng(rng), Path(out_dir), modality.upper() == "MR"
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    hu = _phantom(n_slices, rows, cols, mr) if volume is None else np.asarray(volume, dtype=np.float64)
    if hu.shape != (n_slices, rows, cols):
        raise ValueError(f"volume shape {hu.shape} != {(n_slices, rows, cols)}")
    slope_s, icpt_s = ("1", "0") if mr else (_ds(rescale[0]), _ds(rescale[1]))
    slope, intercept = float(slope_s), float(icpt_s)
    stored, bits = _to_stored(hu, slope, intercept)
    study_uid = study_uid or _uid(rng, "study", patient.patient_id, out_dir.resolve())
    series_uid, for_uid = _uid(rng, "series", study_uid, out_dir.resolve()), _uid(rng, "for", study_uid)
    order = _shuffled_order(n_slices, rng) if shuffle_instance_numbers else np.arange(n_slices)
    sop_class = MRImageStorage if mr else CTImageStorage
    iop = [_ds(v) for v in (*row, *col)]
    paths, sops, positions, numbers = [], [], [], []

    def slice_ds(sop: str, inst: int, image_type: str) -> Dataset:
        ds = _header(patient, sop_class=sop_class, sop_uid=sop, modality=modality.upper(), study_uid=study_uid,
                     series_uid=series_uid, series_number=series_number,
                     series_description=f"{'T1 SE' if mr else 'CT'} {slice_thickness:g}mm",
                     body_part="CHEST", instance_number=None if missing_instance_number else inst)
        ds.ImageType = ["ORIGINAL", "PRIMARY", image_type]
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = for_uid, ""
        ds.SliceThickness = _ds(slice_thickness)
        _modality_attrs(ds, mr, slope, intercept, slice_thickness)
        return ds

    for k in range(n_slices):
        pos = np.asarray(origin, float) + k * slice_thickness * normal
        sop, inst = _uid(rng, "sop", series_uid, k), int(order[k]) + 1
        ds = slice_ds(sop, inst, "AXIAL")
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [_ds(v) for v in pos], iop
        ds.PixelSpacing, ds.SliceLocation = [_ds(v) for v in spacing], _ds(float(pos @ normal))
        ds.set_pixel_data(stored[k], "MONOCHROME2", bits, generate_instance_uid=False)
        paths.append(_save(ds, out_dir / filename_pattern.format(i=inst, k=k, uid=sop), transfer_syntax))
        sops.append(str(sop))
        positions.append(pos)
        numbers.append(None if missing_instance_number else inst)
    loc_path = None
    if add_localizer:
        sop, inst = _uid(rng, "localizer", series_uid), n_slices + 1
        ds = slice_ds(sop, inst, "LOCALIZER")
        loc_hu = hu.mean(axis=2)[::-1]  # side projection: rows = -z, cols = +y (for the default orientation)
        top = np.asarray(origin, float) + (n_slices - 1) * slice_thickness * normal
        ds.ImagePositionPatient = [_ds(v) for v in (top[0] + cols * spacing[1] / 2, top[1], top[2])]
        ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
        ds.PixelSpacing = [_ds(slice_thickness), _ds(spacing[0])]
        loc_stored, loc_bits = _to_stored(loc_hu, slope, intercept)
        ds.set_pixel_data(loc_stored, "MONOCHROME2", loc_bits, generate_instance_uid=False)
        loc_path = _save(ds, out_dir / filename_pattern.format(i=inst, k=n_slices, uid=sop), transfer_syntax)
        paths.append(loc_path)
    return SeriesInfo(paths=paths, study_uid=str(study_uid), series_uid=str(series_uid), sop_uids=sops,
                      volume_hu=stored.astype(np.float64) * slope + intercept, localizer_path=loc_path,
                      positions=np.asarray(positions), instance_numbers=numbers)


# --------------------------------------------------------------------------- projection radiography
def _xray_pattern(rows: int, cols: int, maxval: int) -> np.ndarray:
    """Chest-like presentation image (higher = brighter) with a full-bright top-left marker."""
    yy, xx = np.mgrid[0:1:rows * 1j, 0:1:cols * 1j]
    img = 0.25 + 0.35 * yy
    for cx in (0.3, 0.7):  # lungs (dark)
        img[((yy - 0.42) / 0.3) ** 2 + ((xx - cx) / 0.16) ** 2 <= 1] = 0.1
    img[((yy - 0.6) / 0.15) ** 2 + ((xx - 0.6) / 0.12) ** 2 <= 1] = 0.55  # heart, on the image's right
    img[np.abs(xx - 0.5) < 0.04] = 0.75  # spine
    m = max(2, min(rows, cols) // 16)
    img[:m, :m] = 1.0
    return np.rint(img * maxval).astype(np.int64)


def _mammo_pattern(rows: int, cols: int, maxval: int, laterality: str) -> np.ndarray:
    """Breast half-ellipse against the chest wall (left edge for L, right edge for R) + top-left marker."""
    yy, xx = np.mgrid[0:1:rows * 1j, 0:1:cols * 1j]
    wall = xx if laterality.upper() == "L" else 1 - xx
    breast = ((yy - 0.5) / 0.42) ** 2 + (wall / 0.75) ** 2 <= 1
    img = np.where(breast, 0.35 + 0.3 * np.exp(-((yy - 0.5) ** 2 + (wall - 0.3) ** 2) / 0.02), 0.02)
    m = max(2, min(rows, cols) // 16)
    img[:m, :m] = 1.0
    return np.rint(img * maxval).astype(np.int64)


def _patient_orientation(modality: str, view: str | None, laterality: str | None) -> list[str]:
    if modality == "MG":
        left = (laterality or "L").upper() == "L"
        col = ("FR" if left else "FL") if view and "ML" in view.upper() else ("R" if left else "L")
        return ["A" if left else "P", col]
    if view and view.upper() in ("LL", "RL", "LAT"):
        return ["P" if view.upper() == "LL" else "A", "F"]
    return ["L", "F"]


def _voi_lut_item(bits_stored: int) -> Dataset:
    n = 2**bits_stored
    x = np.arange(n, dtype=np.float64)
    lut = np.rint((n - 1) / (1 + np.exp(-(x - n / 2) / (n / 8)))).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [n if n < 65536 else 0, 0, min(max(bits_stored, 8), 16)])  # LUTDescriptor
    item.add_new(0x00283006, "US", lut.tolist())  # LUTData
    item.LUTExplanation = "SIGMOID DEFAULT"
    return item


def radiograph(path: PathLike, patient: FakePatient, *, modality: str = "DX", rows: int = 256, cols: int = 320,
               monochrome1: bool = False, view_position: str | None = "PA", image_laterality: str | None = None,
               body_part: str = "CHEST", pixel_spacing: tuple[float, float] = (0.15, 0.15), bits_stored: int = 12,
               window: tuple[float, float] = (2048, 4096), voi_lut: bool = False,
               transfer_syntax: str = ExplicitVRLittleEndian, image: np.ndarray | None = None,
               study_uid: str | None = None, series_uid: str | None = None, rng: np.random.Generator | None = None,
               extra: dict[str, Any] | None = None) -> InstanceInfo:
    """Write one 2D projection X-ray (DX, CR, PX panoramic, IO intra-oral or MG; SOP class per modality).

    `image` (rows, cols) holds presentation values (higher = brighter) in [0, 2**bits_stored - 1];
    MONOCHROME1 stores ``maxval - image``. ImagerPixelSpacing always, PixelSpacing for CR too.
    `extra` keyword -> value pairs are set last (overriding anything).
    """
    rng, path, modality = _rng(rng), Path(path), modality.upper()
    if modality not in _XR_SOP:
        raise ValueError(f"modality must be one of {sorted(_XR_SOP)}, not {modality!r}")
    maxval = 2**bits_stored - 1
    img = _xray_pattern(rows, cols, maxval) if image is None else np.asarray(image)
    if img.ndim != 2 or img.min() < 0 or img.max() > maxval:
        raise ValueError(f"image must be 2D with values in [0, {maxval}]")
    rows, cols = img.shape
    stored = (maxval - img if monochrome1 else img).astype(np.uint8 if bits_stored <= 8 else np.uint16)
    study_uid = study_uid or _uid(rng, "study", patient.patient_id, path.resolve())
    series_uid = series_uid or _uid(rng, "series", study_uid, path.resolve())
    sop = _uid(rng, "sop", series_uid, path.resolve())
    ds = _header(patient, sop_class=_XR_SOP[modality], sop_uid=sop, modality=modality, study_uid=study_uid,
                 series_uid=series_uid, series_number=1, body_part=body_part,
                 series_description=" ".join(v for v in (body_part, view_position, image_laterality) if v))
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if modality != "CR":
        ds.PresentationIntentType, ds.DetectorType = "FOR PRESENTATION", "SCINTILLATOR"
        ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    else:
        ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
    ds.ImagerPixelSpacing = [_ds(v) for v in pixel_spacing]
    ds.KVP = {"DX": "110", "CR": "110", "PX": "70", "IO": "65", "MG": "28"}[modality]
    ds.Exposure, ds.DistanceSourceToDetector = "4", "1800"
    if view_position:
        ds.ViewPosition = view_position
    if image_laterality:
        ds.ImageLaterality = image_laterality
    ds.PatientOrientation = _patient_orientation(modality, view_position, image_laterality)
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    _set_window(ds, *window)
    if voi_lut:
        ds.VOILUTSequence = [_voi_lut_item(bits_stored)]
    ds.set_pixel_data(stored, "MONOCHROME1" if monochrome1 else "MONOCHROME2", bits_stored,
                      generate_instance_uid=False)
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    _save(ds, path, transfer_syntax)
    return InstanceInfo(path, str(sop), str(series_uid), str(study_uid), image=img, stored=stored)


def mammogram(path: PathLike, patient: FakePatient, *, view: str = "CC", laterality: str = "L",
              use_sequences: bool = False, **kw: Any) -> InstanceInfo:
    """Write a Digital Mammography X-Ray (For Presentation) image; other keywords go to :func:`radiograph`.

    ``use_sequences=False``: ViewPosition + ImageLaterality. ``use_sequences=True``: both are left out;
    the view goes in ViewCodeSequence (SNOMED-RT, CodingSchemeDesignator "SRT": R-10242 cranio-caudal,
    R-10226 medio-lateral oblique, R-10224 medio-lateral, R-10228 latero-medial) and the laterality in
    SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0].FrameLaterality, as Enhanced MG does.
    """
    view, laterality = view.upper(), laterality.upper()
    if use_sequences and view not in MG_VIEW_CODES:
        raise ValueError(f"view must be one of {sorted(MG_VIEW_CODES)} with use_sequences")
    kw.setdefault("rows", 320)
    kw.setdefault("cols", 256)
    kw.setdefault("pixel_spacing", (0.07, 0.07))
    kw.setdefault("window", (1800, 3600))
    if kw.get("image") is None:
        kw["image"] = _mammo_pattern(kw["rows"], kw["cols"], 2 ** kw.get("bits_stored", 12) - 1, laterality)
    extra = dict(kw.pop("extra", None) or {})
    if use_sequences:
        code, meaning = MG_VIEW_CODES[view]
        view_item = _code(code, "SRT", meaning)
        view_item.ViewModifierCodeSequence = []
        anatomy = Dataset()
        anatomy.AnatomicRegionSequence = [_code("T-04000", "SRT", "Breast")]
        anatomy.FrameLaterality = laterality
        shared = Dataset()
        shared.FrameAnatomySequence = [anatomy]
        extra.update(ViewCodeSequence=[view_item], SharedFunctionalGroupsSequence=[shared])
    kw.setdefault("body_part", "BREAST")
    info = radiograph(path, patient, modality="MG", view_position=view, image_laterality=laterality,
                      extra=extra, **kw)
    if use_sequences:  # drop the plain attributes again (headers only; pixel data is left as encoded)
        ds = pydicom.dcmread(info.path)
        del ds.ViewPosition, ds.ImageLaterality
        ds.save_as(info.path, enforce_file_format=True)
    return info


# --------------------------------------------------------------------------- ultrasound
def _us_frames(frames: int, rows: int, cols: int, rgb: bool, rng: np.random.Generator) -> np.ndarray:
    """Sector-shaped speckle with a moving bright 'vessel' (and a colour-Doppler blob when rgb)."""
    yy, xx = np.mgrid[:rows, :cols].astype(np.float64)
    ang = np.arctan2(xx - cols / 2, yy + 1)
    rad = np.hypot(xx - cols / 2, yy + 1)
    sector = (np.abs(ang) < 0.6) & (rad < rows * 0.98)
    speckle = rng.rayleigh(0.35, size=((rows + 1) // 2, (cols + 1) // 2))
    speckle = np.kron(speckle, np.ones((2, 2)))[:rows, :cols]
    out = []
    for f in range(frames):
        cy, cx = rows * 0.55, cols * (0.35 + 0.3 * f / max(frames - 1, 1))
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 * rows * cols))
        gray = np.clip(sector * (60 + 90 * speckle + 100 * blob), 0, 255)
        gray[:3, :6] = 255  # orientation marker
        frame = np.repeat(gray[..., None], 3, axis=-1) if rgb else gray
        if rgb:
            doppler = sector & (blob > 0.5)
            frame[doppler] = [220, 30 + 10 * (f % 5), 40]
        out.append(frame)
    return np.rint(np.stack(out)).astype(np.uint8)


def us_cine(path: PathLike, patient: FakePatient, *, frames: int = 10, rows: int = 48, cols: int = 64,
            rgb: bool = True, transfer_syntax: str = ExplicitVRLittleEndian, frame_time_ms: float = 33.3,
            region_spacing_mm: tuple[float, float] = (0.2, 0.2),
            rng: np.random.Generator | None = None) -> InstanceInfo:
    """Write an Ultrasound Multi-frame cine (RGB, PlanarConfiguration 0, or MONOCHROME2).

    `region_spacing_mm` is (row/Y, column/X) spacing like PixelSpacing; the one ultrasound region
    covers the whole image with PhysicalDeltaY/X = spacing / 10 in cm (PhysicalUnits 3).

    ``transfer_syntax=JPEGBaseline8Bit`` encodes each frame with Pillow (quality 95) and stores
    YBR_FULL_422 (colour) in one fragment per frame. InstanceInfo.image: (frames, rows, cols[, 3]).
    """
    rng, path = _rng(rng), Path(path)
    img = _us_frames(frames, rows, cols, rgb, rng)
    study_uid = _uid(rng, "study", patient.patient_id, path.resolve())
    series_uid, sop = _uid(rng, "series", study_uid), _uid(rng, "sop", study_uid, path.resolve())
    ds = _header(patient, sop_class=UltrasoundMultiFrameImageStorage, sop_uid=sop, modality="US",
                 study_uid=study_uid, series_uid=series_uid, series_number=1, series_description="ABDOMEN CINE",
                 study_description="US ABDOMEN", body_part="ABDOMEN")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    ds.FrameTime, ds.FrameIncrementPointer = _ds(frame_time_ms), Tag(0x0018, 0x1063)
    ds.CineRate = ds.RecommendedDisplayFrameRate = int(round(1000 / frame_time_ms))
    ds.StartTrim, ds.StopTrim = 1, frames
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = cols - 1, rows - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX, region.PhysicalDeltaY = region_spacing_mm[1] / 10.0, region_spacing_mm[0] / 10.0
    ds.SequenceOfUltrasoundRegions = [region]
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    ds.set_pixel_data(img, "RGB" if rgb else "MONOCHROME2", 8, generate_instance_uid=False)
    ds.NumberOfFrames = frames
    _save(ds, path, transfer_syntax)
    return InstanceInfo(path, str(sop), str(series_uid), str(study_uid), image=img, stored=img)


# --------------------------------------------------------------------------- enhanced MR
def enhanced_mr(path: PathLike, patient: FakePatient, *, frames: int = 8, rows: int = 32, cols: int = 32,
                spacing: tuple[float, float] = (1.0, 1.0), slice_step: float = 3.0, shuffle_frames: bool = True,
                rng: np.random.Generator | None = None) -> InstanceInfo:
    """Write one Enhanced MR Image Storage file (axial stack along +z, functional groups per frame).

    Frames are stored in a shuffled spatial order when `shuffle_frames`; InstanceInfo.image is
    (frames, rows, cols) sorted along the normal, InstanceInfo.stored the frames in file order.
    """
    if slice_step <= 0:
        raise ValueError("slice_step must be > 0")
    rng, path = _rng(rng), Path(path)
    vol = _to_stored(_phantom(frames, rows, cols, mr=True), 1.0, 0.0)[0]
    perm = _shuffled_order(frames, rng) if shuffle_frames else np.arange(frames)  # file frame j = spatial perm[j]
    study_uid = _uid(rng, "study", patient.patient_id, path.resolve())
    series_uid, sop = _uid(rng, "series", study_uid), _uid(rng, "sop", study_uid, path.resolve())
    ds = _header(patient, sop_class=EnhancedMRImageStorage, sop_uid=sop, modality="MR", study_uid=study_uid,
                 series_uid=series_uid, series_number=3, series_description="T1 3D", body_part="HEAD",
                 study_description="MR BRAIN")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.PixelPresentation, ds.VolumetricProperties, ds.VolumeBasedCalculationTechnique = "MONOCHROME", "VOLUME", "NONE"
    ds.ComplexImageComponent, ds.AcquisitionContrast, ds.ContentQualification = "MAGNITUDE", "T1", "PRODUCT"
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.MagneticFieldStrength, ds.BurnedInAnnotation, ds.LossyImageCompression = "1.5", "NO", "00"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = _uid(rng, "for", study_uid), ""
    dim_uid = _uid(rng, "dim", sop)
    org = Dataset()
    org.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = [org]
    ds.DimensionIndexSequence = []
    for pointer in (0x00209056, 0x00209057):  # StackID, InStackPositionNumber
        idx = Dataset()
        idx.DimensionOrganizationUID, idx.DimensionIndexPointer = dim_uid, Tag(pointer)
        idx.FunctionalGroupPointer = Tag(0x00209111)  # FrameContentSequence
        ds.DimensionIndexSequence.append(idx)
    measures, orient, voi, shared = Dataset(), Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [_ds(v) for v in spacing], _ds(slice_step)
    measures.SpacingBetweenSlices = _ds(slice_step)
    orient.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    voi.WindowCenter, voi.WindowWidth = "1500", "3000"
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orient]
    shared.FrameVOILUTSequence = [voi]
    ds.SharedFunctionalGroupsSequence = [shared]
    origin = np.array([-cols * spacing[1] / 2, -rows * spacing[0] / 2, -frames * slice_step / 2])
    per_frame = []
    for k in perm:
        pos, content, item = Dataset(), Dataset(), Dataset()
        pos.ImagePositionPatient = [_ds(v) for v in origin + [0, 0, k * slice_step]]
        content.StackID, content.InStackPositionNumber = "1", int(k) + 1
        content.DimensionIndexValues = [1, int(k) + 1]
        item.PlanePositionSequence, item.FrameContentSequence = [pos], [content]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    stored = vol[perm]
    ds.set_pixel_data(stored, "MONOCHROME2", 12, generate_instance_uid=False)
    ds.NumberOfFrames = frames
    _save(ds, path)
    return InstanceInfo(path, str(sop), str(series_uid), str(study_uid), image=vol, stored=stored)


# --------------------------------------------------------------------------- re-encoding
def compress_file(src: PathLike, dst: PathLike, transfer_syntax: str) -> Path:
    """Re-encode `src` (any readable transfer syntax) into `dst` with `transfer_syntax`.

    Lossless syntaxes keep the SOPInstanceUID; lossy ones (JPEG baseline/extended, JPEG 2000,
    JPEG-LS near-lossless) get a new one and LossyImageCompression 01. Raises RuntimeError naming the
    missing encoder, ValueError for syntaxes without an encoder here.
    """
    ts = UID(transfer_syntax)
    ds = pydicom.dcmread(src)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    if ts in _LOSSY_METHOD:
        new = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), str(ts)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new
    return _save(ds, dst, ts)


# --------------------------------------------------------------------------- non-image objects
def sr_document(path: PathLike, patient: FakePatient, *, study_uid: str | None = None,
                rng: np.random.Generator | None = None) -> Path:
    """Write a Basic Text SR report (no pixel data)."""
    rng, path = _rng(rng), Path(path)
    study_uid = study_uid or _uid(rng, "study", patient.patient_id, path.resolve())
    series_uid, sop = _uid(rng, "series", study_uid, path.resolve()), _uid(rng, "sop", path.resolve())
    ds = _header(patient, sop_class=BasicTextSRStorage, sop_uid=sop, modality="SR", study_uid=study_uid,
                 series_uid=series_uid, series_number=99, series_description="Radiology Report")
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    ds.PerformedProcedureCodeSequence, ds.ReferencedPerformedProcedureStepSequence = [], []
    items = []
    for text in ("No acute abnormality.", "Lungs are clear. Heart size normal."):
        item = Dataset()
        item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", text
        item.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
        items.append(item)
    ds.ContentSequence = items
    return _save(ds, path)


def presentation_state(path: PathLike, patient: FakePatient, *, study_uid: str | None = None,
                       referenced: InstanceInfo | None = None, rng: np.random.Generator | None = None) -> Path:
    """Write a Grayscale Softcopy Presentation State (no pixels), referencing `referenced` or a made-up DX image."""
    rng, path = _rng(rng), Path(path)
    study_uid = study_uid or (referenced.study_uid if referenced else None) or _uid(
        rng, "study", patient.patient_id, path.resolve())
    series_uid, sop = _uid(rng, "series", study_uid, path.resolve()), _uid(rng, "sop", path.resolve())
    ds = _header(patient, sop_class=GrayscaleSoftcopyPresentationStateStorage, sop_uid=sop, modality="PR",
                 study_uid=study_uid, series_uid=series_uid, series_number=90, series_description="Presentation")
    ds.PresentationCreationDate, ds.PresentationCreationTime = ds.ContentDate, ds.ContentTime
    ds.ContentLabel, ds.ContentDescription, ds.ContentCreatorName = "WINDOW", "Soft tissue preset", ""
    ref_img = Dataset()
    ref_img.ReferencedSOPClassUID = DigitalXRayImageStorageForPresentation
    ref_img.ReferencedSOPInstanceUID = referenced.sop_uid if referenced else _uid(rng, "ref", sop)
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = referenced.series_uid if referenced else _uid(rng, "refser", sop)
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
    return _save(ds, path)


def broken_files(out_dir: PathLike) -> dict[str, Path]:
    """Write files an ingest must survive; returns {kind: path}.

    zero_byte (empty.dcm), not_dicom (notes.txt), truncated (a 64x64 CT slice missing the second half of
    its pixel data; the header reads, pixel_array fails), garbage_dcm (x.dcm, random bytes, no 'DICM'),
    bad_header (bad_header.dcm: valid preamble/meta, then an element length beyond the end of the file).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as td:
        info = ct_series(td, new_patient(999), n_slices=1, shuffle_instance_numbers=False)
        good = info.paths[0].read_bytes()
    pixel_bytes = 64 * 64 * 2
    paths = {
        "zero_byte": out / "empty.dcm",
        "not_dicom": out / "notes.txt",
        "truncated": out / "truncated.dcm",
        "garbage_dcm": out / "x.dcm",
        "bad_header": out / "bad_header.dcm",
    }
    paths["zero_byte"].write_bytes(b"")
    paths["not_dicom"].write_text("Export notes\nStudies burned by the night shift; ask PACS admin.\n")
    paths["truncated"].write_bytes(good[: len(good) - pixel_bytes // 2])
    garbage = bytearray(np.random.default_rng(1234).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    garbage[128:132] = b"XXXX"
    paths["garbage_dcm"].write_bytes(bytes(garbage))
    # Preamble, 'DICM' and valid file meta, then the first dataset element (SpecificCharacterSet, CS) claims
    # a length of 0xFFFF bytes, more than the whole file (pydicom 3.0 dcmread raises on it).
    bad = bytearray(good)
    at = bad.index(b"\x08\x00\x05\x00CS")
    bad[at + 6 : at + 8] = b"\xff\xff"
    paths["bad_header"].write_bytes(bytes(bad))
    return paths


# --------------------------------------------------------------------------- export
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
    rng, root = _rng(rng), Path(root)
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
            mg_study = _uid(rng, "mg-study", p.patient_id, stage.resolve())
            mg_series = _uid(rng, "mg-series", mg_study)
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


# --------------------------------------------------------------------------- a learnable dental cohort
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
    rng, root = _rng(rng), Path(root)
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
    from .ingest import ingest, split

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

    rng, root = _rng(rng), Path(root)
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


# --------------------------------------------------------------------------- mammography screening export
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
    rng, root = _rng(rng), Path(root)
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
    from .ingest import ingest, split

    root = Path(root)
    manifest = root / "cohort" / "manifest.csv"
    if manifest.exists():
        return manifest, None
    info = write_mammography_export(root / "export", n_patients=n_patients, rng=rng, labels_csv=root / "labels.csv")
    ingest(root / "export", root / "cohort", labels=root / "labels.csv", key="file", workers=workers)
    split(root / "cohort", folds, stratify="malignant", seed=0)
    return manifest, info
