"""Slices of cached volumes and cines, read without decoding the whole item.

A slice sample (:mod:`medxfer.engine.slices`) names its item's NIfTI file and the slice indices its
channels read. Ingest writes the cache uncompressed and unscaled, so a memory map of the file reads
exactly those slices from disk (one slice of a 512² CT is 0.5 MB); the maps of recent files are kept
per process (a scaled file gets nibabel's array proxy instead, which reads slices on demand too). A
compressed ``.nii.gz`` cannot be read in parts cheaply: its last two volumes are kept decoded instead,
so a volume is never decompressed once per slice.

Intensity scaling that depends on the data (MR percentiles, min–max) is computed over the whole
volume once per process (:func:`volume_percentiles`), so every slice of a volume gets the same
scale — the preset applies per volume, not per slice.
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np

# Percentiles are taken on at most this many voxels (a regular subsample of the volume): a 300-slice
# 512² CT has 79 M voxels, and a quantile of 4 M evenly spread ones differs in the third digit at most.
PERCENTILE_SAMPLE = 4_000_000


def _stamp(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return path, st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _proxy(path: str, size: int, mtime: int):
    """An uncompressed NIfTI's voxels, read on demand, keyed by file identity.

    A file that stores its voxels unscaled (slope 1 or unset, intercept 0 or unset: what ingest writes)
    is a read-only ``np.memmap`` of its data block: taking a slice costs tens of µs, where nibabel's
    ``ArrayProxy`` opens the file and canonicalises the slicer on every call (about 0.6 ms). A map
    holds no file offset, so forked DataLoader workers can share it. Scaled files keep the proxy,
    which applies the scaling."""
    proxy = nib.load(path, mmap=False).dataobj
    slope, inter = float(proxy.slope), float(proxy.inter)
    if (math.isnan(slope) or slope == 1.0) and (math.isnan(inter) or inter == 0.0):
        try:  # built from the header, so a failure cannot fall back to reading the whole file
            return np.memmap(path, dtype=proxy.dtype, mode="r", shape=tuple(proxy.shape), order=proxy.order,
                             offset=int(proxy.offset))
        except (ValueError, OSError):  # an empty or truncated file: the proxy says what is wrong when read
            pass
    return proxy


@functools.lru_cache(maxsize=2)
def _decoded(path: str, size: int, mtime: int) -> np.ndarray:
    """A compressed NIfTI decoded whole (the last two kept)."""
    return np.asarray(nib.load(path).dataobj)


def _array(path: str):
    key = _stamp(str(path))
    return _decoded(*key) if str(path).endswith(".gz") else _proxy(*key)


def read_slices(path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
    """Slices ``indices`` along the third axis of a NIfTI item: ``(X, Y, S)`` for grey volumes,
    ``(X, Y, S, 3)`` for colour cines (float32; a view whose memory is slice-first)."""
    data = _array(str(path))
    if len(data.shape) < 3:
        raise ValueError(f"{path}: a {tuple(data.shape)} image has no slice axis")
    picks = [int(i) for i in indices]
    if not picks or min(picks) < 0 or max(picks) >= data.shape[2]:
        raise ValueError(f"{path}: slices {list(indices)} outside 0..{data.shape[2] - 1}")
    # Filled slice by slice into a slice-first float32 buffer (each slice read once, converted as it
    # is stored) and returned as its (X, Y, S) view: the channel-first tensor that LoadItemd makes of
    # it (movedim) is then already contiguous, with no copy.
    out = np.empty((len(picks), *data.shape[:2], *data.shape[3:]), dtype=np.float32)
    first: dict[int, int] = {}
    for i, k in enumerate(picks):
        if k in first:
            out[i] = out[first[k]]
        else:
            out[i] = data[:, :, k, ...]
            first[k] = i
    return np.moveaxis(out, 0, 2)


@functools.lru_cache(maxsize=256)
def _percentiles(path: str, size: int, mtime: int, lower: float, upper: float) -> tuple[float, float]:
    data = _array(path)
    if (lower, upper) == (0.0, 100.0):  # min and max exactly: the 8-bit test must not miss one voxel
        whole = np.asarray(data)
        return float(whole.min()), float(whole.max())
    n = int(np.prod(data.shape))
    step = max(1, int(np.ceil((n / PERCENTILE_SAMPLE) ** (1 / 3))))
    sample = np.asarray(data[::step, ::step, ::step, ...], dtype=np.float32)
    lo, hi = np.percentile(sample, [lower, upper])
    return float(lo), float(hi)


def volume_percentiles(path: str | os.PathLike, lower: float, upper: float) -> tuple[float, float]:
    """The ``lower`` and ``upper`` percentiles of a whole volume or cine (0 and 100: its min and max),
    computed once per file and process."""
    return _percentiles(*_stamp(str(path)), float(lower), float(upper))
