"""The report as a document, independent of its format: sections of paragraphs, tables and figures.

:mod:`.sections` builds one ordered :class:`Document` from a summary; :mod:`.render` writes the
same document as HTML and as Markdown, so both formats carry the same sections in the same order.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class Figure:
    """A rendered figure: its file stem (``figures/<stem>.png``), its alt text, the PNG bytes and the same figure as
    vector files (SVG, PDF; empty when not rendered) written next to the PNG for a journal."""

    stem: str
    alt: str
    png: bytes = field(repr=False)
    svg: bytes = field(default=b"", repr=False)
    pdf: bytes = field(default=b"", repr=False)

    @property
    def vector_formats(self) -> tuple[str, ...]:
        """The vector files this figure has, as file suffixes: ``("svg", "pdf")``."""
        return tuple(fmt for fmt in ("svg", "pdf") if getattr(self, fmt))

    @property
    def base64(self) -> str:
        """The PNG as base64 text, for a ``data:`` URI."""
        return base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class Paragraph:
    """Running text (a methods description)."""

    text: str
    kind: ClassVar[str] = "paragraph"


@dataclass(frozen=True)
class Table:
    """A table of formatted values; ``numeric`` marks right-aligned columns, ``row_ids`` tags rows (HTML)."""

    table_id: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...]
    row_ids: tuple[str, ...] = ()
    kind: ClassVar[str] = "table"


@dataclass(frozen=True)
class Figures:
    """A row of figures (HTML: one flex box; Markdown: one image per paragraph, files under the figure folder)."""

    figures: tuple[Figure, ...]
    kind: ClassVar[str] = "figures"


@dataclass(frozen=True)
class Section:
    """A headed section; ``level`` 2 for a section, 3 for a subsection (itself a block of its section)."""

    title: str
    blocks: tuple[Block, ...]
    anchor: str = ""  # HTML id of the heading, when links point at it
    level: int = 2
    kind: ClassVar[str] = "section"


Block = Paragraph | Table | Figures | Section


@dataclass(frozen=True)
class Document:
    """A whole report: title, provenance lines (shown under the title) and the sections in order."""

    title: str
    provenance: tuple[str, ...]
    sections: tuple[Section, ...]
