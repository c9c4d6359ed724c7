"""Build the decoded cache: one NIfTI file per item that ``monai.transforms.LoadImage`` reads with spacing.

Array layout follows NIfTI/MONAI conventions: axis 0 runs along the image columns (x), axis 1
along the rows (y), axis 2 along slices or frames; colour items have a trailing channel axis of
3 (load those with ``LoadImage(channel_dim=-1)``; the manifest's ``channels`` column says which).
Volumes get the scanner affine (DICOM LPS converted to RAS); 2D images without patient geometry
get a diagonal affine with their pixel spacing.

Files are written uncompressed by default (``.nii``): gzip would cost more than decoding the
DICOM itself; ``compress=True`` writes ``.nii.gz``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..core.files import DISK_FULL_ERRNOS
from . import pixels
from .scrub import describe_error
from .series import ItemPlan, slice_spacing
from .vocabulary import PROJECTION_MODALITIES

CACHE_VERSION = 1
IMAGES_DIR = "images"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class DecodeOptions:
    """Choices that change the cached pixels (part of every item's cache key)."""

    color: str = "keep"  # keep | gray | auto  (see pixels.to_color_mode)
    voi: str = "record"  # record | apply  (apply bakes VOI into projection X-ray only)
    compress: bool = False


@dataclass
class ItemResult:
    """What the pixel pass produced for one item: the manifest row's technical columns and problems."""

    item_id: str
    image: str | None = None  # relative to the output folder
    shape: list[int] = field(default_factory=list)
    spacing: list[float] = field(default_factory=list)
    frames: int = 1
    channels: int = 1
    dtype: str = ""
    color: str = "gray"
    intensity: str = "stored"  # HU | modality_lut | rescaled | stored | voi
    spacing_source: str = "none"
    uniform_spacing: bool | None = None
    voi: str = "none"  # window | lut | none
    window_center: float | None = None
    window_width: float | None = None
    voi_applied: bool = False
    frame_time_ms: float | None = None
    used_files: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    notes: list[str] = field(default_factory=list)


def item_key(plan: ItemPlan, fingerprints: dict[str, tuple[int, int]], opts: DecodeOptions) -> str:
    """Changes whenever a member file, the stacking or a decode option *that applies to it* changes
    (``--color`` only for colour items, ``--voi`` only for projection X-ray)."""
    h = plan.header
    colour = plan.kind == "raster" or pixels.is_colour(h)
    relevant = {"compress": opts.compress,
                "color": opts.color if colour else None,
                "voi": opts.voi if h.get("modality") in PROJECTION_MODALITIES else None}
    # Not core.hashing.stable_digest: these bytes (a "|"-joined text, then one NUL-separated record per
    # file) are what every index already holds as cache keys; canonical JSON would re-key (re-decode) all.
    digest = hashlib.sha256(f"{CACHE_VERSION}|{plan.kind}|{plan.frame_order}|{sorted(relevant.items())}".encode())
    for p in plan.files:  # a plain stream, not json: this runs for every item on every re-run
        size, mtime = fingerprints[p]
        # surrogateescape: a file name that is not UTF-8 hashes as its bytes (UTF-8 names: the same bytes as ever)
        digest.update(f"\x00{p}\x00{size}\x00{mtime}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def image_path(item_id: str, opts: DecodeOptions) -> str:
    """Where an item's cached image lives, relative to the output folder: ``images/<2 hex>/<item_id>.nii[.gz]``
    (one sub-folder per first two characters of the id: no folder holds more than ~1/256 of the cohort)."""
    return f"{IMAGES_DIR}/{item_id[:2]}/{item_id}{'.nii.gz' if opts.compress else '.nii'}"


def build_item(plan: ItemPlan, src: Path, out: Path, opts: DecodeOptions, headers: dict[str, dict]) -> ItemResult:
    """Decode one item and write it to the cache. Bad files are reported in ``failed``, never raised,
    except a full disk (ENOSPC, EDQUOT): every later item would fail alike, so it stops the ingest
    (an ``OSError`` naming the cached image; the CLI says it in one line, finished items are kept)."""
    res = ItemResult(plan.item_id)
    target = out / image_path(plan.item_id, opts)
    try:
        if plan.kind == "nifti":
            arr, affine = _read_nifti(src / plan.files[0], res)
        elif plan.kind == "raster":
            arr, affine = _read_raster(src / plan.files[0], res, opts)
        elif plan.kind == "volume" and plan.frame_order is None and not opts.compress:
            _stream_volume(plan, src, out, res, headers)
            return res
        elif plan.kind == "volume":
            arr, affine = _read_volume(plan, src, res, opts, headers)
        else:
            arr, affine = _read_single(plan, src, res, opts)
    except pixels.PixelDecodeError as exc:
        res.failed.update({p: str(exc) for p in plan.files if p not in res.failed})
        return res
    except Exception as exc:  # any other reader failure: report the file, keep going
        _raise_if_disk_full(exc, target)
        res.failed.update({p: f"cannot read image: {describe_error(exc)}" for p in plan.files if p not in res.failed})
        return res
    if arr is None:
        return res
    if _too_large(arr.shape, plan, res):
        return res
    try:
        write_nifti(arr, affine, target)
    except OSError as exc:  # permissions: reported per file, the run goes on
        _raise_if_disk_full(exc, target)
        why = exc.strerror or type(exc).__name__
        res.failed.update({p: f"cannot write the cached image: {why}" for p in plan.files})
        return res
    res.image = image_path(plan.item_id, opts)
    res.used_files = [p for p in plan.files if p not in res.failed]
    return res


NIFTI1_MAX_DIM = 32767  # dims are int16 in the NIfTI-1 header
NIFTI_DATA_OFFSET = 352  # 348-byte header + 4-byte extension flag (no extensions)


def _too_large(shape: tuple[int, ...], plan: ItemPlan, res: ItemResult) -> bool:
    """NIfTI-1 stores dimensions as int16: a larger item is reported per file, not written."""
    if max(shape) <= NIFTI1_MAX_DIM:
        return False
    res.failed.update({p: f"image too large for NIfTI-1: a dimension of {max(shape)} exceeds {NIFTI1_MAX_DIM} "
                          "(whole-slide or very long cine images are not supported)" for p in plan.files})
    return True


def _nifti_header(shape: tuple[int, ...], dtype: np.dtype, affine: np.ndarray, *,
                  labels: bool = False) -> nib.Nifti1Header:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_xyzt_units("mm")
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_data_offset(NIFTI_DATA_OFFSET)
    hdr["scl_slope"], hdr["scl_inter"] = np.nan, np.nan
    if labels:  # a label volume (NIFTI_INTENT_LABEL): never a colour vector, whatever its last axis
        hdr.set_intent("label")
    elif len(shape) >= 3 and shape[-1] == 3 and dtype == np.uint8:
        hdr.set_intent("vector")
    return hdr


def _write_header(f, hdr: nib.Nifti1Header) -> None:
    f.write(hdr.binaryblock)
    f.write(b"\x00" * (NIFTI_DATA_OFFSET - len(hdr.binaryblock)))


def _raise_if_disk_full(exc: BaseException, target: Path) -> None:
    """Re-raise a full-disk error as an ``OSError`` that names ``target``."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        raise OSError(exc.errno, exc.strerror, str(target)) from exc


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part" + "".join(path.suffixes))


def write_nifti(arr: np.ndarray, affine: np.ndarray, path: Path, *, labels: bool = False) -> None:
    """Write atomically (``labels``: a label volume, with the NIfTI label intent). Uncompressed F-contiguous
    arrays (2D DICOM images: the (rows, cols) buffer transposed) go out as header + one buffer write,
    without nibabel's chunked copy.

    Not core.files.atomic_writer: nibabel saves by file name and picks gzip from its suffix, which
    the ``.part.nii[.gz]`` name keeps; a leftover ``.part`` file is removed by the next run's prune."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _part(path)
    try:
        if path.suffix == ".nii" and arr.flags.f_contiguous and arr.dtype.byteorder in ("=", "<", "|"):
            with open(tmp, "wb") as f:
                _write_header(f, _nifti_header(arr.shape, arr.dtype, affine, labels=labels))
                f.write(memoryview(arr.T if arr.ndim > 1 else arr).cast("B"))
        else:
            img = nib.Nifti1Image(arr, affine, header=_nifti_header(arr.shape, arr.dtype, affine, labels=labels))
            nib.save(img, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _affine(iop: list[float] | None, ipp: list[float] | None, spacing: list[float],
            step: np.ndarray | None) -> np.ndarray:
    """Voxel (x=column, y=row, z=slice) -> RAS mm."""
    sr, sc = spacing  # PixelSpacing: between rows, between columns
    if iop is None or ipp is None:
        return np.diag([sc, sr, float(np.linalg.norm(step)) if step is not None else 1.0, 1.0])
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    if step is None:
        step = np.cross(row, col)
    lps = np.eye(4)
    lps[:3, 0] = row * sc
    lps[:3, 1] = col * sr
    lps[:3, 2] = step
    lps[:3, 3] = ipp
    return LPS_TO_RAS @ lps


def _spacing(h: dict, res: ItemResult) -> list[float]:
    res.spacing_source = h.get("spacing_source") or "none"
    return list(h["spacing"]) if h.get("spacing") else [1.0, 1.0]


def _record_voi(h: dict, res: ItemResult, p: pixels.Presentation) -> None:
    if h["voi_lut"]:
        res.voi = "lut"
    if h.get("window_center") is not None and h.get("window_width"):
        res.voi = "window" if res.voi == "none" else res.voi
        c = float(h["window_center"])  # defined on modality (rescaled) values, as the cache holds
        res.window_center = (p.lo + p.hi - c) if p.invert else c
        res.window_width = float(h["window_width"])


def _intensity(h: dict, p: pixels.Presentation) -> str:
    """What the cached values are: ``HU`` (CT), ``modality_lut`` (a Modality LUT Sequence's output),
    ``rescaled`` (slope/intercept) or ``stored``."""
    if h["modality"] == "CT" and h.get("rescale_type", "HU").upper() in ("HU", ""):
        return "HU"  # CT modality-LUT output is HU by definition (RescaleType / ModalityLUTType default to HU)
    if p.lut:
        return "modality_lut"
    return "rescaled" if p.rescaled else "stored"


def _decode_slices(plan: ItemPlan, src: Path, res: ItemResult, p: pixels.Presentation, hs: list[dict],
                   buf: np.ndarray | None):
    """Yield (k, presented slice) in spatial order; failed slices go to ``res.failed``.

    With ``buf`` (a reusable (rows, cols) buffer of the output dtype) native slices are read into it
    and presented in place: no allocation per slice."""
    for k, (rel, h) in enumerate(zip(plan.files, hs)):
        try:
            if buf is not None and pixels.reads_in_place(h, p):  # the common CT/MR case
                pixels.read_native(src / rel, h, out=buf)
                yield k, pixels.present(buf, p, h)
            else:
                yield k, pixels.present(pixels.read_stored(src / rel, h), p, h)
        except pixels.PixelDecodeError as exc:
            res.failed[rel] = str(exc)


def _volume_geometry(plan: ItemPlan, res: ItemResult, p: pixels.Presentation, positions: list, n: int, rows: int,
                     cols: int) -> np.ndarray:
    """Fill the result's geometry columns for a volume of ``n`` slices; return its affine."""
    h0 = plan.header
    spacing = _spacing(h0, res)
    iop = h0["iop"] if plan.frame_order is None else h0.get("frame_iop", [h0["iop"]])[0]
    if len(positions) > 1:
        _, notes = slice_spacing(positions, iop)
        res.notes.extend(notes)
        res.uniform_spacing = not any(n_.startswith("non-uniform") for n_ in notes)
        step = (np.asarray(positions[-1]) - np.asarray(positions[0])) / (len(positions) - 1)
    else:
        step, res.uniform_spacing = None, None
    res.intensity = _intensity(h0, p)
    _record_voi(h0, res, p)
    res.dtype, res.frames, res.shape = str(p.dtype), n, [cols, rows, n]
    slice_step = float(np.linalg.norm(step)) if step is not None else float(h0.get("thickness") or 1.0)
    res.spacing = [spacing[1], spacing[0], slice_step]
    if len(plan.files) > n:
        res.notes.append(f"{len(plan.files) - n} slice(s) could not be decoded and are missing from the volume")
    return _affine(iop, positions[0], spacing, step)


def _stream_volume(plan: ItemPlan, src: Path, out: Path, res: ItemResult, headers: dict[str, dict]) -> None:
    """Decode a single-frame series slice by slice straight into its NIfTI file.

    NIfTI's (x, y, z) order puts each slice's (rows, cols) buffer contiguously, so slices are
    appended as they are decoded through one reused buffer; the header is written last, when
    the slices that decoded (and so the geometry) are known. Memory stays at one slice.
    """
    h0 = plan.header
    hs = [headers[f] for f in plan.files]
    p = pixels.plan_presentation(hs)
    rows, cols = h0["rows"], h0["cols"]
    if _too_large((cols, rows, len(plan.files)), plan, res):
        return
    path = out / image_path(plan.item_id, DecodeOptions())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _part(path)
    good: list[int] = []
    buf = np.empty((rows, cols), dtype=p.dtype)
    try:
        with open(tmp, "wb") as f:
            f.seek(NIFTI_DATA_OFFSET)
            for k, arr in _decode_slices(plan, src, res, p, hs, buf):
                f.write(memoryview(np.ascontiguousarray(arr, dtype=p.dtype)).cast("B"))
                good.append(k)
            if good:
                affine = _volume_geometry(plan, res, p, [plan.positions[k] for k in good], len(good), rows, cols)
                f.seek(0)
                _write_header(f, _nifti_header((cols, rows, len(good)), p.dtype, affine))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not good:
        tmp.unlink(missing_ok=True)
        return
    os.replace(tmp, path)
    res.image = image_path(plan.item_id, DecodeOptions())
    res.used_files = [f for f in plan.files if f not in res.failed]


def _read_volume(plan: ItemPlan, src: Path, res: ItemResult, opts: DecodeOptions, headers: dict[str, dict]):
    """A volume in memory: Enhanced multi-frame files, and series written compressed (.nii.gz)."""
    h0 = plan.header
    if plan.frame_order is not None:  # one multi-frame file with per-frame geometry
        stored = pixels.read_stored(src / plan.files[0], h0)[plan.frame_order]
        if h0.get("frame_rescale"):  # rescale differs per frame: float, frame by frame
            per_frame = [dict(h0, slope=sl, intercept=ic)
                         for sl, ic in (h0["frame_rescale"][i] for i in plan.frame_order)]
            p = pixels.plan_presentation(per_frame)
            vol = np.stack([pixels.present(f, p, hf) for f, hf in zip(stored, per_frame)])
        else:
            p = pixels.plan_presentation([h0])
            vol = pixels.present(stored, p, h0)
        positions = plan.positions
    else:
        hs = [headers[f] for f in plan.files]
        p = pixels.plan_presentation(hs)
        decoded = list(_decode_slices(plan, src, res, p, hs, None))
        if not decoded:
            return None, None
        vol = np.stack([a for _, a in decoded]).astype(p.dtype, copy=False)
        positions = [plan.positions[k] for k, _ in decoded]
    affine = _volume_geometry(plan, res, p, positions, vol.shape[0], h0["rows"], h0["cols"])
    return vol.transpose(2, 1, 0), affine  # (slices, rows, cols) C-order -> (x, y, z) F-order: no copy


def _read_single(plan: ItemPlan, src: Path, res: ItemResult, opts: DecodeOptions):
    """A 2D image or a cine (frames along the third axis)."""
    h = plan.header
    path = src / plan.files[0]
    stored = pixels.read_stored(path, h)
    p = pixels.plan_presentation([h])
    colour = stored.ndim == (4 if h["frames"] > 1 else 3)
    if colour:
        arr, res.color = pixels.to_color_mode(stored, opts.color)
    else:
        arr = pixels.present(stored, p, h)
        res.intensity = _intensity(h, p)
        _record_voi(h, res, p)
        if opts.voi == "apply" and h["modality"] in PROJECTION_MODALITIES and res.voi != "none":
            arr = pixels.apply_voi(arr, path, h, p)
            res.voi_applied, res.intensity = True, "voi"
            res.window_center = res.window_width = None
    spacing = _spacing(h, res)
    res.channels = 3 if arr.shape[-1] == 3 and arr.ndim == (4 if h["frames"] > 1 else 3) else 1
    res.dtype = str(arr.dtype)
    if h["frames"] > 1:
        res.frames = arr.shape[0]
        res.frame_time_ms = h.get("frame_time")
        arr = arr.transpose((2, 1, 0, 3) if res.channels == 3 else (2, 1, 0))
        affine = _affine(None, None, spacing, None)
        res.spacing = [spacing[1], spacing[0], 1.0]
    else:
        arr = arr.transpose((1, 0, 2) if res.channels == 3 else (1, 0))
        affine = _affine(h.get("iop"), h.get("ipp"), spacing, None)
        res.spacing = [spacing[1], spacing[0]]
    res.shape = list(arr.shape[:3] if h["frames"] > 1 else arr.shape[:2])
    return arr, affine


def _read_nifti(path: Path, res: ItemResult):
    """Copy a NIfTI input with a fresh header (descrip, aux_file and extensions may hold identifiers)."""
    img = nib.load(str(path))
    hdr = img.header
    slope, inter = hdr.get_slope_inter()
    raw = slope in (None, 1.0) and inter in (None, 0.0)
    arr = np.asanyarray(img.dataobj) if raw else img.get_fdata(dtype=np.float32)
    zooms = [float(z) for z in hdr.get_zooms()[: min(arr.ndim, 3)]]
    res.spacing, res.spacing_source = zooms, "nifti"
    res.shape = list(arr.shape)  # 4D (time series, DWI) keeps its 4th axis
    res.frames = int(arr.shape[2]) if arr.ndim >= 3 else 1
    res.dtype, res.intensity = str(arr.dtype), "stored" if raw else "rescaled"
    return arr, img.affine


def _read_raster(path: Path, res: ItemResult, opts: DecodeOptions):
    """PNG / JPEG / PGM / TIFF via Pillow; (x, y[, 3]) with unit spacing (none is known)."""
    from PIL import Image

    if res is not None and path.read_bytes()[:2] in (b"P2", b"P5"):
        arr = read_pgm(path)
        res.dtype, res.channels = str(arr.dtype), 1
        res.shape, res.spacing, res.spacing_source = list(arr.T.shape), [1.0, 1.0], "none"
        return arr.T, np.eye(4)
    with Image.open(path) as im:
        if im.mode in ("P", "PA", "LA", "1", "CMYK", "YCbCr", "RGBA"):
            im = im.convert("RGB" if im.mode in ("P", "PA", "CMYK", "YCbCr", "RGBA") else "L")
        arr = np.asarray(im)
    if arr.ndim == 3:
        arr, res.color = pixels.to_color_mode(arr[..., :3], opts.color)
    res.channels = 3 if arr.ndim == 3 else 1
    res.dtype = str(arr.dtype)
    arr = arr.transpose((1, 0, 2) if arr.ndim == 3 else (1, 0))
    res.shape, res.spacing, res.spacing_source = list(arr.shape[:2]), [1.0, 1.0], "none"
    return arr, np.eye(4)


def read_pgm(path: Path) -> np.ndarray:
    """Netpbm graymap (P5 binary, P2 ASCII) with its stored values, (rows, cols).

    Hand-written because Pillow rescales any maxval other than 255/65535 to the full range
    (mini-MIAS and many older datasets use such maxvals), which would change the values.
    """
    data = path.read_bytes()
    fields, pos = [], 2
    while len(fields) < 3:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        start = pos
        while not data[pos:pos + 1].isspace():
            pos += 1
        fields.append(int(data[start:pos]))
    width, height, maxval = fields
    if data[:2] == b"P2":
        values = np.array(data[pos:].split(), dtype=np.int64)[: width * height]
        return values.reshape(height, width).astype(np.uint16 if maxval > 255 else np.uint8)
    dtype = np.dtype(">u2") if maxval > 255 else np.dtype("u1")
    arr = np.frombuffer(data, dtype=dtype, count=width * height, offset=pos + 1).reshape(height, width)
    return arr.astype(dtype.newbyteorder("="))
