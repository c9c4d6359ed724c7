"""Read a DICOM header once and fast: ``dcmread`` up to the pixels, then element values from raw bytes.

:func:`read_header` parses the header (``stop_before_pixels``) and peeks at the element that
follows, so the pixel pass can later read native pixel data at a known offset. :class:`FastHeader`
reads element values without pydicom's per-element conversion. The ``*_value`` helpers turn what
either returns (a value, a list, a ``MultiValue``) into text or numbers.
"""
from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

# The PixelData tag (7FE0,0010) as it starts an element in little / big endian.
PIXEL_DATA_TAG_LE, PIXEL_DATA_TAG_BE = b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"
PIXEL_ELEMENT_PEEK = 12  # bytes of the element after the header: tag, VR, reserved, length (explicit VR)

_CHARSET_VR = {"PN", "LO", "SH", "ST", "LT", "UT", "UC"}
_BINARY_VR = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "AT": "I"}
_PYDICOM_VR = ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "US or SS", "OB or OW", "US or OW")
_MULTI = (list, tuple, pydicom.multival.MultiValue)


@dataclass
class RawHeader:
    """A header read up to the pixels: the dataset, where the next element starts, and its first bytes."""

    ds: pydicom.Dataset
    pixel_pos: int  # file offset of the element after the header (PixelData in an image)
    pixel_element: bytes  # its first PIXEL_ELEMENT_PEEK bytes (fewer at the end of the file)


def read_header(path: Path, *, force: bool) -> RawHeader:
    """``dcmread`` with ``stop_before_pixels`` (warnings silenced: they quote element values).

    ``force`` reads files without preamble and ``DICM`` marker. Raises whatever pydicom raises on
    a corrupt file."""
    with warnings.catch_warnings(), open(path, "rb") as f:
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=force)
        pixel_pos = f.tell()
        pixel_element = f.read(PIXEL_ELEMENT_PEEK)
    return RawHeader(ds, pixel_pos, pixel_element)


class FastHeader:
    """Read element values straight from pydicom's raw elements.

    pydicom converts an element on first access through its hook machinery (~25 µs each); the
    header summary reads ~50 elements per file, which made the header pass three times slower
    than ``dcmread`` itself. Plain text and binary numeric VRs are decoded here; sequences and
    anything unusual fall back to pydicom. Text is decoded as latin-1 (identifiers are only hashed)
    unless SpecificCharacterSet names another character set, then with pydicom's codecs.
    """

    def __init__(self, ds: pydicom.Dataset):
        self.ds = ds
        implicit, little = ds.original_encoding
        self._endian = "<" if little in (True, None) else ">"
        self._encodings: list[str] | None = None
        charset = self.get("SpecificCharacterSet")
        # several values (ISO 2022 code extensions, the norm on Japanese and Korean exports) arrive as a
        # list or, when pydicom converted the element first, as its MultiValue
        charsets = [str(c) for c in charset] if isinstance(charset, _MULTI) else [charset] if charset else []
        if charsets and charsets not in (["ISO_IR 6"], ["ISO_IR 100"]):
            try:
                self._encodings = pydicom.charset.convert_encodings(charsets)
            except Exception:  # noqa: BLE001 - an unknown charset: pydicom warns; text is read as latin-1
                self._encodings = None

    def __contains__(self, keyword: str) -> bool:
        return self.get(keyword) not in (None, "", [])

    def get(self, keyword: str, default: Any = None) -> Any:
        """The element's value like ``Dataset.get``: text, a number, or a list for several values."""
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
        if vr in _PYDICOM_VR:
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


def text_value(v: Any) -> str:
    """A value as text; multi-valued as DICOM writes them (backslash-joined)."""
    if v is None:
        return ""
    if isinstance(v, _MULTI):
        return "\\".join(str(x) for x in v)
    return str(v)


def float_values(v: Any, n: int) -> list[float] | None:
    """Exactly ``n`` numbers (a position, an orientation, a spacing pair), else None."""
    try:
        vals = [float(x) for x in (v if isinstance(v, _MULTI) else [v])]
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n else None


def first_value(v: Any) -> Any:
    """The first of several values (None for none); a single value as it is."""
    if isinstance(v, _MULTI):
        return v[0] if len(v) else None
    return v


def number_value(v: Any, default: float | None = None) -> float | None:
    """The (first) value as a float; ``default`` when it is missing, empty or not a number."""
    v = first_value(v)
    try:
        return float(v) if v not in (None, "") else default
    except (TypeError, ValueError):
        return default
