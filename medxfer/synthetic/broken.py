"""Deliberately broken files an ingest must survive: empty, not DICOM, truncated, garbage, bad header."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .dicom import PathLike
from .modalities import ct_series
from .patients import new_patient

__all__ = ["broken_files"]


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
