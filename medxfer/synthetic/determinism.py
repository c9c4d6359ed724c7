"""Reproducibility of everything synthetic: the default random generator and UIDs derived from it.

Every writer takes an optional ``rng`` (:func:`rng_or_default`: ``np.random.default_rng(0)``).
UIDs come from :func:`pydicom.uid.generate_uid` with ``entropy_srcs`` built from rng draws, the
patient and the output path (:func:`make_uid`), so the same rng and location reproduce the same
UIDs while two calls writing to different places never share UIDs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.uid import UID, generate_uid

__all__ = ["make_uid", "rng_or_default"]


def rng_or_default(rng: np.random.Generator | None) -> np.random.Generator:
    """``rng``, or a fresh ``np.random.default_rng(0)`` when it is None."""
    return np.random.default_rng(0) if rng is None else rng


def make_uid(rng: np.random.Generator, *parts: Any) -> UID:
    """A UID from generate_uid, reproducible for the same rng state and parts."""
    salt = [str(int(v)) for v in rng.integers(0, 2**63 - 1, size=2)]
    return generate_uid(entropy_srcs=[*salt, *(str(p) for p in parts)])
