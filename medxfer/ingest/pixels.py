"""Decode DICOM pixel data into presentation values.

* Native little-endian pixel data is read straight from the file at the offset the header pass
  found (one ``readinto``, no second parse): this is what keeps ingest at the speed of a bare
  ``dcmread`` loop. Everything else (JPEG, JPEG-LS, JPEG 2000, RLE, deflate, big endian) goes
  through pydicom's decoder plugins (pylibjpeg and its plugins, GDCM as fallback); YBR is
  converted to RGB and PALETTE COLOR expanded by pydicom.
* The modality transformation is applied: rescale slope/intercept (CT in HU), or the Modality LUT
  Sequence (0028,3000) through pydicom's ``apply_modality_lut`` (such files never take the native
  fast path, which reads stored values); MONOCHROME1 is inverted so that higher is brighter, over
  the range the header defines (not the image's own min/max).
* VOI (window or VOI LUT) is *recorded* for projection X-ray; applied only when asked.
* Error texts quote no header value: a quoted word survives only when it is a number, a decoder
  plugin, a DICOM element name or keyword, a transfer syntax name or a defined term.
"""
from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import UID

from ..core.errors import MedxferError
from .scrub import describe_error
from .vocabulary import PHOTOMETRIC_INTERPRETATIONS

NATIVE_LE = {pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian}


class PixelDecodeError(MedxferError):
    """A file whose pixel data cannot be turned into an array; the message is person-readable."""


@dataclass
class Presentation:
    """How stored values map to the values written to the cache (same for all slices of an item)."""

    dtype: np.dtype
    slope: float
    intercept: float
    rescaled: bool
    invert: bool  # MONOCHROME1
    lo: float  # value range after rescale, used for the MONOCHROME1 inversion
    hi: float
    lut: bool = False  # a Modality LUT Sequence gives the values (read_stored applies it)


def stored_range(h: dict) -> tuple[int, int]:
    bits = h["bits_stored"]
    if h["pixel_representation"]:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def is_colour(h: dict) -> bool:
    """RGB, YBR or palette pixel data (decoded to RGB; no rescale, no MONOCHROME1 inversion)."""
    return h.get("spp", 1) > 1 or str(h.get("photometric", "")).startswith(("RGB", "YBR", "PALETTE"))


def plan_presentation(headers: list[dict]) -> Presentation:
    """Pick output dtype and rescale for an item whose slices have these headers."""
    h0 = headers[0]
    if any(h.get("modality_lut") for h in headers) and not is_colour(h0):
        return _plan_lut(headers)
    slopes = {float(h.get("slope") or 1.0) for h in headers}
    intercepts = {float(h.get("intercept") or 0.0) for h in headers}
    rescaled = slopes != {1.0} or intercepts != {0.0}
    slope = next(iter(slopes)) if len(slopes) == 1 else None
    intercept = next(iter(intercepts)) if len(intercepts) == 1 else None
    s_lo, s_hi = stored_range(h0)
    invert = h0["photometric"] == "MONOCHROME1"
    if is_colour(h0):
        colour_dtype = np.dtype(np.uint8 if h0["bits_allocated"] <= 8 else np.uint16)
        return Presentation(colour_dtype, 1.0, 0.0, False, False, 0, 0)
    if slope is None or intercept is None:  # per-slice rescale differs (e.g. PET): float per slice
        lo = min(s_lo * s + i for s in slopes for i in intercepts)
        hi = max(s_hi * s + i for s in slopes for i in intercepts)
        return Presentation(np.dtype(np.float32), float("nan"), float("nan"), True, invert, lo, hi)
    lo, hi = sorted((s_lo * slope + intercept, s_hi * slope + intercept))
    if slope == 1.0 and float(intercept).is_integer():
        for dt in (np.uint8, np.int16, np.uint16, np.int32):
            info = np.iinfo(dt)
            if info.min <= lo and hi <= info.max and not (dt == np.uint8 and h0["bits_allocated"] > 8):
                return Presentation(np.dtype(dt), slope, intercept, rescaled, invert, lo, hi)
    return Presentation(np.dtype(np.float32), slope, intercept, rescaled, invert, lo, hi)


def _plan_lut(headers: list[dict]) -> Presentation:
    """Modality LUT output: unsigned values of the LUT's bits; slices mixing LUTs and rescale are float."""
    invert = headers[0]["photometric"] == "MONOCHROME1"
    bits = {h.get("lut_bits") for h in headers}
    if all(h.get("modality_lut") for h in headers) and len(bits) == 1:
        (b,) = bits
        return Presentation(np.dtype(np.uint8 if b <= 8 else np.uint16), 1.0, 0.0, True, invert, 0, (1 << b) - 1, True)
    ranges = [(0, (1 << h["lut_bits"]) - 1) if h.get("modality_lut") else
              sorted(v * float(h.get("slope") or 1.0) + float(h.get("intercept") or 0.0) for v in stored_range(h))
              for h in headers]  # present() takes each slice's own slope (1 for LUT slices)
    return Presentation(np.dtype(np.float32), float("nan"), float("nan"), True, invert,
                        min(r[0] for r in ranges), max(r[1] for r in ranges), True)


def _native_dtype(h: dict) -> np.dtype:
    return np.dtype(("<i" if h["pixel_representation"] else "<u") + str(h["bits_allocated"] // 8))


def read_native(path: Path, h: dict, out: np.ndarray | None = None) -> np.ndarray:
    """Stored values of a native little-endian single-sample file, read at the known offset.

    ``out`` (same item size, C-contiguous) receives the values in place; the stored dtype view of it
    is returned, so that a volume is filled without an intermediate copy per slice.
    """
    rows, cols, frames = h["rows"], h["cols"], h["frames"]
    dtype = _native_dtype(h)
    shape = (frames, rows, cols) if frames > 1 else (rows, cols)
    arr = out.view(dtype) if out is not None else np.empty(shape, dtype=dtype)
    expected = arr.nbytes
    if h.get("pixel_length") is not None and h["pixel_length"] < expected:
        raise PixelDecodeError(f"broken header: PixelData holds {h['pixel_length']} bytes, "
                               f"Rows x Columns x frames x BitsAllocated need {expected}")
    try:
        with open(path, "rb") as f:
            f.seek(h["pixel_offset"])
            n = f.readinto(memoryview(arr).cast("B"))
    except OSError as exc:  # vanished, unreadable medium: this file only
        raise PixelDecodeError(f"cannot read file: {exc.strerror or type(exc).__name__}") from None
    if n < expected:
        raise PixelDecodeError(f"truncated pixel data: {expected} bytes expected, the file holds {n}")
    ba, bs = h["bits_allocated"], h["bits_stored"]
    if bs < ba:
        if h["pixel_representation"]:  # sign-extend from bits_stored
            shift = ba - bs
            np.left_shift(arr, shift, out=arr)
            np.right_shift(arr, shift, out=arr)
        else:
            np.bitwise_and(arr, (1 << bs) - 1, out=arr)
    return arr


def reads_in_place(h: dict, p: "Presentation") -> bool:
    """True when stored values can be read straight into a ``p.dtype`` buffer and presented in place."""
    if not can_read_native(h) or p.dtype.kind not in "iu" or p.dtype.itemsize != h["bits_allocated"] // 8:
        return False
    s_lo, s_hi = stored_range(h)
    info = np.iinfo(p.dtype)
    return info.min <= s_lo and s_hi <= info.max  # same bits mean the same numbers in either dtype


def can_read_native(h: dict) -> bool:
    """True when the stored values are the file's bytes at the known offset, and are all there is to read
    (not with a Modality LUT Sequence: its table is applied by :func:`read_stored`)."""
    return (UID(h["ts"]) in NATIVE_LE and h["spp"] == 1 and h["bits_allocated"] in (8, 16, 32)
            and h.get("pixel_offset") is not None and h["photometric"].startswith("MONOCHROME")
            and not h.get("modality_lut"))


def read_stored(path: Path, h: dict) -> np.ndarray:
    """Stored values (or RGB for colour images) of one file: (rows, cols[, 3]) or (frames, rows, cols[, 3]).

    Where the header has a Modality LUT Sequence the LUT's output is returned instead (uint8/uint16);
    :func:`plan_presentation` plans for it (``Presentation.lut``)."""
    if can_read_native(h):
        return read_native(path, h)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
            arr = ds.pixel_array
            if h["photometric"] == "PALETTE COLOR":
                arr = pydicom.pixels.apply_color_lut(arr, ds)
    except PixelDecodeError:
        raise
    except OSError as exc:
        raise PixelDecodeError(f"cannot read file: {exc.strerror or type(exc).__name__}") from None
    except Exception as exc:  # decoder plugins raise many types; the file is reported, the run goes on
        ts = UID(h["ts"])
        raise PixelDecodeError(f"cannot decode pixel data ({ts.name or ts}): {decoder_error(exc)}") from exc
    if h.get("modality_lut"):
        arr = _apply_modality_lut(arr, ds, h)
    return arr


def _apply_modality_lut(arr: np.ndarray, ds: pydicom.Dataset, h: dict) -> np.ndarray:
    """pydicom's ``apply_modality_lut``; a LUT Descriptor whose bits pydicom has no dtype for (PS3.3 C.11.1.1.1
    allows 8 to 16) is read with 16-bit entries, as the LUT Data then holds them."""
    try:
        item = ds.ModalityLUTSequence[0]
        descriptor = [int(v) for v in item.LUTDescriptor]
        if descriptor[2] not in (8, 16):
            item.LUTDescriptor = [descriptor[0], descriptor[1], 16 if descriptor[2] > 8 else 8]
        return pydicom.pixels.apply_modality_lut(arr, ds)
    except Exception as exc:  # a broken table: this file is reported, the run goes on
        raise PixelDecodeError(f"broken Modality LUT Sequence (0028,3000): {decoder_error(exc)}") from exc


# Quoted words a decoder error may keep: plugin and package names (values are never among them).
DECODER_WORDS = frozenset({"gdcm", "pylibjpeg", "pillow", "pyjpegls", "pydicom", "numpy", "openjpeg", "libjpeg",
                           "rle", "python-gdcm", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"})
_QUOTED_WORD = re.compile(r"""(['"])(.*?)\1""")
_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?")


@functools.cache
def _dicom_words() -> tuple[frozenset[str], tuple[str, ...]]:
    """Element names and keywords of the DICOM dictionary; transfer syntax names."""
    names = {v[2] for v in pydicom.datadict.DicomDictionary.values()}
    names |= {v[4] for v in pydicom.datadict.DicomDictionary.values()}
    return frozenset(names), tuple(UID(ts).name for ts in pydicom.uid.AllTransferSyntaxes)


def _known_word(word: str) -> bool:
    names, ts_names = _dicom_words()
    return (bool(_NUMBER.fullmatch(word)) or word.lower() in DECODER_WORDS or word in PHOTOMETRIC_INTERPRETATIONS
            or word in names or (len(word) >= 3 and any(n.startswith(word) for n in ts_names)))


def decoder_error(exc: BaseException) -> str:
    """A decoder's error text for the report: paths dropped, and every quoted word that is not a known
    name (a number, a plugin, an element, a transfer syntax, a defined term) replaced by ``'…'``: decoders
    quote element values (a PhotometricInterpretation, a NumberOfFrames …), which may hold anything."""
    text = describe_error(exc, scrub="paths")
    return _QUOTED_WORD.sub(lambda m: m.group(0) if m.group(2) == "…" or _known_word(m.group(2)) else "'…'", text)


def present(arr: np.ndarray, p: Presentation, h: dict) -> np.ndarray:
    """Stored values -> presentation values (rescale, MONOCHROME1 inversion) in ``p.dtype``."""
    if p.dtype.kind == "f":
        slope = p.slope if p.slope == p.slope else float(h.get("slope") or 1.0)
        intercept = p.intercept if p.intercept == p.intercept else float(h.get("intercept") or 0.0)
        out = arr.astype(np.float32)
        if slope != 1.0:
            out *= slope
        if intercept:
            out += intercept
    else:
        out = arr.astype(p.dtype, copy=False)  # the stored buffer is ours: modifying it in place is fine
        if p.intercept:
            out += int(p.intercept)
    if p.invert:
        np.subtract(p.lo + p.hi, out, out=out, casting="unsafe")
    return out


def apply_voi(arr: np.ndarray, path: Path, h: dict, p: Presentation) -> np.ndarray:
    """Bake the first VOI LUT or window of the header into presentation values (MONOCHROME1-aware)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    if p.invert:  # VOI is defined on un-inverted modality values
        arr = np.subtract(np.asarray(p.lo + p.hi, dtype=arr.dtype), arr, dtype=arr.dtype)
    out = pydicom.pixels.apply_voi_lut(arr.astype(np.float64) if arr.dtype.kind == "f" else arr, ds).astype(np.float32)
    if p.invert:
        if "VOILUTSequence" in ds:
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            lo, hi = 0.0, float((1 << bits) - 1)
        else:
            lo, hi = p.lo, p.hi
        out = (lo + hi) - out
    return out


def to_color_mode(arr: np.ndarray, mode: str) -> tuple[np.ndarray, str]:
    """RGB handling: ``keep`` RGB, ``gray`` luminance (ITU-R 601), ``auto`` gray only when R == G == B."""
    if arr.ndim == 0 or arr.shape[-1] != 3:
        return arr, "gray"
    if mode == "keep":
        return arr, "rgb"
    if mode == "auto":
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
            return np.ascontiguousarray(arr[..., 0]), "gray"
        return arr, "rgb"
    lum = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    return np.round(lum).astype(arr.dtype), "rgb->gray"
