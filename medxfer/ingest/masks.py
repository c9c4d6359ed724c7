"""DICOM SEG and RT structure sets from the PACS become label volumes on their image item's grid.

The mask pass runs after the pixel pass. Each mask object (a ``mask`` record of the header pass:
:data:`~medxfer.ingest.vocabulary.MASK_SOP_CLASSES`) is matched to the image item it references by
keyed digests (:func:`~medxfer.ingest.scan.references.mask_header`) and written as a label volume
``masks/<item_id>.nii.gz`` exactly on that item's cached grid: the same shape (x = columns, y = rows,
the third axis the item's slices in stack order) and the same affine. The item's manifest row gets
``mask`` (that path, relative to the manifest's folder) and ``segments`` (``1=Liver;2=Spine``).

Rules (stated in the README, "Masks from DICOM"):

* **Label values**: one per segment. A SEG segment keeps its SegmentNumber; the ROIs of an RT
  structure set that have closed planar contours get 1..N in ascending ROINumber order. uint8, or
  uint16 when a value exceeds 255.
* **Overlaps** (a voxel in several segments): the highest label value wins; the report counts the
  voxels that lay in more than one segment, per object.
* **FRACTIONAL SEG**: a voxel is in a segment when its fraction is >= 0.5 (:data:`FRACTION_THRESHOLD`).
* **RT structure sets**: only CLOSED_PLANAR contours are drawn (points, open contours are counted and
  left out). A contour lies on the slice whose plane is nearest (within half the slice step) and is
  mapped to voxel indices with that slice's ImagePositionPatient, the ImageOrientationPatient and
  PixelSpacing; a voxel is inside when its centre is inside the polygon (centres on an edge count as
  inside: ``skimage.draw.polygon``). The contours of one ROI on one plane combine by XOR (the even-odd
  rule): a contour inside another is a hole.
* **References**: every image the object's frames (SEG) or contours (RT, when it names them) are
  drawn on must be a slice of one ingested item; else the object is skipped with category
  ``mask_without_image`` (the referenced series or images are not in the export, or were not
  ingested). An RT structure set that names no contour image goes on the largest volume of its
  referenced series. An object that cannot be placed (its images in several items, on a cine, a
  SEG whose frames say spatial locations were not preserved, an unreadable file) is ``mask_unusable``.
* **One mask per item**: the first mask object in path order that references an item gives its mask;
  a later one is skipped as ``duplicate_mask`` (segments are never merged across objects).
* **No identifier leaves**: segment labels and ROI names are free text; a name that holds an
  identifier from the export's headers (:class:`~medxfer.ingest.deid.PathRedactor`) is written as
  ``segment<N>``. Error texts are scrubbed of quoted values and UIDs.

Masks are rebuilt on every run (reading a SEG costs little next to the images); masks that no item
has any more are removed.
"""
from __future__ import annotations

import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom

# skimage.draw.polygon (scikit-image is a dependency already): an exact point-in-polygon test at each
# pixel centre, vectorised, on any (row, column) grid; PIL's ImageDraw fills by its own edge rule on
# 8-bit images, matplotlib's Path needs a grid of test points built by hand.
from skimage.draw import polygon as fill_polygon

from ..core.files import DISK_FULL_ERRNOS
from .cache import ItemResult, write_nifti
from .deid import PathRedactor, Pseudonymizer
from .scan.record import FileRecord
from .scrub import describe_error
from .series import Grouping

MASKS_DIR = "masks"
MASK_COLUMNS = ["mask", "segments"]
FRACTION_THRESHOLD = 0.5
OVERLAP_RULE = "the highest label value wins"
DUPLICATE_MASK_RULE = "one mask object per image item: the first in path order is used"
CHUNK_VOXELS = 64_000_000  # SEG frames decoded per call (slices x rows x columns x segments), bounding memory
MAX_NAME = 64
_UID_LIKE = re.compile(r"\d+(?:\.\d+){3,}")
_NAME_UNSAFE = re.compile(r"[;=\x00-\x1f\x7f]+")


class MaskError(Exception):
    """A mask object that cannot be placed on its item (reason safe to report)."""


@dataclass
class Grid:
    """An image item's cached grid, as a mask object is placed on it."""

    item_id: str
    image: str  # the cached image, relative to the output folder
    sops: list[str]  # keyed SOPInstanceUID digest of each slice (third axis); one for a 2D image
    frames: list[int] | None  # a multi-frame volume: the 1-based source frame of each slice
    positions: list[list[float]] | None  # ImagePositionPatient of each slice
    iop: list[float] | None
    spacing: list[float] | None  # PixelSpacing: between rows, between columns
    thickness: float | None
    kind: str  # volume | image | cine
    rows: int
    cols: int


@dataclass
class Built:
    """A label volume in (slices, rows, columns) and what the report says about it."""

    labels: np.ndarray
    segments: list[tuple[int, str]]
    overlap: int = 0
    renamed: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class MaskPass:
    """What the mask pass did: report entries of the mask files, manifest columns per item, warnings, counts."""

    files: dict[str, dict] = field(default_factory=dict)  # mask file -> report entry fields
    columns: dict[str, dict[str, str]] = field(default_factory=dict)  # item_id -> {"mask": …, "segments": …}
    warnings: list[dict] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    written: set[str] = field(default_factory=set)  # mask paths relative to the output folder

    @property
    def present(self) -> bool:
        """Whether the export held any mask object (then the manifest has the mask columns)."""
        return bool(self.files)


def mask_path(item_id: str) -> str:
    """Where an item's label volume lives, relative to the output folder (the item id is keyed: no identifier)."""
    return f"{MASKS_DIR}/{item_id}.nii.gz"


def _quiet() -> None:
    """highdicom warns and logs with UIDs in the text: silence it (as pydicom is in ingest)."""
    logging.getLogger("highdicom").setLevel(logging.CRITICAL)


def _safe_error(exc: BaseException, redact: PathRedactor) -> str:
    return redact.redact_text(_UID_LIKE.sub("…", describe_error(exc)))


def build_masks(src: Path, out: Path, records: dict[str, FileRecord], grouping: Grouping,
                results: dict[str, ItemResult], pseudo: Pseudonymizer, redact: PathRedactor, show) -> MaskPass:
    """Write the label volume of every mask object that resolves to an ingested item; account for each.

    ``records``: every file's header record (mask objects are those of kind ``mask``); ``show`` gives a
    path as the report shows it. Masks of earlier runs that no item has now are removed."""
    result = MaskPass()
    masks = sorted(rel for rel, rec in records.items() if rec.kind == "mask")
    if not masks and not (out / MASKS_DIR).is_dir():
        return result
    _quiet()
    index = _Index(records, grouping, results)
    owner: dict[str, str] = {}  # item_id -> the mask file that gave its mask
    overlap_total = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rel in masks:
            h = records[rel].header
            what = f"{h['mask_type']} ({pydicom.uid.UID(h.get('sop_class') or '').name or 'mask object'})"
            entry = {"status": "skipped", "item_id": None}
            result.files[rel] = entry
            try:
                grid = index.resolve(h, out)
            except _Unresolved as exc:
                entry.update(category=exc.category, reason=f"{what}: {exc}; not used")
                continue
            if grid.item_id in owner:
                entry.update(category="duplicate_mask", item_id=grid.item_id,
                             reason=f"{what}: its image item already has the mask of {show(owner[grid.item_id])} "
                                    f"({DUPLICATE_MASK_RULE})")
                continue
            try:
                built = (_build_seg if h["mask_type"] == "DICOM SEG" else _build_rtstruct)(src / rel, grid, pseudo,
                                                                                           redact)
                path = mask_path(grid.item_id)
                _write(out, path, grid, built.labels)
            except MaskError as exc:
                entry.update(category="mask_unusable", reason=f"{what}: {exc}; not used")
                continue
            except OSError as exc:
                if exc.errno in DISK_FULL_ERRNOS:  # the output's fault, not this object's: stop, naming the mask
                    raise OSError(exc.errno, exc.strerror, str(out / mask_path(grid.item_id))) from exc
                entry.update(category="mask_unusable", reason=f"{what}: cannot read it ({_safe_error(exc, redact)})")
                continue
            except Exception as exc:  # highdicom / pydicom on a malformed object: report it, go on
                entry.update(category="mask_unusable", reason=f"{what}: cannot read it ({_safe_error(exc, redact)})")
                continue
            owner[grid.item_id] = rel
            result.written.add(path)
            result.columns[grid.item_id] = {"mask": path, "segments": ";".join(f"{v}={n}" for v, n in built.segments)}
            overlap_total += built.overlap
            reason = f"{what}: label volume {path} with {len(built.segments)} segment(s)"
            if built.overlap:
                reason += f"; {built.overlap} voxel(s) in more than one segment ({OVERLAP_RULE})"
                result.warnings.append({"item_id": grid.item_id, "message": (
                    f"mask {path}: {built.overlap} voxel(s) lie in more than one segment; {OVERLAP_RULE} "
                    f"(from {show(rel)})")})
            if built.renamed:
                result.warnings.append({"item_id": grid.item_id, "message": (
                    f"mask {path}: {built.renamed} segment name(s) held an identifier from the headers and are "
                    "written as segment<N>")})
            for note in built.notes:
                result.warnings.append({"item_id": grid.item_id, "message": f"mask {path}: {note}"})
            entry.update(status="used", item_id=grid.item_id, reason=reason, mask=path, overlap_voxels=built.overlap)
    prune_masks(out, result.written)
    if masks:
        result.counts = {"objects": len(masks), "written": len(result.written),
                         "skipped": len(masks) - len(result.written), "overlap_voxels": overlap_total}
    return result


def prune_masks(out: Path, keep: set[str]) -> None:
    """Remove label volumes no item has now (an earlier run's, a leftover ``.part`` file)."""
    d = out / MASKS_DIR
    if not d.is_dir():
        return
    for p in d.iterdir():
        if p.is_file() and f"{MASKS_DIR}/{p.name}" not in keep:
            p.unlink(missing_ok=True)
    if not keep:
        try:
            os.rmdir(d)
        except OSError:
            pass


# ---------------------------------------------------------------- which item a mask object goes on
class _Unresolved(Exception):
    def __init__(self, category: str, reason: str):
        super().__init__(reason)
        self.category = category


class _Index:
    """Keyed digests of the ingested slices and series -> the items (and grids) that hold them."""

    def __init__(self, records: dict[str, FileRecord], grouping: Grouping, results: dict[str, ItemResult]):
        self.records = records
        self.plans = {p.item_id: p for p in grouping.items}
        self.results = results
        self.sop_item: dict[str, str] = {}
        self.series_items: dict[str, list[str]] = {}
        for plan in grouping.items:
            res = results.get(plan.item_id)
            if res is None or res.image is None or plan.kind not in ("volume", "image", "cine"):
                continue
            self.series_items.setdefault(plan.header.get("series") or "", []).append(plan.item_id)
            for f in res.used_files:
                sop = records[f].header.get("sop")
                if sop:
                    self.sop_item[sop] = plan.item_id
        dicom = [r.header for r in records.values() if r.kind == "dicom"]
        self.exported_sops = {h.get("sop") for h in dicom} - {None}
        self.exported_series = {h.get("series") for h in dicom} - {None}

    def resolve(self, h: dict, out: Path) -> Grid:
        refs, series = h.get("ref_sops") or [], h.get("ref_series") or []
        if refs:
            missing = [s for s in refs if s not in self.sop_item]
            if missing:
                raise _Unresolved("mask_without_image", self._missing(refs, missing, series))
            items = sorted({self.sop_item[s] for s in refs})
            if len(items) > 1:
                raise _Unresolved("mask_unusable", f"the images it references lie in {len(items)} different items "
                                                   "(one item per mask object)")
            item_id = items[0]
        elif h["mask_type"] == "DICOM SEG":
            raise _Unresolved("mask_without_image", "it references no image instance")
        else:  # contours without image references: the largest volume of the referenced series
            candidates = [i for s in series for i in self.series_items.get(s, [])]
            if not candidates:
                why = ("its referenced series was not ingested (see its files' entries)"
                       if set(series) & self.exported_series else "its referenced series is not in the export")
                raise _Unresolved("mask_without_image", why)
            item_id = min(candidates, key=lambda i: (self.plans[i].kind != "volume",
                                                     -len(self.results[i].used_files), i))
        return self._grid(item_id, out)

    def _missing(self, refs: list[str], missing: list[str], series: list[str]) -> str:
        absent = [s for s in missing if s not in self.exported_sops]
        if len(absent) == len(refs) and not set(series) & self.exported_series:
            return "its referenced series is not in the export"
        if absent:
            return f"{len(absent)} of the {len(refs)} images it references are not in the export"
        return (f"{len(missing)} of the {len(refs)} images it references were not ingested "
                "(skipped or not decoded: see their entries)")

    def _grid(self, item_id: str, out: Path) -> Grid:
        plan, res = self.plans[item_id], self.results[item_id]
        h0 = plan.header
        if plan.kind == "cine":
            raise _Unresolved("mask_unusable", "its image is a cine (frames without slice geometry): not supported")
        if plan.frame_order is not None:  # one Enhanced multi-frame file: its frames in spatial order
            sops = [h0.get("sop")] * len(plan.frame_order)
            frames = [i + 1 for i in plan.frame_order]
            positions = plan.positions
            iop = (h0.get("frame_iop") or [h0.get("iop")])[0]
        else:
            hs = [self.records[f].header for f in res.used_files]
            sops, frames = [h.get("sop") for h in hs], None
            positions = [h.get("ipp") for h in hs]
            positions = None if any(p is None for p in positions) else positions
            iop = h0.get("iop")
        return Grid(item_id, res.image, sops, frames, positions, iop, h0.get("spacing"), h0.get("thickness"),
                    plan.kind, int(h0["rows"]), int(h0["cols"]))


# ---------------------------------------------------------------- DICOM SEG
def _segment_name(number: int, label: object, redact: PathRedactor) -> tuple[str, bool]:
    """A segment's name for the manifest: the header's label cleaned, or ``segment<N>`` when it is empty or
    holds an identifier (then True)."""
    text = " ".join(_NAME_UNSAFE.sub(" ", str(label or "")).split())[:MAX_NAME]
    if not text:
        return f"segment{number}", False
    if redact.contains_identifier(text) or _NAME_IDENTIFIER_LIKE.search(text):
        return f"segment{number}", True
    return text, False


# Free text that may name a patient-specific fact the headers' identifier tokens do not cover (a plan
# date "PTV 12/03/2021", a UID, an ID-like run of digits): the segment is then written as segment<N>.
_NAME_IDENTIFIER_LIKE = re.compile(r"\d+(?:\.\d+){3,}|\d{1,4}[./-]\d{1,2}[./-]\d{1,4}|\d{6,}")


def _build_seg(path: Path, grid: Grid, pseudo: Pseudonymizer, redact: PathRedactor) -> Built:
    """A SEG's segments on the grid (highdicom maps each frame to its source slice)."""
    seg = hd.seg.segread(path)
    numbers = sorted(int(n) for n in seg.segment_numbers)
    if not numbers:
        raise MaskError("it has no segment")
    if _spatial_locations_not_preserved(seg):
        raise MaskError("its frames say spatial locations were not preserved (SpatialLocationsPreserved NO): "
                        "they cannot be placed on the source slices")
    names, renamed = [], 0
    for n in numbers:
        name, hidden = _segment_name(n, seg.get_segment_description(n).SegmentLabel, redact)
        names.append((n, name))
        renamed += hidden
    fractional = str(seg.SegmentationType).upper() == "FRACTIONAL"
    uid_of = {pseudo.digest("SOPInstanceUID", str(u[2])): str(u[2]) for u in seg.get_source_image_uids()}
    rows, cols = int(seg.Rows), int(seg.Columns)
    if (rows, cols) != (grid.rows, grid.cols):
        raise MaskError(f"its frames ({cols}x{rows}) do not match the image's matrix ({grid.cols}x{grid.rows})")
    labels = np.zeros((len(grid.sops), rows, cols), dtype=np.uint8 if numbers[-1] <= 255 else np.uint16)
    common = {"segment_numbers": numbers, "combine_segments": False, "assert_missing_frames_are_empty": True,
              "ignore_spatial_locations": True, "skip_overlap_checks": True, "rescale_fractional": True}
    if grid.frames is not None:  # a multi-frame source: its frames by number
        uid = uid_of.get(grid.sops[0])
        if uid is None:
            raise MaskError("its source image is not among its referenced instances")
        wanted = list(enumerate(grid.frames))
    else:
        wanted = [(k, uid_of[s]) for k, s in enumerate(grid.sops) if s in uid_of]
    chunk = max(1, CHUNK_VOXELS // (rows * cols * len(numbers)))
    overlap = 0
    for i in range(0, len(wanted), chunk):
        part = wanted[i:i + chunk]
        if grid.frames is not None:
            arr = seg.get_pixels_by_source_frame(uid, [f for _, f in part], **common)
        else:
            arr = seg.get_pixels_by_source_instance([u for _, u in part], **common)
        inside = arr >= FRACTION_THRESHOLD if fractional else arr > 0
        overlap += int(np.count_nonzero(inside.sum(axis=-1) >= 2))
        lab = np.zeros(inside.shape[:3], dtype=labels.dtype)
        for j, n in enumerate(numbers):  # ascending: the highest segment number is written last and wins
            lab[inside[..., j]] = n
        labels[[k for k, _ in part]] = lab
    return Built(labels, names, overlap, renamed)


def _spatial_locations_not_preserved(seg: pydicom.Dataset) -> bool:
    """Whether a frame's source reference says NO (absent means unknown: the reference is trusted)."""
    groups = list(seg.get("PerFrameFunctionalGroupsSequence") or []) + list(
        seg.get("SharedFunctionalGroupsSequence") or [])
    for g in groups:
        for d in g.get("DerivationImageSequence") or []:
            for s in d.get("SourceImageSequence") or []:
                if str(s.get("SpatialLocationsPreserved", "") or "").upper() == "NO":
                    return True
    return False


# ---------------------------------------------------------------- RT structure set
def _build_rtstruct(path: Path, grid: Grid, pseudo: Pseudonymizer, redact: PathRedactor) -> Built:
    """Rasterise each ROI's CLOSED_PLANAR contours on the grid (see the module's rules)."""
    if not grid.positions or not grid.iop or not grid.spacing:
        raise MaskError("its image item has no patient geometry (ImagePositionPatient, ImageOrientationPatient, "
                        "PixelSpacing): contours cannot be placed")
    ds = pydicom.dcmread(path, force=True)
    names_by_number = {}
    for roi in ds.get("StructureSetROISequence") or []:
        if roi.get("ROINumber") is not None:
            names_by_number[int(roi.ROINumber)] = roi.get("ROIName", "")
    contours: dict[int, list] = {}
    skipped_types: dict[str, int] = {}
    for rc in ds.get("ROIContourSequence") or []:
        if rc.get("ReferencedROINumber") is None:
            continue
        for c in rc.get("ContourSequence") or []:
            kind = str(c.get("ContourGeometricType", "") or "").upper()
            if kind == "CLOSED_PLANAR":
                contours.setdefault(int(rc.ReferencedROINumber), []).append(c)
            else:
                kind = kind if kind in ("POINT", "OPEN_PLANAR", "OPEN_NONPLANAR") else "unrecognised"
                skipped_types[kind] = skipped_types.get(kind, 0) + 1
    if not contours:
        raise MaskError("it has no CLOSED_PLANAR contour")
    numbers = sorted(contours)
    row_dir = np.asarray(grid.iop[:3], float)
    col_dir = np.asarray(grid.iop[3:], float)
    normal = np.cross(row_dir, col_dir)
    pos = np.asarray(grid.positions, float)
    dist = pos @ normal
    steps = np.abs(np.diff(np.sort(dist)))
    tol = 0.5 * float(steps.min()) if len(steps) and steps.min() > 0 else 0.5 * float(grid.thickness or 1.0)
    sr, sc = (float(v) for v in grid.spacing)
    rows, cols = grid.rows, grid.cols
    dtype = np.uint8 if len(numbers) <= 255 else np.uint16
    labels = np.zeros((len(pos), rows, cols), dtype=dtype)
    multi = np.zeros(labels.shape, dtype=bool)
    names, renamed, off_grid, degenerate = [], 0, 0, 0
    for value, number in enumerate(numbers, 1):  # ascending ROINumber: a later ROI overwrites (the highest wins)
        name, hidden = _segment_name(value, names_by_number.get(number, ""), redact)
        names.append((value, name))
        renamed += hidden
        planes: dict[int, np.ndarray] = {}
        edge_planes: dict[int, np.ndarray] = {}
        for c in contours[number]:
            pts = np.asarray([float(v) for v in (c.get("ContourData") or [])], float)
            if pts.size < 9 or pts.size % 3:
                degenerate += 1
                continue
            pts = pts.reshape(-1, 3)
            plane = float(np.mean(pts @ normal))
            k = int(np.argmin(np.abs(dist - plane)))
            if abs(dist[k] - plane) > tol:
                off_grid += 1
                continue
            rel = pts - pos[k]
            # column, row index; rounded to 1/1000 pixel so that vertices on pixel centres (most tools trace
            # through them) land exactly there and their centres count as inside, whatever the float round-off
            x, y = np.round(rel @ row_dir / sc, 3), np.round(rel @ col_dir / sr, 3)
            rr, cc = fill_polygon(y, x, shape=(rows, cols))
            m = planes.setdefault(k, np.zeros((rows, cols), dtype=bool))
            m[rr, cc] ^= True  # XOR: a contour inside another is a hole (even-odd)
            er, ec = _centres_on_edges(x, y, rows, cols)
            if len(er):
                edges = edge_planes.setdefault(k, np.zeros((rows, cols), dtype=bool))
                edges[er, ec] = True
        for k, edges in edge_planes.items():  # a centre on a contour is in, a hole's edge too
            planes[k] |= edges
        for k, m in planes.items():
            multi[k] |= m & (labels[k] > 0)
            labels[k][m] = value
    notes = []
    if off_grid:
        notes.append(f"{off_grid} contour(s) lie on no slice of the image (not drawn)")
    if degenerate:
        notes.append(f"{degenerate} contour(s) with fewer than 3 points (not drawn)")
    for kind, n in sorted(skipped_types.items()):
        notes.append(f"{n} {kind} contour(s) left out (only CLOSED_PLANAR contours are drawn)")
    return Built(labels, names, int(np.count_nonzero(multi)), renamed, notes)


def _centres_on_edges(x: np.ndarray, y: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) indices of the pixel centres that lie on the polygon's edges between two vertices that are
    themselves pixel centres (contours traced through the centres of a structure's border pixels, as most
    tools write them, an inner one too). Edges between other points pass through no centre but by chance:
    left to the fill."""
    on = (x == np.round(x)) & (y == np.round(y))
    xi, yi = np.round(x).astype(np.int64), np.round(y).astype(np.int64)
    rr, cc = [], []
    n = len(x)
    for i in range(n):
        j = (i + 1) % n
        if not (on[i] and on[j]):
            continue
        dx, dy = int(xi[j] - xi[i]), int(yi[j] - yi[i])
        steps = math.gcd(abs(dx), abs(dy)) or 1
        t = np.arange(steps + 1)
        cc.append(xi[i] + t * (dx // steps))
        rr.append(yi[i] + t * (dy // steps))
    if not rr:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    r, c = np.concatenate(rr), np.concatenate(cc)
    keep = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    return r[keep], c[keep]


# ---------------------------------------------------------------- writing
def _write(out: Path, path: str, grid: Grid, labels: np.ndarray) -> None:
    """Write (slices, rows, cols) labels on the cached image's grid: same shape (x, y[, z]), same affine."""
    img = nib.load(str(out / grid.image))
    shape = tuple(int(s) for s in img.shape)
    arr = labels.transpose(2, 1, 0) if len(shape) >= 3 and grid.kind == "volume" else labels[0].T
    if arr.shape != shape[:arr.ndim]:
        raise MaskError(f"its frames ({labels.shape[2]}x{labels.shape[1]}) do not match the image's grid "
                        f"({'x'.join(map(str, shape))})")
    write_nifti(np.asfortranarray(arr), img.affine, out / path, labels=True)
