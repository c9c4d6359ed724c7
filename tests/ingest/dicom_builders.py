"""Small DICOM files written with pydicom for the unit tests of scan, pixels and cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

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
