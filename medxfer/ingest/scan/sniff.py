"""Classify one file by its first bytes: DICOM (read on by :mod:`.classify`), NIfTI, raster, or not an image.

:func:`read_file_record` is the header pass for one file; it runs in worker processes and never
raises for a bad file: an empty, unreadable or unknown file becomes a ``skip`` record with a reason.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

from ..deid import Pseudonymizer, path_tokens
from .classify import read_dicom_record
from .record import FileRecord

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RASTER_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"P2": "PGM", b"P5": "PGM", b"II*\x00": "TIFF",
                b"MM\x00*": "TIFF", b"BM": "BMP"}
HEAD_BYTES = 132  # the 128-byte preamble and the 'DICM' marker
_BIDS_SUBJECT = re.compile(r"(?:^|/)sub-([A-Za-z0-9]+)")


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
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        rec.reason, rec.category = f"cannot read file: {exc.strerror}", "unreadable"
        return rec
    lower = rel.lower()
    has_preamble = head[128:132] == b"DICM"
    if has_preamble or looks_like_raw_dicom(head):
        return read_dicom_record(full, rec, pseudo, has_preamble=has_preamble)
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


def looks_like_raw_dicom(head: bytes) -> bool:
    """A DICOM dataset written without preamble/meta (old ACR-NEMA style): starts with group 0008 or 0002."""
    if len(head) < 8:
        return False
    group, elem = struct.unpack("<HH", head[:4])
    return group in (0x0002, 0x0008) and elem <= 0x0020


def _path_identity(rec: FileRecord, pseudo: Pseudonymizer) -> None:
    """Keyed identity of a file without DICOM headers; a BIDS ``sub-<label>`` (often an MRN) is hidden."""
    rec.header = {"path_key": pseudo.digest("FilePath", rec.path)}
    m = _BIDS_SUBJECT.search(rec.path)
    if m:
        rec.id_tokens = sorted(path_tokens({"BIDSSubject": m.group(1)}, pseudo))
