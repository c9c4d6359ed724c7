"""Small DICOM files written with pydicom for the unit tests of scan, pixels and cache."""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

PATIENT_ID, PATIENT_NAME, BIRTH_DATE = "MRN0042", "DOE^JANE", "19700101"
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def image_dataset(pixels: np.ndarray, *, modality: str = "CT", sop_class: str = CTImageStorage,
                  photometric: str = "MONOCHROME2", bits_stored: int | None = None, **attrs) -> pydicom.Dataset:
    """A single-frame grey image with identifiers, ready to save (explicit VR little endian)."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName, ds.PatientBirthDate = PATIENT_ID, PATIENT_NAME, BIRTH_DATE
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def write_image(path: Path, pixels: np.ndarray, **kw) -> Path:
    """Save :func:`image_dataset` to ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image_dataset(pixels, **kw).save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------- CT series, DICOM SEG, RT structure sets
def ct_series(folder: Path, n: int, *, rows: int = 24, cols: int = 32, spacing=(0.8, 0.6), z0: float = 10.0,
              step: float = 2.5, names: list[str] | None = None, **attrs) -> list[pydicom.Dataset]:
    """``n`` axial CT slices of one series saved under ``folder`` (``names`` per slice, default ``s<k>.dcm``),
    slice k at z = z0 + k * step; returned in slice (position) order. ``attrs`` go on every slice."""
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for k in range(n):
        px = (np.arange(rows * cols, dtype=np.int16).reshape(rows, cols) + 10 * k).astype(np.int16)
        ds = image_dataset(px, SeriesInstanceUID=series, StudyInstanceUID=study, FrameOfReferenceUID=frame,
                           ImagePositionPatient=[-50.0, -60.0, z0 + k * step], ImageOrientationPatient=AXIAL,
                           PixelSpacing=list(spacing), SliceThickness=abs(step) or 1.0, InstanceNumber=k + 1,
                           RescaleSlope=1, RescaleIntercept=-1024, SeriesNumber=1, StudyDate="20240102",
                           StudyTime="101010", AccessionNumber="ACC77881", ReferringPhysicianName="",
                           Manufacturer="test", PositionReferenceIndicator="", PatientSex="O", StudyID="1",
                           **attrs)
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / (names[k] if names else f"s{k}.dcm"), enforce_file_format=True)
        out.append(ds)
    return out


def seg_object(path: Path, sources: list[pydicom.Dataset], masks: np.ndarray, labels: list[str], *,
               fractional: bool = False, **attrs) -> pydicom.Dataset:
    """A highdicom SEG of ``masks`` ((slices, rows, cols, segments), in ``sources`` order; bool, or fractions in
    [0, 1] when ``fractional``) saved to ``path``; ``attrs`` are set on the SEG afterwards (e.g. another name)."""
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=label, segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for i, label in enumerate(labels)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=masks.astype(np.float32 if fractional else bool),
        segmentation_type="FRACTIONAL" if fractional else "BINARY", segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=99, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1")
    for k, v in attrs.items():
        setattr(seg, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return seg


def patient_points(ds: pydicom.Dataset, cols_rows: list[tuple[float, float]]) -> list[float]:
    """ContourData (x, y, z flattened) of points given as (column, row) pixel coordinates on slice ``ds``."""
    ipp = np.asarray(ds.ImagePositionPatient, float)
    row_dir, col_dir = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:],
                                                                                      float)
    sr, sc = (float(v) for v in ds.PixelSpacing)
    pts = [ipp + c * sc * row_dir + r * sr * col_dir for c, r in cols_rows]
    return [round(float(v), 4) for p in pts for v in p]


def rtstruct(path: Path, sources: list[pydicom.Dataset], rois: dict[str, list[tuple[list[float], str]]], *,
             contour_images: bool = False, **attrs) -> pydicom.Dataset:
    """An RT structure set on the series of ``sources``: ``rois`` maps an ROI name to its contours
    (ContourData, ContourGeometricType), ROI numbers 1.. in that order. ``contour_images`` names each
    contour's slice in ContourImageSequence (the nearest slice by z)."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    first = sources[0]
    ds.PatientID, ds.PatientName, ds.PatientBirthDate = first.PatientID, first.PatientName, first.PatientBirthDate
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = first.StudyInstanceUID, generate_uid(), "RTSTRUCT"
    ds.StructureSetLabel = "test"
    ref_series = pydicom.Dataset()
    ref_series.SeriesInstanceUID = first.SeriesInstanceUID
    ref_series.ContourImageSequence = []
    study = pydicom.Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = "1.2.840.10008.3.1.2.3.1", first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [ref_series]
    frame = pydicom.Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    zs = np.array([float(s.ImagePositionPatient[2]) for s in sources])
    for number, (name, contours) in enumerate(rois.items(), 1):
        roi = pydicom.Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, first.FrameOfReferenceUID
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        rc = pydicom.Dataset()
        rc.ReferencedROINumber, rc.ROIDisplayColor = number, [255, 0, 0]
        rc.ContourSequence = []
        for data, kind in contours:
            c = pydicom.Dataset()
            c.ContourGeometricType, c.NumberOfContourPoints, c.ContourData = kind, len(data) // 3, data
            if contour_images:
                src = sources[int(np.argmin(np.abs(zs - data[2])))]
                img = pydicom.Dataset()
                img.ReferencedSOPClassUID, img.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
                c.ContourImageSequence = [img]
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    for k, v in attrs.items():
        setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds
