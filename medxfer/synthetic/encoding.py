"""Transfer syntaxes: encoding pixel data, saving Part-10 files, re-encoding existing files.

Every file is saved as a proper Part-10 file (128-byte preamble, ``DICM``, file meta information)
that :func:`pydicom.dcmread` reads back and whose ``pixel_array`` decodes.

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

import io
import tempfile
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from .dicom import PathLike, format_ds

__all__ = ["LOSSLESS_SYNTAXES", "compress_file", "save_dataset"]

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
        ds.LossyImageCompressionRatio = format_ds(round(raw_size / max(len(ds.PixelData), 1), 2))


def save_dataset(ds: Dataset, path: PathLike, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
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
    return save_dataset(ds, dst, ts)
