"""Statistics for comparing pretrained-weights sources in transfer-learning studies.

Everything here is plain numpy + scipy and is checked against R (``pROC``, ``stats``) in
``tests/study/test_stats.py``.

Methods
-------
* **AUC** (:func:`auc`): the Mann–Whitney estimate of P(score of a positive > score of a
  negative), ties counting 1/2 — identical to the trapezoidal ROC AUC and to pROC's ``auc``
  with ``levels=c(0, 1), direction="<"``.
* **DeLong test** (:func:`delong_test`, :func:`delong_auc_ci`): DeLong, DeLong &
  Clarke-Pearson (1988), "Comparing the areas under two or more correlated receiver operating
  characteristic curves: a nonparametric approach", *Biometrics* 44:837–845. The structural
  components (placement values) and their covariance are computed with the fast midrank
  algorithm of Sun & Xu (2014), "Fast implementation of DeLong's algorithm for comparing the
  areas under correlated receiver operating characteristic curves", *IEEE Signal Processing
  Letters* 21(11):1389–1393 — O(n log n), no n_pos × n_neg placement matrix. The paired test
  is two-sided, z = (AUC1 − AUC2) / SE, as pROC's ``roc.test(method="delong", paired=TRUE)``;
  the one-AUC interval is pROC's ``ci.auc(method="delong")`` (normal, clipped to [0, 1]).
* **Bootstrap** (:func:`bootstrap_auc_ci`, :func:`bootstrap_mean_ci`): percentile intervals
  (Efron & Tibshirani 1993). The AUC bootstrap is *stratified* — positives and negatives are
  resampled separately, so every resample keeps the class counts and has an AUC — like pROC's
  ``ci.auc(method="bootstrap", boot.stratified=TRUE)``. With ``clusters`` the resampling unit
  is a cluster (e.g. an item whose predictions from several seeds were pooled), drawn within its
  class stratum, so that correlated rows are not treated as independent cases. Percentiles use
  linear interpolation (R ``quantile`` type 7). Reports use ≥ 2000 resamples (the default).
* **Wilcoxon signed-rank** (:func:`wilcoxon_signed_rank`): paired, two-sided, with R's
  ``wilcox.test(a, b, paired=TRUE)`` defaults: zero differences dropped; exact null
  distribution when fewer than 50 non-zero differences and neither ties nor zeros, otherwise
  the normal approximation with tie-corrected variance and continuity correction. The
  statistic reported is R's V (sum of the ranks of the positive differences).
* **Exact McNemar** (:func:`mcnemar_exact`): paired binary outcomes (e.g. pointing-game hits of
  two models on the same cases); the two-sided exact binomial test of the discordant pairs
  against 1/2, as R ``binom.test(b, b + c)`` / scipy ``binomtest`` (McNemar 1947, exact form).
* **Spearman** (:func:`spearman`): rank correlation as scipy ``spearmanr``; the two-sided p is
  the exact permutation p over all n! orderings for n ≤ 9 (as scipy ``permutation_test`` with
  every permutation: 2 × the smaller one-sided tail, at most 1) and scipy's t approximation
  above. With n < 3, or a constant input, rho and p are nan.
* **Holm** (:func:`holm`): Holm (1979), "A simple sequentially rejective multiple test
  procedure", *Scand. J. Statist.* 6:65–70; identical to R ``p.adjust(p, "holm")``.
* **Transfer score** (:func:`transfer_score`): the relative AUC gain of a pretrained source over
  training from scratch, in percent, as in van den Brandt, Fok, Mulders, Vanschoren &
  Cheplygina (2021), "Cats, not CAT scans: a study of dataset similarity in transfer learning
  for 2D medical image classification", arXiv:2107.05940.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as _sps

__all__ = [
    "DeLongResult",
    "auc",
    "bootstrap_auc_ci",
    "bootstrap_mean_ci",
    "delong_auc_ci",
    "delong_test",
    "holm",
    "mcnemar_exact",
    "mean_sd",
    "spearman",
    "transfer_score",
    "wilcoxon_signed_rank",
]

# Elements of the (resamples × units) work arrays held at once in the bootstraps.
_CHUNK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _binary_inputs(y, *scores) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validate labels in {0, 1} and finite scores of the same length."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be one-dimensional, got shape {y.shape}")
    out = []
    for s in scores:
        s = np.asarray(s, dtype=float)
        if s.shape != y.shape:
            raise ValueError(f"length mismatch: y has {y.shape[0]} cases, scores have "
                             f"{s.shape[0] if s.ndim else 'scalar'}")
        if not np.all(np.isfinite(s)):
            raise ValueError("scores must be finite (no nan/inf)")
        out.append(s)
    yf = y.astype(float)
    if not np.all((yf == 0) | (yf == 1)):
        raise ValueError("y must contain only 0 (negative) and 1 (positive)")
    return yf == 1, out


def _midrank(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based, ties get their average rank) of a 1-D array, O(n log n)."""
    return _sps.rankdata(x, method="average")


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _percentile_ci(stat: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stat, [alpha, 1.0 - alpha])  # linear = R quantile type 7
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------
# descriptive
# --------------------------------------------------------------------------------------------
def mean_sd(values) -> tuple[float, float]:
    """Mean and sample SD (ddof=1) ignoring nan; SD is nan when n < 2, both nan when empty."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    sd = float(np.std(v, ddof=1)) if v.size >= 2 else float("nan")
    return float(np.mean(v)), sd


def transfer_score(auc_source: float, auc_scratch: float) -> float:
    """Relative gain of a source over scratch in percent: (source − scratch) / scratch × 100.

    van den Brandt et al. (2021), "Cats, not CAT scans". nan when ``auc_scratch`` is 0 or nan.
    """
    a, b = float(auc_source), float(auc_scratch)
    if b == 0 or np.isnan(b) or np.isnan(a):
        return float("nan")
    return (a - b) / b * 100.0


# --------------------------------------------------------------------------------------------
# AUC and DeLong
# --------------------------------------------------------------------------------------------
def auc(y, p) -> float:
    """Binary ROC AUC (Mann–Whitney, ties count 1/2); nan if one class is absent."""
    pos, (p,) = _binary_inputs(y, p)
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        return float("nan")
    r = _midrank(p)
    return float((r[pos].sum() - m * (m + 1) / 2.0) / (m * n))


def _delong_components(pos: np.ndarray, scores: np.ndarray):
    """Sun & Xu (2014) fast DeLong: AUCs and structural components for k score rows.

    ``scores`` is (k, N). Returns (aucs (k,), v10 (k, m), v01 (k, n)) where v10 are the
    positives' placements (fraction of negatives below, ties 1/2) and v01 the negatives'
    (fraction of positives above).
    """
    x, yneg = scores[:, pos], scores[:, ~pos]
    m, n = x.shape[1], yneg.shape[1]
    tx = np.vstack([_midrank(r) for r in x])
    ty = np.vstack([_midrank(r) for r in yneg])
    tz = np.vstack([_midrank(r) for r in np.hstack([x, yneg])])
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, v10, v01


def _delong_cov(pos: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    aucs, v10, v01 = _delong_components(pos, scores)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(aucs), len(aucs)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(aucs), len(aucs)))
    return aucs, s10 / m + s01 / n


def _require_both_classes(pos: np.ndarray) -> tuple[int, int]:
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        raise ValueError(f"DeLong needs both classes: got {m} positive and {n} negative cases")
    return m, n


@dataclass
class DeLongResult:
    """Paired DeLong comparison of two correlated AUCs (two-sided)."""

    auc1: float
    auc2: float
    difference: float  # auc1 - auc2
    se: float
    z: float
    p_value: float
    n_positive: int
    n_negative: int


def delong_test(y, p1, p2) -> DeLongResult:
    """Paired two-sided DeLong test of AUC(p1) vs AUC(p2) on the same cases (fast midranks).

    Matches pROC ``roc.test(r1, r2, method="delong", paired=TRUE)``. If the SE of the
    difference is 0 (e.g. identical predictions) z = 0 and p = 1.
    """
    pos, (p1, p2) = _binary_inputs(y, p1, p2)
    m, n = _require_both_classes(pos)
    aucs, cov = _delong_cov(pos, np.vstack([p1, p2]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    # Identical (or identically ranked) predictions give var = 0 up to rounding noise.
    if var <= 1e-12 * float(cov[0, 0] + cov[1, 1]) or var <= 0.0:
        se, z, p = 0.0, 0.0, 1.0
    else:
        se = float(np.sqrt(var))
        z = diff / se
        p = float(2.0 * _sps.norm.sf(abs(z)))
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, float(z), p, m, n)


def delong_auc_ci(y, p, level: float = 0.95) -> tuple[float, float]:
    """DeLong normal CI of one AUC, clipped to [0, 1] (pROC ``ci.auc(method="delong")``)."""
    _check_level(level)
    pos, (p,) = _binary_inputs(y, p)
    _require_both_classes(pos)
    aucs, cov = _delong_cov(pos, p[None, :])
    se = float(np.sqrt(max(cov[0, 0], 0.0)))
    q = _sps.norm.ppf(0.5 + level / 2.0)
    a = float(aucs[0])
    return float(min(max(a - q * se, 0.0), 1.0)), float(min(max(a + q * se, 0.0), 1.0))


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------
def _resample_counts(rng: np.random.Generator, b: int, k: int) -> np.ndarray:
    """(b, k) multinomial counts: how often each of k units is drawn in b resamples of size k."""
    idx = rng.integers(0, k, size=(b, k))
    idx += (np.arange(b) * k)[:, None]
    return np.bincount(idx.ravel(), minlength=b * k).reshape(b, k)


def bootstrap_auc_ci(y, p, n_resamples: int = 2000, level: float = 0.95, seed: int = 0,
                     clusters=None) -> tuple[float, float]:
    """Stratified percentile bootstrap CI of the AUC; (nan, nan) if one class is absent.

    Positives and negatives are resampled separately with replacement (class counts kept, so
    every resample has an AUC). With ``clusters`` (one id per row, e.g. the item id when several
    seeds' predictions are pooled) whole clusters are drawn within their class stratum and all
    their rows enter the resample; a cluster's class is its rows' y (assumed constant).
    Seeded, hence reproducible; vectorised over resamples (no per-resample Python loop).
    Any ``n_resamples >= 1`` is accepted; reports use the default 2000 or more.
    """
    _check_level(level)
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n_resamples = int(n_resamples)
    pos, (p,) = _binary_inputs(y, p)
    if pos.all() or not pos.any():
        return float("nan"), float("nan")

    def units(mask: np.ndarray) -> tuple[np.ndarray, int]:
        """Unit index (0..k-1) of each row in the stratum, and k."""
        if clusters is None:
            k = int(mask.sum())
            return np.arange(k), k
        ids = np.asarray(clusters)[mask]
        uniq, inv = np.unique(ids, return_inverse=True)
        return inv.ravel(), len(uniq)

    if clusters is not None and np.asarray(clusters).shape != pos.shape:
        raise ValueError("clusters must have one id per case")
    xp, yn = p[pos], p[~pos]
    up, kp = units(pos)
    un, kn = units(~pos)
    if clusters is not None:
        cl = np.asarray(clusters)
        if np.intersect1d(cl[pos], cl[~pos]).size:
            raise ValueError("a cluster contains both positive and negative cases")

    # negatives sorted by score; for each positive, the slice of tied negatives [lo, hi)
    order = np.argsort(yn, kind="stable")
    yn_sorted, un_sorted = yn[order], un[order]
    lo = np.searchsorted(yn_sorted, xp, side="left")
    hi = np.searchsorted(yn_sorted, xp, side="right")

    rng = np.random.default_rng(seed)
    # chunking depends on the number of units only, so pooled duplicates draw identically
    chunk = max(1, min(n_resamples, _CHUNK_ELEMENTS // (kp + kn)))
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        cp = _resample_counts(rng, b, kp)  # (b, kp)
        cn = _resample_counts(rng, b, kn)  # (b, kn)
        wp = cp[:, up].astype(float)  # row weights of positives (b, m)
        wn = cn[:, un_sorted].astype(float)  # row weights of sorted negatives (b, n)
        cum = np.zeros((b, wn.shape[1] + 1))
        np.cumsum(wn, axis=1, out=cum[:, 1:])
        below = cum[:, lo]
        tied = cum[:, hi] - below
        num = np.einsum("ij,ij->i", wp, below + 0.5 * tied)
        out[start:start + b] = num / (wp.sum(axis=1) * cum[:, -1])
    return _percentile_ci(out, level)


def bootstrap_mean_ci(values, n_resamples: int = 2000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean (nan entries ignored; (nan, nan) when empty)."""
    _check_level(level)
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n_resamples = int(n_resamples)
    v = np.asarray(values, dtype=float).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, _CHUNK_ELEMENTS // v.size))
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        out[start:start + b] = v[rng.integers(0, v.size, size=(b, v.size))].mean(axis=1)
    return _percentile_ci(out, level)


# --------------------------------------------------------------------------------------------
# paired tests, multiplicity
# --------------------------------------------------------------------------------------------
def wilcoxon_signed_rank(a, b) -> tuple[float, float]:
    """Paired two-sided Wilcoxon signed-rank test as R ``wilcox.test(a, b, paired=TRUE)``.

    Returns (V, p): V = sum of the ranks of the positive differences a − b (R's statistic).
    Zero differences are dropped; with n < 50 remaining differences and no ties and no zeros the
    exact p-value is used, otherwise the normal approximation with tie-corrected variance and
    continuity correction. scipy's ``method="auto"`` switches at n <= 50 and its statistic is
    min(V+, V−) for two-sided tests, so the method is chosen here explicitly and V recomputed.
    All differences zero → (0.0, 1.0). Pairs with a nan are dropped.
    """
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"length mismatch: {a.size} vs {b.size}")
    d = a - b
    d = d[~np.isnan(d)]
    zeros = bool(np.any(d == 0))
    d = d[d != 0]
    n = d.size
    if n == 0:
        return 0.0, 1.0
    r = _midrank(np.abs(d))
    v = float(r[d > 0].sum())
    ties = np.unique(r).size != n
    exact = n < 50 and not ties and not zeros
    res = _sps.wilcoxon(d, zero_method="wilcox", correction=not exact,
                        alternative="two-sided", method="exact" if exact else "asymptotic")
    return v, float(min(1.0, res.pvalue))


def holm(p_values) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, as R ``p.adjust(p, "holm")``.

    nan entries stay nan and do not count towards the number of tests m.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    flat = p.ravel()
    ok = ~np.isnan(flat)
    q = flat[ok]
    m = q.size
    if m:
        o = np.argsort(q, kind="stable")
        adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[o]))
        res = np.empty(m)
        res[o] = adj
        of = out.ravel()
        of[ok] = res
        out = of.reshape(p.shape)
    return out


def mcnemar_exact(a, b) -> float:
    """Two-sided exact McNemar test of paired binary outcomes ``a`` and ``b`` (same cases).

    Only the discordant pairs count: n01 = #(a and not b), n10 = #(b and not a); under the null
    each discordant pair goes either way with probability 1/2, so
    p = min(1, 2 · P(Binomial(n01 + n10, 1/2) ≤ min(n01, n10))) — R ``binom.test(n01, n01 + n10)``,
    scipy ``binomtest``. No discordant pair → p = 1. Inputs: bool or 0/1 values, equal length.
    """
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"length mismatch: {a.size} vs {b.size}")
    for x in (a, b):
        xf = x.astype(float)
        if not np.all((xf == 0) | (xf == 1)):
            raise ValueError("mcnemar_exact needs binary outcomes (bool or 0/1, no nan)")
    a, b = a.astype(bool), b.astype(bool)
    n01 = int(np.sum(a & ~b))
    n10 = int(np.sum(~a & b))
    n = n01 + n10
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * _sps.binom.cdf(min(n01, n10), n, 0.5)))


_SPEARMAN_EXACT_MAX_N = 9


def spearman(x, y) -> tuple[float, float, int, str]:
    """Spearman rank correlation of paired values; pairs with a nan are dropped.

    Returns (rho, p, n, method): rho as scipy ``spearmanr`` (Pearson correlation of midranks);
    two-sided p by exact permutation over all n! orderings of ``y`` when n ≤ 9 (method
    ``"exact permutation"``; 2 × the smaller one-sided tail, at most 1, as scipy
    ``permutation_test(permutation_type="pairings", n_resamples=inf)``), otherwise scipy's t
    approximation (``"t approximation"``). With n < 3 or a constant input rho and p are nan and
    method is ``"undefined"``. (scipy's t approximation gives p = 0 at |rho| = 1 for any n —
    e.g. 3 sources — which the exact p, here 1/3, does not.)
    """
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"length mismatch: {x.size} vs {y.size}")
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    n = int(x.size)
    if n < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan"), float("nan"), n, "undefined"
    rx, ry = _midrank(x), _midrank(y)
    rho = float(np.corrcoef(rx, ry)[0, 1])
    if n > _SPEARMAN_EXACT_MAX_N:
        res = _sps.spearmanr(x, y)
        return float(res.statistic), float(res.pvalue), n, "t approximation"
    import itertools

    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
    cx = rx - rx.mean()
    cy = ry - ry.mean()
    null = (cy[perms] @ cx) / np.sqrt((cx @ cx) * (cy @ cy))
    tol = 1e-12 * max(1.0, abs(rho))
    greater = float(np.mean(null >= rho - tol))
    less = float(np.mean(null <= rho + tol))
    return rho, float(min(1.0, 2.0 * min(greater, less))), n, "exact permutation"
