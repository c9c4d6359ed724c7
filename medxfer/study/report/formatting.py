"""How the report writes numbers: fixed decimals, mean ± SD, CIs, p-values, signed changes, CSV values.

A value that is missing or not finite reads ``n/a`` in the HTML/Markdown tables and stays empty in the CSVs.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def finite(x: Any) -> bool:
    """Whether ``x`` is a finite real number (not None, nan or ±inf)."""
    return x is not None and isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


def fmt3(x: Any) -> str:
    """Three decimals: ``0.912``."""
    return f"{float(x):.3f}" if finite(x) else "n/a"


def fmt4g(x: Any) -> str:
    """Four significant digits: ``12.35``, ``0.001234``."""
    return f"{float(x):.4g}" if finite(x) else "n/a"


def fmt_mean_sd(mean: float, sd: float) -> str:
    """``0.912 ± 0.031``; the mean alone when the SD is undefined (one run)."""
    if not finite(mean):
        return "n/a"
    return f"{mean:.3f} ± {sd:.3f}" if finite(sd) else f"{mean:.3f}"


def fmt_ci(lo: float, hi: float) -> str:
    """``[0.880, 0.940]``."""
    return f"[{lo:.3f}, {hi:.3f}]" if finite(lo) and finite(hi) else "n/a"


def fmt_p(p: float) -> str:
    """A p-value: ``<0.001`` or three significant digits."""
    if not finite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3g}"


def fmt_signed(x: float | None, digits: int = 3, suffix: str = "") -> str:
    """A difference with its sign: ``+0.120``, ``-4.5 %``."""
    return f"{x:+.{digits}f}{suffix}" if finite(x) else "n/a"


def csv_num(x: Any) -> str:
    """A CSV value at full precision: integers as such, floats by ``repr``, empty when missing."""
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return repr(float(x)) if finite(x) else ""
