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
  the one-AUC interval is pROC's ``ci.auc(method="delong")`` (normal, clipped to [0, 1]); both
  match pROC 1.18.0 to 1e-9. A class with fewer than 2 cases gives se = z = p = nan (pROC: NA;
  the variance of one placement is undefined — no confident p from one negative), a class
  absent gives nan AUCs too (no error: reports must not crash); the interval is (nan, nan).
* **Clustered AUC** (``clusters=`` of :func:`delong_test`, :func:`delong_auc_ci`): Obuchowski
  (1997), "Nonparametric analysis of clustered ROC curve data", *Biometrics* 53:567–578 — several
  units (lesions, arteries) per cluster (patient), a cluster may hold both classes. The AUC is
  over all M positive × N negative units; with V10(X_i.) / V01(Y_i.) the sums of cluster i's
  positive / negative unit placements and m_i / n_i its unit counts,
  S10 = I10 / ((I10 − 1) M) Σ (V10(X_i.) − m_i θ)², S01 = I01 / ((I01 − 1) N) Σ (V01(Y_i.) − n_i θ)²,
  S11 = I / (I − 1) Σ (V10(X_i.) − m_i θ)(V01(Y_i.) − n_i θ) (only clusters holding both classes
  contribute), var = S10/M + S01/N + 2 S11/(MN); for two scores on the same units the covariance
  takes the cross products of the two scores' components, with S11 + S11' (Obuchowski's S11^(12)
  and S11^(21)). I10 / I01: clusters with a positive / negative unit, I: all clusters; fewer than
  2 clusters holding a class → nan. With one unit per cluster I10 = M, so S10 = Σ(V10 − θ)²/(M − 1),
  the ddof-1 sample variance DeLong and pROC use, and S11 = 0: the reduction to DeLong is exact
  (factor 1, no N/(N − 1) left over; tested against the pROC values). Matches the R function
  ``doAUCcluster`` (FDA DIDSR, adapted from Obuchowski's own ``funcs_clusteredROC.R``, Cleveland
  Clinic): its stored output for the CC0 mitotic-figure data of DIDSR/mitoticFigureCounts (155
  cells in 4 slides, 5 readers × 5 modalities, binary scores) — all 25 AUCs to 1e-15 and the
  10 × 10 (co)variance matrices to a relative 1e-11 — and a brute-force O(M N) implementation of
  the paper's formulas. (Obuchowski's own MRA example, 65 arteries of 36 patients, AUC 0.9837
  (SE 0.0108) and 0.9852 (0.0097), could not be reproduced: its Table 3 data are not public here.)
* **Bootstrap** (:func:`bootstrap_auc_ci`, :func:`bootstrap_macro_auc_ci`,
  :func:`bootstrap_auc_test`, :func:`bootstrap_mean_ci`): percentile intervals (Efron &
  Tibshirani 1993), percentiles by linear interpolation (R ``quantile`` type 7); reports use
  ≥ 2000 resamples (the default). The AUC bootstrap is *stratified* — each class resampled
  separately, so every resample keeps the class counts and has an AUC — like pROC's
  ``ci.auc(method="bootstrap", boot.stratified=TRUE)``. With ``clusters`` the resampling unit
  is a cluster (an item whose predictions from several seeds were pooled, a patient): drawn
  within its class stratum when every cluster is single-class; when some cluster holds two
  classes (a patient with a benign and a malignant lesion), clusters are drawn unstratified and
  resamples lacking a class are skipped and counted (:class:`BootstrapCI` ``.n_skipped``), as
  pROC's ``boot.stratified=FALSE`` ignores its NA resamples. A class with fewer than 2 units
  (cases; clusters holding it) gives (nan, nan) / p = nan.
* **Multi-class AUC** (:func:`macro_ovr_auc`): the macro one-vs-rest AUC, the mean over classes c
  of AUC(y == c, prob[:, c]) — sklearn ``roc_auc_score(multi_class="ovr", average="macro")``
  when every class is present (tested); classes absent from y are left out. A vector or (n, 2)
  ``prob`` gives the binary AUC of class 1. Its bootstrap CI (:func:`bootstrap_macro_auc_ci`)
  resamples as above, stratified by class.
* **Paired bootstrap test of two AUCs** (:func:`bootstrap_auc_test`): pROC
  ``roc.test(method="bootstrap", paired=TRUE)`` (pROC ``bootstrap.test``): both models scored on
  the same resamples, D = (A1 − A2) / sd(bootstrap A1 − A2) (sd ddof 1), p = 2 Φ(−|D|);
  identical predictions → D = 0, p = 1 (pROC's special case). For macro OvR AUCs (the 3-class
  mammography task, 7-class ISIC) and binary AUCs alike; binary, it agrees with DeLong's p
  asymptotically (tested loosely). pROC gives p = 0 when the differences do not vary but the
  AUCs differ; here p = nan.
* **Wilcoxon signed-rank** (:func:`wilcoxon_signed_rank`): paired, two-sided, matching R
  ``wilcox.test(a, b, paired=TRUE)`` of **R < 4.6.0** (values from R 4.2.2): zero differences
  dropped (Wilcoxon's method); exact null distribution only when fewer than 50 non-zero
  differences and neither ties nor zeros, otherwise the normal approximation with
  tie-corrected variance and continuity correction; ranks of the exact differences (R's old
  ``digits.rank = Inf``). The statistic reported is R's V (sum of the ranks of the positive
  differences). R 4.6.0 changed the defaults (NEWS: "wilcox.test() can now perform exact
  (conditional) inference in case of ties"): below 50 differences *counting zeros* the exact
  conditional (permutation) distribution of the Streitberg–Röhmel shift algorithm is used even
  with ties or zeros, and zeros stay in the ranking (Pratt), so V and p differ from medxfer
  whenever ties or zeros occur; later R-devel also keeps zeros in the normal approximation and
  rounds differences to 7 significant digits before ranking (``digits.rank = 7``). Without ties
  and zeros all versions agree.
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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as _sps

__all__ = [
    "BootstrapCI",
    "DeLongResult",
    "PairedAUCTest",
    "auc",
    "bootstrap_auc_ci",
    "bootstrap_auc_test",
    "bootstrap_macro_auc_ci",
    "bootstrap_mean_ci",
    "delong_auc_ci",
    "delong_test",
    "holm",
    "macro_ovr_auc",
    "mcnemar_exact",
    "mean_sd",
    "spearman",
    "transfer_score",
    "wilcoxon_signed_rank",
]

# Elements of the (resamples × units) work arrays held at once in the bootstraps; the draws are chunked by
# this, so changing it changes the random stream.
_CHUNK_ELEMENTS = 2_000_000
# Elements of the (resamples × rows) weight arrays evaluated at once (rows outnumber clusters); does not
# change results.
_ROW_CHUNK_ELEMENTS = 2_000_000


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
# AUC, DeLong and Obuchowski's clustered DeLong
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
    """AUCs and their DeLong covariance matrix S10/m + S01/n (needs m, n >= 2)."""
    aucs, v10, v01 = _delong_components(pos, scores)
    m, n = v10.shape[1], v01.shape[1]
    return aucs, np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n


def _cluster_index(clusters, n_rows: int) -> tuple[np.ndarray, int]:
    """Cluster number (0..I-1) of each row and the number of clusters I."""
    cl = np.asarray(clusters)
    if cl.shape != (n_rows,):
        raise ValueError(f"clusters must have one id per case: got shape {cl.shape} for {n_rows} cases")
    uniq, inv = np.unique(cl, return_inverse=True)
    return inv.ravel(), len(uniq)


def _obuchowski_cov(pos: np.ndarray, scores: np.ndarray, inv: np.ndarray,
                    n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """AUCs over all positive × negative unit pairs and their clustered covariance matrix.

    Obuchowski (1997), eqs. for S10, S01, S11: with M positive and N negative units, m_i / n_i of
    them in cluster i, V10(X_i.) / V01(Y_i.) the sums of cluster i's positive / negative unit
    placements, A_i = V10(X_i.) − m_i θ and B_i = V01(Y_i.) − n_i θ,
    S10 = I10 / ((I10 − 1) M) Σ A_i A_i',  S01 = I01 / ((I01 − 1) N) Σ B_i B_i',
    S11 = I / (I − 1) Σ A_i B_i'  and  Cov = S10 / M + S01 / N + (S11 + S11') / (M N),
    I10 / I01 the numbers of clusters with a positive / negative unit, I all clusters. Needs
    I10, I01 >= 2. One unit per cluster gives A_i B_i = 0 and S10 = the sample covariance of the
    placements (ddof 1): exactly DeLong's S10/m + S01/n.
    """
    aucs, v10, v01 = _delong_components(pos, scores)
    big_m, big_n = v10.shape[1], v01.shape[1]
    cp, cn = inv[pos], inv[~pos]
    m_i = np.bincount(cp, minlength=n_clusters).astype(float)
    n_i = np.bincount(cn, minlength=n_clusters).astype(float)
    a = np.vstack([np.bincount(cp, weights=r, minlength=n_clusters) for r in v10]) - aucs[:, None] * m_i
    b = np.vstack([np.bincount(cn, weights=r, minlength=n_clusters) for r in v01]) - aucs[:, None] * n_i
    i10, i01 = int(np.count_nonzero(m_i)), int(np.count_nonzero(n_i))
    s10 = i10 / ((i10 - 1.0) * big_m) * (a @ a.T)
    s01 = i01 / ((i01 - 1.0) * big_n) * (b @ b.T)
    s11 = n_clusters / (n_clusters - 1.0) * (a @ b.T)
    return aucs, s10 / big_m + s01 / big_n + (s11 + s11.T) / (big_m * big_n)


def _class_units(pos: np.ndarray, clusters) -> tuple[np.ndarray | None, int, int, int]:
    """Cluster index (None without clusters), number of clusters, and the number of units that
    hold a positive / a negative: cases without clusters, clusters with them."""
    if clusters is None:
        return None, int(pos.size), int(pos.sum()), int((~pos).sum())
    inv, n_clusters = _cluster_index(clusters, pos.size)
    return inv, n_clusters, int(np.unique(inv[pos]).size), int(np.unique(inv[~pos]).size)


@dataclass
class DeLongResult:
    """Paired comparison of two correlated AUCs (two-sided), DeLong or clustered (Obuchowski).

    ``se``, ``z`` and ``p_value`` are nan when a class has fewer than 2 cases (with clusters: fewer
    than 2 clusters holding it); the AUCs too when a class is absent.
    """

    auc1: float
    auc2: float
    difference: float  # auc1 - auc2
    se: float
    z: float
    p_value: float
    n_positive: int
    n_negative: int
    n_clusters: int = 0  # clusters (patients); the number of cases without clusters
    method: str = "DeLong"


def delong_test(y, p1, p2, clusters=None) -> DeLongResult:
    """Paired two-sided DeLong test of AUC(p1) vs AUC(p2) on the same cases (fast midranks).

    Without ``clusters`` this is pROC ``roc.test(r1, r2, method="delong", paired=TRUE)``. With
    ``clusters`` (one id per row, e.g. the patient of each lesion) the AUCs are taken over all
    positive × negative rows and the variance and covariance come from cluster-level structural
    components, Obuchowski (1997) — a cluster may hold both classes. If the SE of the difference
    is 0 (e.g. identical predictions) z = 0 and p = 1. Fewer than 2 units (cases, or clusters
    holding the class) in a class → se = z = p = nan (pROC gives NA); a class absent → the AUCs
    are nan as well.
    """
    pos, (p1, p2) = _binary_inputs(y, p1, p2)
    inv, n_clusters, u_pos, u_neg = _class_units(pos, clusters)
    method = "DeLong" if clusters is None else "Obuchowski (clustered DeLong)"
    m, n = int(pos.sum()), int((~pos).sum())
    nan = float("nan")
    if m == 0 or n == 0:
        return DeLongResult(nan, nan, nan, nan, nan, nan, m, n, n_clusters, method)
    if u_pos < 2 or u_neg < 2:
        a1, a2 = auc(pos, p1), auc(pos, p2)
        return DeLongResult(a1, a2, a1 - a2, nan, nan, nan, m, n, n_clusters, method)
    scores = np.vstack([p1, p2])
    aucs, cov = _delong_cov(pos, scores) if inv is None else _obuchowski_cov(pos, scores, inv, n_clusters)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    # Identical (or identically ranked) predictions give var = 0 up to rounding noise.
    if var <= 1e-12 * float(cov[0, 0] + cov[1, 1]) or var <= 0.0:
        se, z, p = 0.0, 0.0, 1.0
    else:
        se = float(np.sqrt(var))
        z = diff / se
        p = float(2.0 * _sps.norm.sf(abs(z)))
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, float(z), p, m, n, n_clusters, method)


def delong_auc_ci(y, p, level: float = 0.95, clusters=None) -> tuple[float, float]:
    """DeLong normal CI of one AUC, clipped to [0, 1] (pROC ``ci.auc(method="delong")``).

    With ``clusters`` the variance is Obuchowski's (1997) clustered one. (nan, nan) when a class
    has fewer than 2 units (cases; with clusters, clusters holding it).
    """
    _check_level(level)
    pos, (p,) = _binary_inputs(y, p)
    inv, n_clusters, u_pos, u_neg = _class_units(pos, clusters)
    if u_pos < 2 or u_neg < 2:
        return float("nan"), float("nan")
    scores = p[None, :]
    aucs, cov = _delong_cov(pos, scores) if inv is None else _obuchowski_cov(pos, scores, inv, n_clusters)
    se = float(np.sqrt(max(cov[0, 0], 0.0)))
    q = _sps.norm.ppf(0.5 + level / 2.0)
    a = float(aucs[0])
    return float(min(max(a - q * se, 0.0), 1.0)), float(min(max(a + q * se, 0.0), 1.0))


# --------------------------------------------------------------------------------------------
# multi-class
# --------------------------------------------------------------------------------------------
def _ovr_problems(y, prob) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Class index per row and the one-vs-rest problems (positive mask, score) whose AUCs are averaged.

    ``prob`` a vector or (n, 2): one problem, class 1 scored by ``prob`` / ``prob[:, 1]`` (the binary
    AUC, as sklearn and pROC). (n, k ≥ 3): one problem per class present in ``y`` with other classes
    present too; none when fewer than two classes are present.
    """
    prob = np.asarray(prob, dtype=float)
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be one-dimensional, got shape {y.shape}")
    if prob.ndim not in (1, 2) or prob.shape[0] != y.shape[0]:
        raise ValueError(f"prob must be (n,) or (n, k) with n = {y.shape[0]} cases, got shape {prob.shape}")
    if not np.all(np.isfinite(prob)):
        raise ValueError("scores must be finite (no nan/inf)")
    k = 2 if prob.ndim == 1 else prob.shape[1]
    yf = y.astype(float)
    if k < 2 or not np.all((yf == np.round(yf)) & (yf >= 0) & (yf < k)):
        raise ValueError(f"y must hold class indices 0..{k - 1} matching prob's {k} columns")
    yi = yf.astype(int)
    if k == 2:
        score = prob if prob.ndim == 1 else prob[:, 1]
        pos = yi == 1
        return yi, [(pos, score)] if 0 < pos.sum() < pos.size else []
    counts = np.bincount(yi, minlength=k)
    present = [c for c in range(k) if 0 < counts[c] < yi.size]
    return yi, [(yi == c, prob[:, c]) for c in present]


def macro_ovr_auc(y, prob) -> float:
    """Macro one-vs-rest AUC: the mean over classes c of AUC(y == c, prob[:, c]).

    ``y`` class indices, ``prob`` (n, k). Classes absent from ``y`` are left out of the mean; nan with
    fewer than two classes present. Equals sklearn ``roc_auc_score(y, prob, multi_class="ovr",
    average="macro")`` when every class is present. A vector or (n, 2) ``prob`` gives the binary AUC
    of class 1 (sklearn's binary case).
    """
    _, problems = _ovr_problems(y, prob)
    if not problems:
        return float("nan")
    return float(np.mean([auc(pos, s) for pos, s in problems]))


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------
class BootstrapCI(tuple):
    """A percentile interval ``(low, high)`` — a plain 2-tuple to unpack — that also says how many
    resamples it rests on: ``n_resamples`` drawn, ``n_skipped`` of them left out because they lacked a
    class (only in the unstratified cluster bootstrap)."""

    n_resamples: int
    n_skipped: int

    def __new__(cls, low: float, high: float, n_resamples: int = 0, n_skipped: int = 0) -> BootstrapCI:
        obj = super().__new__(cls, (float(low), float(high)))
        obj.n_resamples, obj.n_skipped = int(n_resamples), int(n_skipped)
        return obj

    @property
    def low(self) -> float:
        """Lower limit."""
        return self[0]

    @property
    def high(self) -> float:
        """Upper limit."""
        return self[1]


@dataclass
class PairedAUCTest:
    """Paired two-sided bootstrap comparison of two models' (macro) AUCs on the same cases.

    ``se`` is the SD of the bootstrap differences, z = difference / se, p two-sided normal (pROC
    ``roc.test(method="bootstrap")``). nan when a class has fewer than 2 units or no SE can be had.
    """

    auc1: float
    auc2: float
    difference: float  # auc1 - auc2
    se: float
    z: float
    p_value: float
    n_cases: int
    n_clusters: int
    method: str
    n_skipped: int = 0  # resamples left out for lacking a class (unstratified cluster bootstrap)


def _resample_counts(rng: np.random.Generator, b: int, k: int) -> np.ndarray:
    """(b, k) multinomial counts: how often each of k units is drawn in b resamples of size k."""
    idx = rng.integers(0, k, size=(b, k))
    idx += (np.arange(b) * k)[:, None]
    return np.bincount(idx.ravel(), minlength=b * k).reshape(b, k)


def _check_resamples(n_resamples: int) -> int:
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    return int(n_resamples)


# A stratum: its rows, each row's unit number within the stratum, and the number of units.
_Stratum = tuple[np.ndarray, np.ndarray, int]


def _design(classes: list[np.ndarray], clusters) -> tuple[list[_Stratum], bool, int, int]:
    """Resampling design for rows split into ``classes`` (boolean masks, together every row).

    Returns (strata, stratified, number of clusters, fewest units holding a class). Without
    clusters each class is a stratum of its rows; with clusters that are all single-class, each
    class is a stratum of its clusters; otherwise one stratum of all clusters (unstratified — a
    resample can lack a class).
    """
    n_rows = classes[0].size
    if clusters is None:
        strata = [(np.flatnonzero(c), np.arange(int(c.sum())), int(c.sum())) for c in classes]
        return strata, True, n_rows, min(k for _, _, k in strata)
    inv, n_clusters = _cluster_index(clusters, n_rows)
    per_class = [np.unique(inv[c]) for c in classes]
    fewest = min(u.size for u in per_class)
    if sum(u.size for u in per_class) == n_clusters:  # every cluster in one class only
        strata = []
        for c in classes:
            uniq, local = np.unique(inv[c], return_inverse=True)
            strata.append((np.flatnonzero(c), local.ravel(), len(uniq)))
        return strata, True, n_clusters, fewest
    return [(np.arange(n_rows), inv, n_clusters)], False, n_clusters, fewest


def _weighted_auc(pos: np.ndarray, score: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """AUC(pos, score) under row weights: a function of (b, n_rows) weights → (b,) AUCs (nan where
    a class has weight 0). Negatives sorted once; each positive's tied negatives are a slice."""
    prow, nrow = np.flatnonzero(pos), np.flatnonzero(~pos)
    order = np.argsort(score[nrow], kind="stable")
    nrow_sorted, yn_sorted = nrow[order], score[nrow][order]
    xp = score[prow]
    lo = np.searchsorted(yn_sorted, xp, side="left")
    hi = np.searchsorted(yn_sorted, xp, side="right")

    def evaluate(w: np.ndarray) -> np.ndarray:
        wp, wn = w[:, prow], w[:, nrow_sorted]
        cum = np.zeros((w.shape[0], wn.shape[1] + 1))
        np.cumsum(wn, axis=1, out=cum[:, 1:])
        below = cum[:, lo]
        tied = cum[:, hi] - below
        num = np.einsum("ij,ij->i", wp, below + 0.5 * tied)
        with np.errstate(invalid="ignore", divide="ignore"):
            return num / (wp.sum(axis=1) * cum[:, -1])

    return evaluate


def _bootstrap(strata: list[_Stratum], n_rows: int, n_resamples: int, seed: int,
               evaluate: Callable[[np.ndarray], np.ndarray], n_stats: int,
               required: list[np.ndarray] | None) -> tuple[np.ndarray, int]:
    """(kept resamples, n_stats) statistics of ``n_resamples`` seeded resamples — units drawn with
    replacement within each stratum, vectorised in chunks — and the number skipped because a
    ``required`` row set got no draw.

    ``evaluate`` maps (b, n_rows) row weights (how often each row is in the resample) to
    (b, n_stats). The draws are chunked by the number of units only, so pooled duplicates draw
    identically; the (resamples × rows) weights are built and evaluated in sub-chunks sized by the
    number of rows, so memory stays bounded when clusters are far fewer than rows. The sub-chunk
    size does not change a result: each resample's statistic depends on its own weight row only.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, _CHUNK_ELEMENTS // sum(k for _, _, k in strata)))
    sub = max(1, _ROW_CHUNK_ELEMENTS // n_rows)
    out, skipped = [np.empty((0, n_stats))], 0
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        counts = [_resample_counts(rng, b, k) for _, _, k in strata]  # stratum order fixes the stream
        for lo in range(0, b, sub):
            hi = min(b, lo + sub)
            w = np.zeros((hi - lo, n_rows))
            for (rows, unit, _), c in zip(strata, counts, strict=True):
                w[:, rows] = c[lo:hi][:, unit]
            if required is not None:
                ok = np.all([w[:, r].sum(axis=1) > 0 for r in required], axis=0)
                skipped += int(ok.size - ok.sum())
                w = w[ok]
            if w.shape[0]:
                out.append(evaluate(w))
    return np.concatenate(out), skipped


def _class_masks(yi: np.ndarray, binary: bool) -> list[np.ndarray]:
    """Row masks of the classes in ``yi``, positives first when binary (the stratum order of the draws)."""
    if binary:
        return [yi == 1, yi == 0]
    return [yi == c for c in np.unique(yi)]


@dataclass
class _MacroBootstrap:
    """Bootstrap (macro OvR) AUCs of several models on the same resamples."""

    stat: np.ndarray | None  # (kept resamples, models); None: no bootstrap possible
    n_skipped: int
    n_cases: int
    n_clusters: int
    stratified: bool


def _macro_bootstrap(y, probs: list[np.ndarray], n_resamples: int, seed: int, clusters) -> _MacroBootstrap:
    """Resample as :func:`bootstrap_macro_auc_ci` describes; ``stat`` is None when fewer than two
    classes are present or a present class has fewer than 2 units (cases; clusters holding it)."""
    problems = []
    for prob in probs:
        yi, per_class = _ovr_problems(y, prob)
        problems.append(per_class)
    n_clusters = yi.size if clusters is None else _cluster_index(clusters, yi.size)[1]
    if not problems[0]:
        return _MacroBootstrap(None, 0, yi.size, n_clusters, clusters is None)
    masks = _class_masks(yi, binary=probs[0].ndim == 1 or probs[0].shape[1] == 2)
    strata, stratified, n_clusters, fewest = _design(masks, clusters)
    if fewest < 2:
        return _MacroBootstrap(None, 0, yi.size, n_clusters, stratified)
    kernels = [[_weighted_auc(pos, score) for pos, score in per_class] for per_class in problems]

    def evaluate(w: np.ndarray) -> np.ndarray:
        return np.column_stack([np.mean([k(w) for k in model], axis=0) for model in kernels])

    stat, skipped = _bootstrap(strata, yi.size, n_resamples, seed, evaluate, len(probs),
                               None if stratified else masks)
    return _MacroBootstrap(stat, skipped, yi.size, n_clusters, stratified)


def _interval(boot: _MacroBootstrap, level: float, n_resamples: int) -> BootstrapCI:
    if boot.stat is None or boot.stat.shape[0] == 0:
        return BootstrapCI(float("nan"), float("nan"), n_resamples, boot.n_skipped)
    return BootstrapCI(*_percentile_ci(boot.stat[:, 0], level), n_resamples, boot.n_skipped)


def bootstrap_auc_ci(y, p, n_resamples: int = 2000, level: float = 0.95, seed: int = 0,
                     clusters=None) -> BootstrapCI:
    """Percentile bootstrap CI of the AUC; (nan, nan) if a class has fewer than 2 units.

    Without ``clusters`` positives and negatives are resampled separately with replacement (class
    counts kept, so every resample has an AUC: pROC ``boot.stratified=TRUE``). With ``clusters``
    (one id per row: the item when several seeds' predictions are pooled, the patient of each
    lesion) whole clusters are drawn and all their rows enter the resample: within their class
    stratum when every cluster is single-class; otherwise (a patient with a benign and a malignant
    lesion) unstratified, and resamples lacking a class are skipped and counted in the result's
    ``n_skipped`` (as pROC's ``boot.stratified=FALSE`` ignores its NA resamples). Units are cases,
    or clusters holding the class. Seeded, hence reproducible; vectorised over resamples.
    """
    _check_level(level)
    n_resamples = _check_resamples(n_resamples)
    pos, (p,) = _binary_inputs(y, p)
    return _interval(_macro_bootstrap(pos.astype(int), [p], n_resamples, seed, clusters), level, n_resamples)


def bootstrap_macro_auc_ci(y, prob, n_resamples: int = 2000, level: float = 0.95, seed: int = 0,
                           clusters=None) -> BootstrapCI:
    """Percentile bootstrap CI of :func:`macro_ovr_auc` (the binary AUC for a vector or (n, 2) ``prob``).

    Stratified by class without ``clusters`` (every resample keeps the class counts); with
    ``clusters`` as :func:`bootstrap_auc_ci`: within classes when every cluster is single-class,
    otherwise unstratified with resamples lacking a present class skipped (``n_skipped``).
    (nan, nan) when fewer than two classes are present or a present class has fewer than 2 units.
    """
    _check_level(level)
    n_resamples = _check_resamples(n_resamples)
    prob = np.asarray(prob, dtype=float)
    return _interval(_macro_bootstrap(y, [prob], n_resamples, seed, clusters), level, n_resamples)


def bootstrap_auc_test(y, prob1, prob2, n_resamples: int = 2000, seed: int = 0, clusters=None) -> PairedAUCTest:
    """Paired two-sided bootstrap test of two models' (macro OvR) AUCs on the same cases.

    pROC ``roc.test(method="bootstrap", paired=TRUE)``: the same resamples are scored for both
    models, D = (A1 − A2) / sd(bootstrap differences) (sd with ddof 1), p = 2 Φ(−|D|). AUC as
    :func:`macro_ovr_auc` — a vector or (n, 2) ``prob`` gives the binary AUC, so binary and
    multi-class use this one function. Resampling as :func:`bootstrap_macro_auc_ci`. Identical
    predictions → z = 0, p = 1. se, z, p nan when a present class has fewer than 2 units (cases,
    or clusters holding it) or the differences do not vary while the AUCs differ.
    """
    n_resamples = _check_resamples(n_resamples)
    p1, p2 = np.asarray(prob1, dtype=float), np.asarray(prob2, dtype=float)
    if p1.shape != p2.shape:
        raise ValueError(f"prob1 and prob2 differ in shape: {p1.shape} vs {p2.shape}")
    a1, a2 = macro_ovr_auc(y, p1), macro_ovr_auc(y, p2)
    diff = a1 - a2
    boot = _macro_bootstrap(y, [p1, p2], n_resamples, seed, clusters)
    method = ("stratified bootstrap" if boot.stratified else "bootstrap") + (" (clusters)" if clusters is not None
                                                                             else "")
    nan = float("nan")
    common = dict(n_cases=boot.n_cases, n_clusters=boot.n_clusters, method=method, n_skipped=boot.n_skipped)
    if boot.stat is None or boot.stat.shape[0] < 2:
        return PairedAUCTest(a1, a2, diff, nan, nan, nan, **common)
    d = boot.stat[:, 0] - boot.stat[:, 1]
    se = float(np.std(d, ddof=1))
    if se == 0.0:
        if diff == 0.0 and np.all(d == 0.0):  # identical predictions (pROC's special case D = 0)
            return PairedAUCTest(a1, a2, diff, 0.0, 0.0, 1.0, **common)
        return PairedAUCTest(a1, a2, diff, nan, nan, nan, **common)
    z = diff / se
    return PairedAUCTest(a1, a2, diff, se, z, float(2.0 * _sps.norm.sf(abs(z))), **common)


def bootstrap_mean_ci(values, n_resamples: int = 2000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean (nan entries ignored; (nan, nan) when empty)."""
    _check_level(level)
    n_resamples = _check_resamples(n_resamples)
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
    """Paired two-sided Wilcoxon signed-rank test as R ``wilcox.test(a, b, paired=TRUE)`` of R < 4.6.0.

    Returns (V, p): V = sum of the ranks of the positive differences a − b (R's statistic).
    Zero differences are dropped; with n < 50 remaining differences and no ties and no zeros the
    exact p-value is used, otherwise the normal approximation with tie-corrected variance and
    continuity correction. scipy's ``method="auto"`` switches at n <= 50 and its statistic is
    min(V+, V−) for two-sided tests, so the method is chosen here explicitly and V recomputed.
    All differences zero → (0.0, 1.0). Pairs with a nan are dropped. R >= 4.6.0 differs when
    there are ties or zeros (exact conditional test, zeros ranked; see the module docstring).
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
