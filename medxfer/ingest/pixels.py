"""Decode DICOM pixel data into presentation values.

* Native little-endian pixel data is read straight from the file at the offset the header pass
  found (one ``readinto``, no second parse): this is what keeps ingest at the speed of a bare
  ``dcmread`` loop. Everything else (JPEG, JPEG-LS, JPEG 2000, RLE, deflate, big endian) goes
  through pydicom's decoder plugins (pylibjpeg and its plugins, GDCM as fallback); YBR is
  converted to RGB and PALETTE COLOR expanded by pydicom.
* Modality LUT (rescale slope/intercept: CT in HU) is applied; MONOCHROME1 is inverted so that
  higher is brighter, over the range the header defines (not the image's own min/max).
* VOI (window or VOI LUT) is *recorded* for projection X-ray; applied only when asked.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import UID

from ..core.errors import MedxferError
from .scrub import describe_error

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
    return (UID(h["ts"]) in NATIVE_LE and h["spp"] == 1 and h["bits_allocated"] in (8, 16, 32)
            and h.get("pixel_offset") is not None and h["photometric"].startswith("MONOCHROME"))


def read_stored(path: Path, h: dict) -> np.ndarray:
    """Stored values (or RGB for colour images) of one file: (rows, cols[, 3]) or (frames, rows, cols[, 3])."""
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
        why = describe_error(exc, scrub="paths")
        raise PixelDecodeError(f"cannot decode pixel data ({ts.name or ts}): {why}") from exc
    return arr


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
