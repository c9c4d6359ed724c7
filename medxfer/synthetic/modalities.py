"""Image generators per modality: CT / MR series, projection radiographs (DX, CR, PX, IO, MG), US cines,
Enhanced MR. Each writes valid Part-10 files in the requested transfer syntax and returns what it
wrote (:class:`SeriesInfo`, :class:`InstanceInfo`) with the pixels it put in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalIntraOralXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from .determinism import make_uid, rng_or_default
from .dicom import PathLike, base_dataset, code_item, format_ds, set_window
from .encoding import save_dataset
from .patients import FakePatient

__all__ = ["MG_VIEW_CODES", "InstanceInfo", "SeriesInfo", "ct_series", "enhanced_mr", "mammogram", "radiograph",
           "us_cine"]

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
        ds.SpacingBetweenSlices = format_ds(thickness)
        set_window(ds, 1500, 3000)
    else:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = format_ds(intercept), format_ds(slope), "HU"
        ds.KVP, ds.ConvolutionKernel, ds.PatientPosition = "120", "B30f", "HFS"
        set_window(ds, 40, 400)


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
    rng, out_dir, mr = rng_or_default(rng), Path(out_dir), modality.upper() == "MR"
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    hu = _phantom(n_slices, rows, cols, mr) if volume is None else np.asarray(volume, dtype=np.float64)
    if hu.shape != (n_slices, rows, cols):
        raise ValueError(f"volume shape {hu.shape} != {(n_slices, rows, cols)}")
    slope_s, icpt_s = ("1", "0") if mr else (format_ds(rescale[0]), format_ds(rescale[1]))
    slope, intercept = float(slope_s), float(icpt_s)
    stored, bits = _to_stored(hu, slope, intercept)
    study_uid = study_uid or make_uid(rng, "study", patient.patient_id, out_dir.resolve())
    series_uid, for_uid = make_uid(rng, "series", study_uid, out_dir.resolve()), make_uid(rng, "for", study_uid)
    order = _shuffled_order(n_slices, rng) if shuffle_instance_numbers else np.arange(n_slices)
    sop_class = MRImageStorage if mr else CTImageStorage
    iop = [format_ds(v) for v in (*row, *col)]
    paths, sops, positions, numbers = [], [], [], []

    def slice_ds(sop: str, inst: int, image_type: str) -> Dataset:
        ds = base_dataset(patient, sop_class=sop_class, sop_uid=sop, modality=modality.upper(), study_uid=study_uid,
                          series_uid=series_uid, series_number=series_number,
                          series_description=f"{'T1 SE' if mr else 'CT'} {slice_thickness:g}mm",
                          body_part="CHEST", instance_number=None if missing_instance_number else inst)
        ds.ImageType = ["ORIGINAL", "PRIMARY", image_type]
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = for_uid, ""
        ds.SliceThickness = format_ds(slice_thickness)
        _modality_attrs(ds, mr, slope, intercept, slice_thickness)
        return ds

    for k in range(n_slices):
        pos = np.asarray(origin, float) + k * slice_thickness * normal
        sop, inst = make_uid(rng, "sop", series_uid, k), int(order[k]) + 1
        ds = slice_ds(sop, inst, "AXIAL")
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [format_ds(v) for v in pos], iop
        ds.PixelSpacing, ds.SliceLocation = [format_ds(v) for v in spacing], format_ds(float(pos @ normal))
        ds.set_pixel_data(stored[k], "MONOCHROME2", bits, generate_instance_uid=False)
        paths.append(save_dataset(ds, out_dir / filename_pattern.format(i=inst, k=k, uid=sop), transfer_syntax))
        sops.append(str(sop))
        positions.append(pos)
        numbers.append(None if missing_instance_number else inst)
    loc_path = None
    if add_localizer:
        sop, inst = make_uid(rng, "localizer", series_uid), n_slices + 1
        ds = slice_ds(sop, inst, "LOCALIZER")
        loc_hu = hu.mean(axis=2)[::-1]  # side projection: rows = -z, cols = +y (for the default orientation)
        top = np.asarray(origin, float) + (n_slices - 1) * slice_thickness * normal
        ds.ImagePositionPatient = [format_ds(v) for v in (top[0] + cols * spacing[1] / 2, top[1], top[2])]
        ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
        ds.PixelSpacing = [format_ds(slice_thickness), format_ds(spacing[0])]
        loc_stored, loc_bits = _to_stored(loc_hu, slope, intercept)
        ds.set_pixel_data(loc_stored, "MONOCHROME2", loc_bits, generate_instance_uid=False)
        loc_path = save_dataset(ds, out_dir / filename_pattern.format(i=inst, k=n_slices, uid=sop), transfer_syntax)
        paths.append(loc_path)
    return SeriesInfo(paths=paths, study_uid=str(study_uid), series_uid=str(series_uid), sop_uids=sops,
                      volume_hu=stored.astype(np.float64) * slope + intercept, localizer_path=loc_path,
                      positions=np.asarray(positions), instance_numbers=numbers)


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
    rng, path, modality = rng_or_default(rng), Path(path), modality.upper()
    if modality not in _XR_SOP:
        raise ValueError(f"modality must be one of {sorted(_XR_SOP)}, not {modality!r}")
    maxval = 2**bits_stored - 1
    img = _xray_pattern(rows, cols, maxval) if image is None else np.asarray(image)
    if img.ndim != 2 or img.min() < 0 or img.max() > maxval:
        raise ValueError(f"image must be 2D with values in [0, {maxval}]")
    rows, cols = img.shape
    stored = (maxval - img if monochrome1 else img).astype(np.uint8 if bits_stored <= 8 else np.uint16)
    study_uid = study_uid or make_uid(rng, "study", patient.patient_id, path.resolve())
    series_uid = series_uid or make_uid(rng, "series", study_uid, path.resolve())
    sop = make_uid(rng, "sop", series_uid, path.resolve())
    ds = base_dataset(patient, sop_class=_XR_SOP[modality], sop_uid=sop, modality=modality, study_uid=study_uid,
                      series_uid=series_uid, series_number=1, body_part=body_part,
                      series_description=" ".join(v for v in (body_part, view_position, image_laterality) if v))
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if modality != "CR":
        ds.PresentationIntentType, ds.DetectorType = "FOR PRESENTATION", "SCINTILLATOR"
        ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    else:
        ds.PixelSpacing = [format_ds(v) for v in pixel_spacing]
    ds.ImagerPixelSpacing = [format_ds(v) for v in pixel_spacing]
    ds.KVP = {"DX": "110", "CR": "110", "PX": "70", "IO": "65", "MG": "28"}[modality]
    ds.Exposure, ds.DistanceSourceToDetector = "4", "1800"
    if view_position:
        ds.ViewPosition = view_position
    if image_laterality:
        ds.ImageLaterality = image_laterality
    ds.PatientOrientation = _patient_orientation(modality, view_position, image_laterality)
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    set_window(ds, *window)
    if voi_lut:
        ds.VOILUTSequence = [_voi_lut_item(bits_stored)]
    ds.set_pixel_data(stored, "MONOCHROME1" if monochrome1 else "MONOCHROME2", bits_stored,
                      generate_instance_uid=False)
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    save_dataset(ds, path, transfer_syntax)
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
        view_item = code_item(code, "SRT", meaning)
        view_item.ViewModifierCodeSequence = []
        anatomy = Dataset()
        anatomy.AnatomicRegionSequence = [code_item("T-04000", "SRT", "Breast")]
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
    rng, path = rng_or_default(rng), Path(path)
    img = _us_frames(frames, rows, cols, rgb, rng)
    study_uid = make_uid(rng, "study", patient.patient_id, path.resolve())
    series_uid, sop = make_uid(rng, "series", study_uid), make_uid(rng, "sop", study_uid, path.resolve())
    ds = base_dataset(patient, sop_class=UltrasoundMultiFrameImageStorage, sop_uid=sop, modality="US",
                      study_uid=study_uid, series_uid=series_uid, series_number=1, series_description="ABDOMEN CINE",
                      study_description="US ABDOMEN", body_part="ABDOMEN")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    ds.FrameTime, ds.FrameIncrementPointer = format_ds(frame_time_ms), Tag(0x0018, 0x1063)
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
    save_dataset(ds, path, transfer_syntax)
    return InstanceInfo(path, str(sop), str(series_uid), str(study_uid), image=img, stored=img)


def enhanced_mr(path: PathLike, patient: FakePatient, *, frames: int = 8, rows: int = 32, cols: int = 32,
                spacing: tuple[float, float] = (1.0, 1.0), slice_step: float = 3.0, shuffle_frames: bool = True,
                rng: np.random.Generator | None = None) -> InstanceInfo:
    """Write one Enhanced MR Image Storage file (axial stack along +z, functional groups per frame).

    Frames are stored in a shuffled spatial order when `shuffle_frames`; InstanceInfo.image is
    (frames, rows, cols) sorted along the normal, InstanceInfo.stored the frames in file order.
    """
    if slice_step <= 0:
        raise ValueError("slice_step must be > 0")
    rng, path = rng_or_default(rng), Path(path)
    vol = _to_stored(_phantom(frames, rows, cols, mr=True), 1.0, 0.0)[0]
    perm = _shuffled_order(frames, rng) if shuffle_frames else np.arange(frames)  # file frame j = spatial perm[j]
    study_uid = make_uid(rng, "study", patient.patient_id, path.resolve())
    series_uid, sop = make_uid(rng, "series", study_uid), make_uid(rng, "sop", study_uid, path.resolve())
    ds = base_dataset(patient, sop_class=EnhancedMRImageStorage, sop_uid=sop, modality="MR", study_uid=study_uid,
                      series_uid=series_uid, series_number=3, series_description="T1 3D", body_part="HEAD",
                      study_description="MR BRAIN")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.PixelPresentation, ds.VolumetricProperties, ds.VolumeBasedCalculationTechnique = "MONOCHROME", "VOLUME", "NONE"
    ds.ComplexImageComponent, ds.AcquisitionContrast, ds.ContentQualification = "MAGNITUDE", "T1", "PRODUCT"
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.MagneticFieldStrength, ds.BurnedInAnnotation, ds.LossyImageCompression = "1.5", "NO", "00"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = make_uid(rng, "for", study_uid), ""
    dim_uid = make_uid(rng, "dim", sop)
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
    measures.PixelSpacing, measures.SliceThickness = [format_ds(v) for v in spacing], format_ds(slice_step)
    measures.SpacingBetweenSlices = format_ds(slice_step)
    orient.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    voi.WindowCenter, voi.WindowWidth = "1500", "3000"
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orient]
    shared.FrameVOILUTSequence = [voi]
    ds.SharedFunctionalGroupsSequence = [shared]
    origin = np.array([-cols * spacing[1] / 2, -rows * spacing[0] / 2, -frames * slice_step / 2])
    per_frame = []
    for k in perm:
        pos, content, item = Dataset(), Dataset(), Dataset()
        pos.ImagePositionPatient = [format_ds(v) for v in origin + [0, 0, k * slice_step]]
        content.StackID, content.InStackPositionNumber = "1", int(k) + 1
        content.DimensionIndexValues = [1, int(k) + 1]
        item.PlanePositionSequence, item.FrameContentSequence = [pos], [content]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    stored = vol[perm]
    ds.set_pixel_data(stored, "MONOCHROME2", 12, generate_instance_uid=False)
    ds.NumberOfFrames = frames
    save_dataset(ds, path)
    return InstanceInfo(path, str(sop), str(series_uid), str(study_uid), image=vol, stored=stored)
