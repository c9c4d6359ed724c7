"""Group image files into items: 3D volumes, 2D images, cines.

Rules (see ``DESIGN.md``, "Items"):

* copies of one image (same SOPInstanceUID) are compared first (:func:`compare_copies`): when they
  agree on the pixel format (rows, columns, frames, samples, bits allocated and stored, pixel
  representation, photometric interpretation) and on the pixel content (``pixel_digest``, a keyed
  digest of the stored pixels the pipeline adds to the header of every file that shares its
  SOPInstanceUID), the first path in sort order is used and the others are duplicates; when they
  conflict, *no* copy is used (which one is right cannot be told from the files) and the conflict
  is reported naming every copy. A copy whose pixels could not be read (no digest) is compared on
  its format only;
* single-frame CT/MR/PT/NM slices are grouped by series, orientation, matrix, echo and temporal
  position; a group of two or more becomes one volume sorted by position along the slice normal
  (``ImagePositionPatient · normal``), never by InstanceNumber; a slice of another orientation
  (a localizer or reference image) lands in a group of its own and becomes a 2D item;
* projection X-ray (CR, DX, PX, IO, MG …), ultrasound and secondary captures are one 2D item each;
* a multi-frame file is one item: a volume when it has per-frame geometry (Enhanced CT/MR),
  otherwise a cine (frames kept in order).
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .scan.record import FileRecord
from .vocabulary import PROJECTION_MODALITIES

VOLUME_MODALITIES = {"CT", "MR", "PT", "NM"}
ORIENTATION_TOLERANCE = 1e-3  # direction-cosine difference (~0.06°) under which slices/frames count as parallel


@dataclass
class ItemPlan:
    """One item to decode: its files in stack order and the geometry worked out from headers."""

    item_id: str
    kind: str  # volume | image | cine | nifti | raster
    files: list[str]
    header: dict  # the first file's header summary (modality, view, pixel format …)
    frame_order: list[int] | None = None  # multi-frame volumes: frame indices in spatial order
    positions: list[list[float]] | None = None  # per slice/frame, in stack order
    series_part: str = "1/1"  # k/N when one DICOM series yields N items (oblique slabs, localizers)


# What copies of one SOPInstanceUID must share to count as the same image (header key -> words for the report).
PIXEL_FORMAT = {"rows": "rows", "cols": "columns", "frames": "frames", "spp": "samples per pixel",
                "bits_allocated": "bits allocated", "bits_stored": "bits stored",
                "pixel_representation": "pixel representation", "photometric": "photometric interpretation"}
PIXEL_DIGEST = "pixel_digest"  # header key: keyed digest of the stored pixels (None: could not be read)
DUPLICATE_RULE = ("copies with one SOPInstanceUID are used only when they agree on matrix, frames, bit depth "
                  "and pixel content (then the first path in sort order is used); conflicting copies are all "
                  "left out")


@dataclass
class Conflict:
    """Copies of one SOPInstanceUID that are not the same image: none of them is used."""

    files: list[str]  # every copy, in path order
    differs: list[str]  # what differs, in words ("rows", "pixel content" …)


@dataclass
class Grouping:
    """Item plans, the duplicates left out, conflicting copies, and notes on files used in a special way."""

    items: list[ItemPlan]
    duplicates: dict[str, str]  # duplicate path -> path of the file kept
    notes: dict[str, str]  # path -> note for files used in a special way (e.g. localizer kept apart)
    conflicts: list[Conflict] = field(default_factory=list)


def _item_id(*parts: str) -> str:
    # Not core.hashing.stable_digest: item ids (re-keyed by the pipeline's HMAC) name cached images and
    # manifest rows; these NUL-joined bytes must stay as they are or every cohort's ids would change.
    # surrogateescape: a path that is not UTF-8 (a file name in another encoding) hashes as its bytes.
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def shared_sop_paths(records: list[FileRecord]) -> list[str]:
    """Paths of the DICOM images whose SOPInstanceUID another file has too (those need a pixel digest)."""
    by_sop: dict[str, list[str]] = defaultdict(list)
    for r in records:
        if r.kind == "dicom" and r.header.get("sop"):
            by_sop[r.header["sop"]].append(r.path)
    return sorted(p for paths in by_sop.values() if len(paths) > 1 for p in paths)


def compare_copies(copies: list[FileRecord]) -> list[str]:
    """What differs between copies of one SOPInstanceUID (empty when they are the same image)."""
    first = copies[0].header
    differs = [words for key, words in PIXEL_FORMAT.items() if any(c.header.get(key) != first.get(key) for c in copies)]
    digests = {c.header.get(PIXEL_DIGEST) for c in copies} - {None}
    if len(digests) > 1 and not differs:
        differs.append("pixel content")
    return differs


def _normal(iop: list[float]) -> np.ndarray:
    row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else n


def group_records(records: list[FileRecord]) -> Grouping:
    """Turn the header records of usable files into item plans (DICOM, NIfTI and raster alike)."""
    dicom = sorted((r for r in records if r.kind == "dicom"), key=lambda r: r.path)
    duplicates: dict[str, str] = {}
    conflicts: list[Conflict] = []
    by_sop: dict[str, list[FileRecord]] = defaultdict(list)
    for r in dicom:
        if r.header.get("sop"):
            by_sop[r.header["sop"]].append(r)
    left_out: set[str] = set()
    for copies in by_sop.values():
        if len(copies) < 2:
            continue
        differs = compare_copies(copies)
        if differs:
            conflicts.append(Conflict([c.path for c in copies], differs))
            left_out.update(c.path for c in copies)
        else:
            duplicates.update({c.path: copies[0].path for c in copies[1:]})
            left_out.update(c.path for c in copies[1:])
    unique = [r for r in dicom if r.path not in left_out]

    items: list[ItemPlan] = []
    notes: dict[str, str] = {}
    stacks: dict[tuple, list[FileRecord]] = defaultdict(list)
    for r in unique:
        h = r.header
        if h["frames"] > 1:
            items.append(_multiframe_item(r))
        elif (h["modality"] in VOLUME_MODALITIES and h.get("iop") and h.get("ipp")
              and h["modality"] not in PROJECTION_MODALITIES):
            stacks[_stack_key(h)].append(r)
        else:
            items.append(ItemPlan(_item_id("image", h["sop"] or r.path), "image", [r.path], h))
    for group in stacks.values():
        items.extend(_stack_items(group, notes))
    for r in records:
        if r.kind in ("nifti", "raster"):
            items.append(ItemPlan(_item_id(r.kind, r.header["path_key"]), r.kind, [r.path], dict(r.header)))
    items.sort(key=lambda it: (it.header.get("patient", ""), it.files[0]))
    _number_series_parts(items)
    return Grouping(items, duplicates, notes, conflicts)


def _number_series_parts(items: list[ItemPlan]) -> None:
    """Label items that share a DICOM series (e.g. an axial spine series acquired as one oblique slab per disc)."""
    by_series: dict[str, list[ItemPlan]] = defaultdict(list)
    for it in items:
        if it.kind in ("volume", "image", "cine") and it.header.get("series"):
            by_series[it.header["series"]].append(it)
    for members in by_series.values():
        # volumes first (largest first), then single images; stable within
        members.sort(key=lambda it: (it.kind != "volume", -len(it.files), it.files[0]))
        for k, it in enumerate(members, 1):
            it.series_part = f"{k}/{len(members)}"


def _stack_key(h: dict) -> tuple:
    """Slices that may share a volume: same series, matrix, pixel format, spacing, echo and phase."""
    spacing = tuple(np.round(h["spacing"], 4)) if h.get("spacing") else None
    return (h["series"], h["rows"], h["cols"], h.get("echo"), h.get("temporal"), h["localizer"], h["spp"],
            h["bits_allocated"], h["pixel_representation"], h["photometric"], spacing)


def _orientation_clusters(group: list[FileRecord]) -> list[list[FileRecord]]:
    """Split by orientation with a tolerance (rounding would split 0.0005001 from 0.0004999)."""
    clusters: list[tuple[np.ndarray, list[FileRecord]]] = []
    for r in group:
        iop = np.asarray(r.header["iop"], dtype=float)
        for ref, members in clusters:
            if np.max(np.abs(iop - ref)) < ORIENTATION_TOLERANCE:
                members.append(r)
                break
        else:
            clusters.append((iop, [r]))
    return [members for _, members in clusters]


def _stack_items(group: list[FileRecord], notes: dict[str, str]) -> list[ItemPlan]:
    out: list[ItemPlan] = []
    for cluster in _orientation_clusters(group):
        out.extend(_cluster_items(cluster, notes))
    return out


def _repeats(group: list[FileRecord], dist: np.ndarray) -> list[list[int]]:
    """Indices (in spatial order) of the sub-stacks with one slice per position.

    Repeated acquisitions at the same positions (a dynamic series, a repeat scan, DWI directions
    without a distinguishing tag) are split by AcquisitionNumber when that separates them, else by
    repeat order (the k-th slice seen at each position goes to stack k)."""
    pos = np.round(dist, 3)
    if len(set(pos)) == len(pos):
        return [list(range(len(group)))]
    by_acq: dict = defaultdict(list)
    for i, r in enumerate(group):
        by_acq[r.header.get("acquisition")].append(i)
    if len(by_acq) > 1 and all(len(set(pos[ix])) == len(ix) for ix in by_acq.values()):
        return [by_acq[k] for k in sorted(by_acq, key=lambda a: (a is None, a or 0))]
    stacks: list[list[int]] = []
    seen: dict[float, int] = defaultdict(int)
    for i, p_ in enumerate(pos):
        k = seen[p_]
        seen[p_] += 1
        if k == len(stacks):
            stacks.append([])
        stacks[k].append(i)
    return stacks


def _cluster_items(group: list[FileRecord], notes: dict[str, str]) -> list[ItemPlan]:
    """Parallel slices -> volume(s) sorted along the normal; a lone slice -> a 2D item."""
    h0 = group[0].header
    normal = _normal(h0["iop"])
    dist = np.array([np.dot(np.asarray(r.header["ipp"]), normal) for r in group])
    order = np.argsort(dist, kind="stable")
    group, dist = [group[i] for i in order], dist[order]
    out: list[ItemPlan] = []
    stacks = _repeats(group, dist)
    for k, ix in enumerate(stacks):
        members = [group[i] for i in ix]
        if len(members) == 1:
            r = members[0]
            if r.header["localizer"]:
                notes[r.path] = "localizer kept as its own 2D item"
            elif len(group) > 1:
                notes[r.path] = "the only slice of its orientation or repeat in the series: kept as a 2D item"
            out.append(ItemPlan(_item_id("image", r.header["sop"] or r.path), "image", [r.path], r.header))
            continue
        if len(stacks) > 1:
            for r in members:
                notes[r.path] = f"repeated acquisition at the same positions: stack {k + 1} of {len(stacks)}"
        item_id = _item_id("volume", *(r.header["sop"] or r.path for r in members))
        out.append(ItemPlan(item_id, "volume", [r.path for r in members], members[0].header,
                            positions=[r.header["ipp"] for r in members]))
    return out


def _multiframe_item(r: FileRecord) -> ItemPlan:
    h = r.header
    frame_ipp = h.get("frame_ipp")
    frame_iop = h.get("frame_iop")
    parallel = bool(frame_ipp and frame_iop) and (
        np.max(np.abs(np.asarray(frame_iop, float) - np.asarray(frame_iop[0], float))) < ORIENTATION_TOLERANCE)
    if parallel and h["modality"] not in PROJECTION_MODALITIES and h["modality"] != "US":
        normal = _normal(frame_iop[0])
        dist = np.array([np.dot(np.asarray(p), normal) for p in frame_ipp])
        order = [int(i) for i in np.argsort(dist, kind="stable")]
        if len(set(np.round(dist, 3))) == len(dist):
            return ItemPlan(_item_id("volume", h["sop"] or r.path), "volume", [r.path], h,
                            frame_order=order, positions=[frame_ipp[i] for i in order])
    return ItemPlan(_item_id("cine", h["sop"] or r.path), "cine", [r.path], h)


def slice_spacing(positions: list[list[float]], iop: list[float]) -> tuple[float, list[str]]:
    """Mean spacing along the normal and notes on non-uniform spacing, gaps or tilted stacks."""
    p = np.asarray(positions, dtype=float)
    if len(p) < 2:
        return 0.0, []
    normal = _normal(iop)
    steps = np.diff(p @ normal)
    mean = float(np.mean(steps))
    notes = []
    med = float(np.median(steps))
    if med > 0 and (np.max(np.abs(steps - med)) > max(0.01 * med, 0.01)):
        gaps = int(np.sum(np.round(steps / med) - 1))
        note = f"non-uniform slice spacing: steps from {steps.min():.3g} to {steps.max():.3g} mm (median {med:.3g})"
        if gaps > 0:
            note += f"; about {gaps} slice(s) missing"
        notes.append(note)
    # Positions that drift sideways relative to the normal: gantry tilt or a sheared stack.
    along = p - np.outer(p @ normal, normal)
    drift = float(np.max(np.linalg.norm(along - along[0], axis=1)))
    if drift > 0.5:
        notes.append(f"slice positions drift {drift:.3g} mm off the slice normal (gantry tilt?); "
                     "stored as sheared affine")
    return mean, notes
