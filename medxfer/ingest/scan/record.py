""":class:`FileRecord`: what the header pass learned about one file (kept in the index between runs)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FileRecord:
    """What the header pass learned about one file. ``kind`` is one of
    ``dicom`` (an image), ``nifti``, ``raster`` (PNG/JPEG/PGM/TIFF), ``mask`` (a DICOM SEG or RT structure
    set, for :mod:`medxfer.ingest.masks`), or ``skip`` (with ``reason``)."""

    path: str  # relative to SRC, POSIX separators
    size: int
    mtime_ns: int
    kind: str
    reason: str | None = None
    category: str | None = None  # machine-readable reason: empty, not_image, unreadable, non_image, ...
    header: dict[str, Any] = field(default_factory=dict)
    id_tokens: list[str] = field(default_factory=list)  # keyed digests of identifiers to hide in paths

    def to_json(self) -> dict:
        """The record as a JSON-able dict (the index stores it)."""
        return dict(vars(self))  # fields are JSON-native; asdict's deep copy is slow at 100k files

    @classmethod
    def from_json(cls, d: dict) -> "FileRecord":
        """The record :meth:`to_json` wrote."""
        return cls(**d)
