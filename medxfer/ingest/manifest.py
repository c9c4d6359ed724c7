"""The manifest (one row per item) and the join of a labels CSV onto the items.

Columns are the contract of ``DESIGN.md`` ("Ingest output") plus technical columns that later
stages use (``kind``, ``channels``, ``intensity`` …). Labels are joined in pseudonym space: a
labels CSV keyed by a DICOM identifier has its key column hashed with the ingest secret, so the
identifier itself is never written anywhere.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..core.errors import MedxferError
from ..core.files import atomic_writer
from .deid import PathRedactor, Pseudonymizer
from .vocabulary import LABEL_KEYWORDS

MANIFEST_FILE = "manifest.csv"  # in an ingest output folder
# Per-slice labels (a labels CSV keyed by SOPInstanceUID on volumes): ``item_id, slice, <label columns>``,
# ``slice`` the 0-based index along the cached volume's third (slice) axis; beside the manifest.
SLICE_LABELS_FILE = "slice_labels.csv"
MANIFEST_COLUMNS = [
    "item_id", "patient", "study", "series", "modality", "body_part", "view", "laterality",
    "image", "shape", "spacing", "frames", "channels", "kind", "source", "color", "intensity",
    "spacing_source", "uniform_spacing", "voi", "window_center", "window_width", "voi_applied",
    "frame_time_ms", "n_files", "series_part", "burned_in",
]
# Label columns whose names look like identifiers are dropped: any word of the name, or the whole
# name with separators removed, in these sets ("pleural_fluid" stays; "Patient-Name", "date_of_birth" go).
IDENTIFIER_WORDS = {"name", "names", "mrn", "dob", "birth", "birthdate", "accession", "uid", "institution",
                    "address", "phone", "telephone", "physician", "ssn", "email", "id", "pid", "patid"}
IDENTIFIER_NAMES = {"patientid", "patientname", "dateofbirth", "birthdate", "accessionnumber", "studyuid",
                    "seriesuid", "sopuid", "studyinstanceuid", "seriesinstanceuid", "sopinstanceuid",
                    "otherpatientids", "medicalrecordnumber", "institutionname", "referringphysicianname"}


def looks_like_identifier_column(name: str) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    return bool(set(words) & IDENTIFIER_WORDS) or "".join(words) in IDENTIFIER_NAMES


class LabelsError(MedxferError, ValueError):
    """An unusable labels file or key column (reported to the user as a one-line error)."""


def format_list(values) -> str:
    """``[512, 512, 33]`` -> ``512x512x33`` (floats to 6 significant digits)."""
    return "x".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values)


def parse_list(text: str, cast=float) -> list:
    return [cast(v) for v in text.split("x")] if text else []


# CSV formula injection: a cell starting with one of these is run as a formula by spreadsheet programs
# (``=HYPERLINK(…)``, ``+cmd|…``, ``@SUM(…)``). Such cells are written with a leading ``'`` (the spreadsheet
# text marker), and so is a cell that already starts with ``'``, so that reading strips exactly one. Plain
# decimal numbers ("-1", "-0.5", "+2e-3") are not formulas and are written as they are.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def escape_cell(value: object) -> str:
    """A value as written to a CSV: text that a spreadsheet would run as a formula gets a leading ``'``.

    None is the empty cell; numbers and text starting with anything else are written unchanged."""
    text = "" if value is None else str(value)
    if text[:1] == "'" or (text.startswith(FORMULA_TRIGGERS) and not _NUMBER.fullmatch(text)):
        return "'" + text
    return text


def unescape_cell(text: str) -> str:
    """The inverse of :func:`escape_cell`: one leading ``'`` before a formula character or ``'`` is removed."""
    if len(text) > 1 and text[0] == "'" and (text[1] == "'" or text[1:].startswith(FORMULA_TRIGGERS)):
        return text[1:]
    return text


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Atomic UTF-8 CSV write (a crash never leaves half a manifest); None is written as an empty cell.

    Cells (column names too) that a spreadsheet would run as formulas are neutralised with a leading
    ``'`` (:func:`escape_cell`); :func:`read_manifest` removes it again."""
    with atomic_writer(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([escape_cell(c) for c in columns])
        for r in rows:
            w.writerow([escape_cell(r.get(k)) for k in columns])


def read_manifest(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Rows (as string dicts) and the column order of a manifest (formula escapes removed)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [unescape_cell(c) for c in reader.fieldnames or []]
        rows = [{k: unescape_cell(v) if isinstance(v, str) else v for k, v in r.items()} for r in reader]
        return rows, list(reader.fieldnames)


def read_slice_labels(path: str | os.PathLike) -> dict[str, dict[int, dict[str, str]]]:
    """``item_id -> slice -> {column: value}`` from a :data:`SLICE_LABELS_FILE` (empty when absent)."""
    if not Path(path).is_file():
        return {}
    rows, _ = read_manifest(path)
    out: dict[str, dict[int, dict[str, str]]] = {}
    for r in rows:
        item_id, k = r.pop("item_id"), int(r.pop("slice"))
        out.setdefault(item_id, {})[k] = r
    return out


def write_slice_labels(path: str | os.PathLike, rows: list[dict], label_columns: list[str]) -> None:
    """Write a :data:`SLICE_LABELS_FILE` (``item_id, slice, *label_columns``; atomic, escaped like the
    manifest), or remove the one an earlier run left when ``rows`` is empty."""
    p = Path(path)
    if rows:
        write_csv(p, rows, ["item_id", "slice", *label_columns])
    else:
        p.unlink(missing_ok=True)


@dataclass
class LabelTable:
    """A labels CSV ready to join: keyed by digest (DICOM keywords) or by relative path."""

    key: str
    by_key: dict[str, dict[str, str]]
    columns: list[str]
    dropped_columns: list[str] = field(default_factory=list)  # "name (why)": safe to show, never an identifier
    n_rows: int = 0
    patient_column: str | None = None  # its values became keyed digests under PATIENT_FIELD, never a column

    @property
    def is_path_key(self) -> bool:
        return self.key not in LABEL_KEYWORDS


# Where a label row carries its patient's keyed digest (``patient_column``): a name no CSV column can have.
PATIENT_FIELD = "\x00patient"


def load_labels(path: str | os.PathLike, key: str, pseudo: Pseudonymizer, id_tokens: set[str] | None = None,
                patient_column: str | None = None) -> LabelTable:
    """Read a labels CSV; ``key`` is a DICOM keyword column (hashed at once) or a file-path column.

    ``patient_column`` names the column that identifies the patient of each row, for image folders,
    which carry no identity of their own (e.g. DDTI's case number): its values are hashed with the
    PatientID key at once (the same pseudonym DICOM headers with that PatientID get) and never become
    a manifest column.

    Columns named like identifiers, and columns with a value that holds an identifier seen in the
    headers (``id_tokens``, keyed digests from the header pass) anywhere in it (``"seen Taro Yamada"``,
    matched as paths are: :class:`~medxfer.ingest.deid.PathRedactor`), are dropped, never copied;
    ``dropped_columns`` says why for each (a column named after an identifier is shown by its number).
    A leading ``'`` before a formula character is removed (:func:`unescape_cell`, as the manifest writes it).
    Error messages never quote the file's content (a header-less CSV's first row is data).
    """
    p = Path(path)
    if not p.is_file():
        raise LabelsError(f"labels file not found: {p}")
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [unescape_cell(c.strip()) for c in next(reader, [])]
            rows = [dict(zip(header, (unescape_cell(v.strip()) for v in r)))
                    for r in reader if any(v.strip() for v in r)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LabelsError(f"labels file {p.name} is not a UTF-8 CSV ({type(exc).__name__}); save it as UTF-8") from None
    if key not in header:
        raise LabelsError(f"labels file {p.name} has no column named {key!r} in its first row "
                          f"({len(header)} columns; the first row must name the columns)")
    if patient_column is not None and (patient_column not in header or patient_column == key):
        raise LabelsError(f"labels file {p.name}: --patient-column {patient_column!r} is not one of its columns "
                          f"other than the key {key!r}")
    redactor = PathRedactor(id_tokens or set(), pseudo)
    columns, dropped = [], []
    for n, c in enumerate(header, 1):
        if c in (key, patient_column):
            continue
        if redactor.contains_identifier(c):
            dropped.append(f"column {n} (its name holds an identifier from the image headers)")
        elif c in LABEL_KEYWORDS:
            dropped.append(f"{c} (a DICOM identifier; use it as --key to join on it)")
        elif looks_like_identifier_column(c):
            dropped.append(f"{c} (named like an identifier)")
        elif (row := _row_with_identifier(rows, c, redactor)) is not None:
            dropped.append(f"{c} (data row {row} holds an identifier from the image headers)")
        else:
            columns.append(c)
    by_key: dict[str, dict[str, str]] = {}
    for r in rows:
        raw = r.get(key) or ""
        if not raw:
            continue
        k = pseudo.digest(key, raw) if key in LABEL_KEYWORDS else normalize_path(raw)
        by_key[k] = {c: r.get(c) or "" for c in columns}
        if patient_column and r.get(patient_column):
            by_key[k][PATIENT_FIELD] = pseudo.digest("PatientID", r[patient_column])
    return LabelTable(key, by_key, columns, dropped, len(rows), patient_column)


def _row_with_identifier(rows: list[dict], column: str, redactor: PathRedactor) -> int | None:
    """The first data row (1-based) whose value in ``column`` holds a header identifier anywhere, else None."""
    if not redactor.tokens:
        return None
    seen: set[str] = set()
    for n, r in enumerate(rows, 1):
        v = r.get(column) or ""
        if v and v not in seen:
            seen.add(v)
            if redactor.contains_identifier(v):
                return n
    return None


def normalize_path(p: str) -> str:
    """POSIX separators, no leading ``./``."""
    s = p.replace("\\", "/")
    while s.startswith("./"):
        s = s[2:]
    return PurePosixPath(s).as_posix() if s else s


def join_labels(table: LabelTable, item_keys: dict[str, set[str]]) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
    """Match label rows to items.

    ``item_keys`` maps item_id -> the keys that identify it (digests of its files' identifiers for a
    DICOM keyword; its files' relative paths for a path key). A path key also matches when one path
    is a suffix of the other at a folder boundary (a CSV written relative to a parent folder).
    Returns item_id -> labels and counts (never the unmatched keys themselves).
    """
    full: dict[str, set[str]] = {}  # exact keys (digests, or whole relative paths)
    tails: dict[str, set[str]] = {}  # path keys: every folder-boundary tail of an item's path
    for item_id, keys in item_keys.items():
        for k in keys:
            full.setdefault(k, set()).add(item_id)
            if table.is_path_key:
                parts = k.split("/")
                for i in range(1, len(parts)):
                    tails.setdefault("/".join(parts[i:]), set()).add(item_id)
    labels: dict[str, dict[str, str]] = {}
    matched_rows = ambiguous_rows = 0
    for k, values in table.by_key.items():
        hits = full.get(k)
        if not hits and table.is_path_key:
            # the CSV path is a tail of an item path (CSV relative to SRC's subfolder) ...
            hits = tails.get(k)
            if not hits:
                # ... or an item path is a tail of the CSV path (CSV relative to a parent of SRC)
                parts = k.split("/")
                hits = next((full[t] for t in ("/".join(parts[i:]) for i in range(1, len(parts))) if t in full), None)
            if hits and len({i for i in hits}) > 1 and k not in full:
                ambiguous_rows += 1  # e.g. "1.png" under train/ and test/: never guess
                continue
        if not hits:
            continue
        matched_rows += 1
        for item_id in hits:
            labels.setdefault(item_id, values)
    counts = {
        "rows": table.n_rows,
        "matched_rows": matched_rows,
        "unmatched_rows": table.n_rows - matched_rows,
        "ambiguous_rows": ambiguous_rows,
        "items_labelled": len(labels),
        "items_without_label": len(item_keys) - len(labels),
    }
    return labels, counts
