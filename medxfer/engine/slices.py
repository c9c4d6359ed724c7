"""Volumes and cines as 2D samples: which slices (or frames) a 2D network sees, and how their
predictions become one prediction per item.

Three bundle keys (documented in the README, *Training → Volumes and cines*):

- ``input``: ``2d`` — one slice or frame per sample; ``2.5d`` — slice k with its neighbours k−1 and
  k+1 as the three channels (the usual way to feed CT/MR to RGB-pretrained encoders). At the ends of
  the slice axis the missing neighbour repeats the end slice (replicate padding), so the first sample
  of a volume is (0, 0, 1). A 2D image in a 2.5D cohort is its own three channels. ``3d`` — the
  whole volume is the sample, for a 3D network (:mod:`.segmentation3d`); ``slices`` and ``aggregate`` do
  not apply.
- ``slices``: which slices become samples — ``all``, ``center`` (the middle one: index ``n // 2``),
  ``every:K`` (0, K, 2K, …), ``range:LO-HI`` (fractions of the extent, ``0.2-0.8`` keeps slices
  ``ceil(LO·(n−1)) … floor(HI·(n−1))``; never empty: a range narrower than one slice keeps the one
  nearest its middle) or ``labelled`` (slices that carry their own label, from per-slice labels).
  ``null`` (the default with ``input: 2d``) keeps today's behaviour: 2D items only, volumes and cines
  left out and counted.
- ``aggregate``: how sample probabilities become one per item — ``mean``, ``max``, ``top:K`` (mean of
  the K highest). Binary tasks aggregate P(positive class) and P(negative) = 1 − that; with more
  classes each class is aggregated on its own and the row renormalised to sum to 1.

Validation AUC (checkpoint choice), the Youden operating point, test metrics, ``predictions.csv`` and
everything the report computes from it are per item, never per slice.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.errors import MedxferError

INPUTS = ("2d", "2.5d", "3d")
SLICE_MODES = ("all", "center", "every:K", "range:LO-HI", "labelled")
AGGREGATES = ("mean", "max", "top:K")
_EVERY = re.compile(r"^every:(\d+)$")
_RANGE = re.compile(r"^range:(\d*\.?\d+)-(\d*\.?\d+)$")
_TOP = re.compile(r"^top:(\d+)$")


class SliceSettingError(MedxferError, ValueError):
    """A value of ``input``, ``slices`` or ``aggregate`` that is not one of the documented forms."""


def check_input(value: str | None) -> str:
    """``2d``, ``2.5d`` or ``3d`` (``None`` is ``2d``), lower-cased."""
    value = "2d" if value is None else str(value).lower()
    if value not in INPUTS:
        raise SliceSettingError(f"input: {value!r} is not one of {', '.join(INPUTS)}")
    return value


def check_channels(input_mode: str | None, in_channels: int) -> None:
    """2.5D samples are three channels (k−1, k, k+1): the network must take three."""
    if check_input(input_mode) == "2.5d" and int(in_channels) != 3:
        raise SliceSettingError(f"input: 2.5d makes 3-channel samples (slices k-1, k, k+1); in_channels is "
                                f"{in_channels}: set in_channels: 3 (or leave it unset)")


@dataclass(frozen=True)
class SliceSelection:
    """A parsed ``slices`` value."""

    mode: str  # all | center | every | range | labelled
    step: int = 1
    low: float = 0.0
    high: float = 1.0

    @classmethod
    def parse(cls, value: str) -> SliceSelection:
        text = str(value).strip().lower()
        if text in ("all", "center", "labelled"):
            return cls(text)
        m = _EVERY.match(text)
        if m:
            if int(m.group(1)) < 1:
                raise SliceSettingError(f"slices: {value!r}: every:K needs K >= 1")
            return cls("every", step=int(m.group(1)))
        m = _RANGE.match(text)
        if m:
            low, high = float(m.group(1)), float(m.group(2))
            if not 0.0 <= low <= high <= 1.0:
                raise SliceSettingError(f"slices: {value!r}: range:LO-HI needs 0 <= LO <= HI <= 1 "
                                        "(fractions of the slice axis)")
            return cls("range", low=low, high=high)
        raise SliceSettingError(f"slices: {value!r} is not one of {', '.join(SLICE_MODES)}")

    def select(self, n: int, labelled: Iterable[int] = ()) -> list[int]:
        """The slice indices (ascending) of an item with ``n`` slices; ``labelled`` are the slices
        that carry their own label (used by ``labelled``)."""
        if n <= 0:
            return []
        if self.mode == "all":
            return list(range(n))
        if self.mode == "center":
            return [n // 2]
        if self.mode == "every":
            return list(range(0, n, self.step))
        if self.mode == "labelled":
            return sorted(k for k in set(labelled) if 0 <= k < n)
        lo, hi = math.ceil(self.low * (n - 1) - 1e-9), math.floor(self.high * (n - 1) + 1e-9)
        if hi < lo:  # narrower than one slice: the one nearest the range's middle
            return [min(n - 1, max(0, round((self.low + self.high) / 2 * (n - 1))))]
        return list(range(lo, hi + 1))


def check_slices(value: str | None) -> SliceSelection | None:
    """Parse a ``slices`` setting (None stays None: 2D items only)."""
    return None if value is None else SliceSelection.parse(value)


def slab(k: int, n: int, input_mode: str) -> list[int]:
    """The slice indices that make the channels of sample ``k``: ``[k]`` (2d) or ``[k-1, k, k+1]``
    clamped to ``0 … n-1`` (2.5d: the end slice repeats at the edges)."""
    if input_mode == "2.5d":
        return [max(k - 1, 0), k, min(k + 1, n - 1)]
    return [k]


def check_aggregate(value: str | None) -> str:
    """``mean``, ``max`` or ``top:K`` (None is ``mean``)."""
    text = "mean" if value is None else str(value).strip().lower()
    m = _TOP.match(text)
    if text in ("mean", "max") or (m and int(m.group(1)) >= 1):
        return text
    raise SliceSettingError(f"aggregate: {value!r} is not one of {', '.join(AGGREGATES)} (K >= 1)")


def _reduce(values: np.ndarray, how: str) -> float:
    if how == "mean":
        return float(values.mean())
    if how == "max":
        return float(values.max())
    k = int(how.split(":")[1])
    return float(np.sort(values)[::-1][:k].mean())


def aggregate_probabilities(prob: np.ndarray, item_ids: Sequence[str], how: str = "mean"
                            ) -> tuple[list[str], np.ndarray]:
    """Per-sample probabilities ``(N, C)`` → one row per item, items in order of first appearance.

    Binary: P(class 1) is aggregated and P(class 0) = 1 − it (so ``max`` is the most suspicious
    slice). More classes: each column aggregated, rows renormalised."""
    how = check_aggregate(how)
    order: dict[str, list[int]] = {}
    for i, item_id in enumerate(item_ids):
        order.setdefault(item_id, []).append(i)
    prob = np.asarray(prob, dtype=np.float64)
    if prob.ndim != 2 or len(prob) != len(item_ids):
        raise ValueError(f"{prob.shape} probabilities for {len(item_ids)} samples")
    out = np.zeros((len(order), prob.shape[1]))
    for row, rows in enumerate(order.values()):
        if prob.shape[1] == 2:
            p1 = _reduce(prob[rows, 1], how)
            out[row] = (1.0 - p1, p1)
        else:
            values = np.array([_reduce(prob[rows, c], how) for c in range(prob.shape[1])])
            out[row] = values / values.sum() if values.sum() > 0 else np.full(prob.shape[1], 1.0 / prob.shape[1])
    return list(order), out
