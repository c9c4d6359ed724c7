"""Check a DICOMDIR against the files next to it: a CD copied without some of its folders is noticed.

A DICOMDIR lists every file of a DICOM medium (``ReferencedFileID``, a path of up to eight
components relative to the DICOMDIR's folder). :func:`referenced_files` reads that list with
pydicom, :func:`count_present` counts which of the files exist (case-insensitively as a fallback:
a CD copied to another file system may have its upper-case names lowered), and
:func:`check_dicomdir` does both. Only counts leave this module: a missing file's name may hold an
identifier.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pydicom

from ..scrub import describe_error


class DicomdirError(ValueError):
    """The DICOMDIR could not be read (the message names no file and quotes no value)."""


@dataclass(frozen=True)
class DicomdirCheck:
    """How many files a DICOMDIR references, and how many of them exist next to it."""

    referenced: int
    present: int

    @property
    def missing(self) -> int:
        """Referenced files that are not there."""
        return self.referenced - self.present


def referenced_files(path: str | os.PathLike) -> list[str]:
    """The files a DICOMDIR references, as POSIX paths relative to its folder (each once, in record order).

    A file ID that would leave the folder (an absolute path, ``..``) is kept as given: it never
    counts as present. Raises :class:`DicomdirError` when the DICOMDIR cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
            records = ds.get("DirectoryRecordSequence")
    except Exception as exc:  # pydicom raises a wide variety on corrupt input
        raise DicomdirError(f"unreadable DICOMDIR: {describe_error(exc)}") from None
    if records is None:
        raise DicomdirError("not a DICOMDIR: no DirectoryRecordSequence (0004,1220)")
    out: dict[str, None] = {}
    for rec in records:
        fid = rec.get("ReferencedFileID")
        if fid is None or fid == "":
            continue
        parts = [fid] if isinstance(fid, str) else [str(p) for p in fid]
        parts = [p.strip() for p in parts if p.strip()]
        if parts:
            out["/".join(parts)] = None
    return list(out)


def _usable(rel: str) -> bool:
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and "\\" not in rel


def count_present(folder: str | os.PathLike, refs: list[str]) -> int:
    """How many of ``refs`` (relative to ``folder``) are regular files there; names compared exactly,
    else case-insensitively (one listing per folder, cached)."""
    folder = Path(folder)
    listings: dict[Path, dict[str, str] | None] = {}

    def lowered(d: Path) -> dict[str, str] | None:
        if d not in listings:
            try:
                listings[d] = {name.lower(): name for name in os.listdir(d)}
            except OSError:
                listings[d] = None
        return listings[d]

    present = 0
    for rel in refs:
        if not _usable(rel):
            continue
        if (folder / rel).is_file():
            present += 1
            continue
        here = folder
        for part in rel.split("/"):  # case-insensitive fallback, component by component
            names = lowered(here)
            real = names.get(part.lower()) if names is not None else None
            if real is None:
                break
            here = here / real
        else:
            present += here.is_file()
    return present


def check_dicomdir(path: str | os.PathLike) -> DicomdirCheck:
    """Read the DICOMDIR at ``path`` and count the files it references that exist in its folder."""
    refs = referenced_files(path)
    return DicomdirCheck(len(refs), count_present(Path(path).parent, refs))
