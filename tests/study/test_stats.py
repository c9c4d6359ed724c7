"""medxfer.study.stats against R (pROC 1.18.0 / stats, R 4.2.2) and against direct slow formulas.

The hard-coded R values come from ``Rscript tests/study/r_reference.R`` (R 4.2.2 Patched
(2022-11-10 r83330), pROC 1.18.0); the data there are integer formulas reproduced below. The
clustered (Obuchowski 1997) references are the stored output of FDA/DIDSR's R ``doAUCcluster`` on
the CC0 data of github.com/DIDSR/mitoticFigureCounts (see r_reference.R, not run here).
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from scipy import stats as sps

from medxfer.study import stats as S


# --------------------------------------------------------------------------------------------
# fixed data shared with tests/study/r_reference.R
# --------------------------------------------------------------------------------------------
def _delong_data():
    i = np.arange(60)
    y = ((i * 37) % 11 < 5).astype(int)
    p1 = (((i * 29 + 7) % 23) + 5 * y) / 10  # tied scores
    p2 = (((i * 17 + 3) % 19) + 3 * y) / 8
    return y, p1, p2


# Output of `Rscript tests/study/r_reference.R` (sprintf("%.17g")).
R_AUC1 = 0.7142857142857143
R_AUC2 = 0.6261160714285714
R_DELONG_Z = 0.91420829188177277
R_DELONG_P = 0.36060740795794999
R_CI1_95 = (0.58578401305797723, 0.84278741551345138)
R_CI2_90 = (0.50684368974987115, 0.74538845310727164)
R_WX_EXACT = (117.0, 0.67422294616699219)  # "Wilcoxon signed rank exact test"
R_WX_SMALL_TIES = (53.0, 0.28735178178318299)  # "... with continuity correction"
R_WX_LARGE_TIES = (1516.5, 0.255027641024897)  # "... with continuity correction"
R_WX_N50 = (695.0, 0.58215690803223641)  # n = 50, no ties: R already uses the normal approx.
R_HOLM_IN = [0.01, 0.04, np.nan, 0.03, 0.005, 0.04, 0.2, 0.5, 0.0001]
R_HOLM = [0.059999999999999998, 0.16, np.nan, 0.14999999999999999, 0.035000000000000003, 0.16,
          0.40000000000000002, 0.5, 0.00080000000000000004]


# --------------------------------------------------------------------------------------------
# AUC / DeLong vs R (hard-coded)
# --------------------------------------------------------------------------------------------
def test_auc_matches_proc_and_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    y, p1, p2 = _delong_data()
    assert S.auc(y, p1) == pytest.approx(R_AUC1, abs=1e-12)
    assert S.auc(y, p2) == pytest.approx(R_AUC2, abs=1e-12)
    assert S.auc(y, p2) == pytest.approx(roc_auc_score(y, p2), abs=1e-12)
    assert np.isnan(S.auc(np.zeros(5), np.arange(5.0)))
    # flipped labels give 1 - AUC (direction is "positives score higher")
    assert S.auc(1 - y, p1) == pytest.approx(1 - R_AUC1, abs=1e-12)


def test_delong_test_matches_proc_roc_test():
    y, p1, p2 = _delong_data()
    r = S.delong_test(y, p1, p2)
    assert r.auc1 == pytest.approx(R_AUC1, abs=1e-12)
    assert r.auc2 == pytest.approx(R_AUC2, abs=1e-12)
    assert r.difference == pytest.approx(R_AUC1 - R_AUC2, abs=1e-12)
    assert r.z == pytest.approx(R_DELONG_Z, abs=1e-9)
    assert r.p_value == pytest.approx(R_DELONG_P, abs=1e-9)
    assert r.se == pytest.approx(r.difference / R_DELONG_Z, rel=1e-9)
    assert (r.n_positive, r.n_negative) == (int(y.sum()), int((1 - y).sum()))
    # swapping the two predictors flips the sign only
    s = S.delong_test(y, p2, p1)
    assert s.z == pytest.approx(-r.z, abs=1e-12) and s.p_value == pytest.approx(r.p_value)


def test_delong_auc_ci_matches_proc_ci_auc():
    y, p1, p2 = _delong_data()
    np.testing.assert_allclose(S.delong_auc_ci(y, p1), R_CI1_95, atol=1e-9)
    np.testing.assert_allclose(S.delong_auc_ci(y, p2, level=0.9), R_CI2_90, atol=1e-9)


def test_delong_ci_is_clipped_to_unit_interval():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.65, 0.6, 0.8, 0.9])  # AUC 8/9, wide CI
    lo, hi = S.delong_auc_ci(y, p)
    assert 0.0 <= lo < S.auc(y, p) < hi == 1.0


def test_delong_identical_predictions_and_errors():
    y, p1, _ = _delong_data()
    r = S.delong_test(y, p1, p1.copy())
    assert (r.se, r.z, r.p_value) == (0.0, 0.0, 1.0)
    assert r.auc1 == r.auc2
    with pytest.raises(ValueError, match="length mismatch"):
        S.delong_test(y, p1, p1[:-1])
    # a class absent: everything nan (the report must not crash), no error
    r = S.delong_test(np.ones(10), np.arange(10.0), np.arange(10.0)[::-1])
    assert np.isnan([r.auc1, r.auc2, r.se, r.z, r.p_value]).all() and (r.n_positive, r.n_negative) == (10, 0)
    assert all(np.isnan(S.delong_auc_ci(np.ones(10), np.arange(10.0))))
    with pytest.raises(ValueError, match="0 .*1"):
        S.delong_test(y * 2, p1, p1)


def _slow_delong(y, p1, p2):
    """Textbook DeLong (1988) with the explicit n_pos x n_neg kernel matrix."""
    y = np.asarray(y).astype(bool)
    v10, v01, aucs = [], [], []
    for p in (p1, p2):
        x, z = p[y], p[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    s = np.cov(np.array(v10)) / y.sum() + np.cov(np.array(v01)) / (~y).sum()
    se = np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    z = (aucs[0] - aucs[1]) / se
    return aucs[0], aucs[1], se, z, 2 * sps.norm.sf(abs(z))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fast_delong_equals_slow_quadratic_delong(seed):
    rng = np.random.default_rng(seed)
    n = 150 + 50 * seed
    y = (rng.random(n) < 0.3 + 0.1 * seed).astype(int)
    p1 = np.round(y * 0.8 + rng.normal(size=n), 1)  # heavy ties
    p2 = np.round(0.6 * p1 + y * 0.3 + rng.normal(size=n) * 0.7, 1)
    r = S.delong_test(y, p1, p2)
    a1, a2, se, z, p = _slow_delong(y, p1, p2)
    np.testing.assert_allclose([r.auc1, r.auc2, r.se, r.z, r.p_value], [a1, a2, se, z, p],
                               rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# live cross-check against R/pROC on fresh random data
# --------------------------------------------------------------------------------------------
def _have_proc() -> bool:
    rscript = shutil.which("Rscript")
    if rscript is None:
        return False
    try:
        res = subprocess.run([rscript, "-e", "suppressPackageStartupMessages(library(pROC))"],
                             capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


_R_LIVE = r"""
suppressPackageStartupMessages(library(pROC))
d <- read.csv(commandArgs(TRUE)[1])
for (s in unique(d$seed)) {
  e <- d[d$seed == s, ]
  r1 <- roc(e$y, e$p1, levels = c(0, 1), direction = "<", quiet = TRUE)
  r2 <- roc(e$y, e$p2, levels = c(0, 1), direction = "<", quiet = TRUE)
  t <- roc.test(r1, r2, method = "delong", paired = TRUE)
  ci <- ci.auc(r1, method = "delong")
  w <- suppressWarnings(wilcox.test(e$p1, e$p2, paired = TRUE))
  cat(s, sprintf("%.17g", c(as.numeric(auc(r1)), as.numeric(auc(r2)), t$statistic, t$p.value,
                            ci[1], ci[3], w$statistic, w$p.value)), "\n")
}
"""


@pytest.mark.skipif(not _have_proc(), reason="Rscript with the pROC package is not installed "
                    "(apt-get install r-cran-proc) - live R cross-check skipped")
def test_live_cross_check_against_r_proc(tmp_path):
    rows, seeds = [], [11, 12, 13, 14, 15]
    for seed in seeds:
        rng = np.random.default_rng(seed)
        n = int(rng.integers(40, 400))
        y = (rng.random(n) < rng.uniform(0.15, 0.6)).astype(int)
        y[:2] = [0, 1]
        p1 = np.round(y * rng.uniform(0.2, 1.5) + rng.normal(size=n), int(rng.integers(1, 4)))
        p2 = p1 * 0.5 + y * rng.uniform(0, 1) + rng.normal(size=n) * 0.8
        rows += [(seed, int(a), float(b), float(c)) for a, b, c in zip(y, p1, p2)]
    csv = tmp_path / "d.csv"
    csv.write_text("seed,y,p1,p2\n" + "".join(f"{s},{a},{b!r},{c!r}\n" for s, a, b, c in rows))
    script = tmp_path / "live.R"
    script.write_text(_R_LIVE)
    res = subprocess.run(["Rscript", str(script), str(csv)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout.split("\n")
    got = {int(line.split()[0]): [float(v) for v in line.split()[1:]]
           for line in out if line.strip()}
    assert sorted(got) == seeds
    data = np.array(rows, dtype=float)
    for seed in seeds:
        e = data[data[:, 0] == seed]
        y, p1, p2 = e[:, 1].astype(int), e[:, 2], e[:, 3]
        a1, a2, z, p, lo, hi, v, wp = got[seed]
        r = S.delong_test(y, p1, p2)
        np.testing.assert_allclose([r.auc1, r.auc2, r.z, r.p_value], [a1, a2, z, p],
                                   rtol=1e-9, atol=1e-12, err_msg=f"seed {seed}")
        np.testing.assert_allclose(S.delong_auc_ci(y, p1), [lo, hi], atol=1e-9)
        np.testing.assert_allclose(S.wilcoxon_signed_rank(p1, p2), [v, wp], rtol=1e-9)


# --------------------------------------------------------------------------------------------
# Wilcoxon, Holm, transfer score, mean/SD
# --------------------------------------------------------------------------------------------
def test_wilcoxon_exact_case_matches_r():
    j = np.arange(20)
    v, p = S.wilcoxon_signed_rank((j * 31 + 5) % 97, (j * 53 + 11) % 89)
    # R reports V = sum of positive ranks (117 here, > n(n+1)/4), not scipy's min(V+, V-)
    assert v == R_WX_EXACT[0]
    assert p == pytest.approx(R_WX_EXACT[1], abs=1e-12)


@pytest.mark.parametrize("case", ["small_ties", "large_ties", "n50"])
def test_wilcoxon_normal_approximation_matches_r(case):
    if case == "small_ties":
        m = np.arange(15)
        a, b, ref = (m * 5 + 1) % 7, (m * 3 + 2) % 5, R_WX_SMALL_TIES
    elif case == "large_ties":
        k = np.arange(80)
        a, b, ref = (k * 13 + 2) % 9, (k * 7 + 5) % 8, R_WX_LARGE_TIES
    else:
        q = np.arange(50)
        a, b, ref = (q * 31 + 5) % 97 + q / 1024, (q * 53 + 11) % 89, R_WX_N50
    v, p = S.wilcoxon_signed_rank(a, b)
    assert v == ref[0]
    assert p == pytest.approx(ref[1], abs=1e-9)
    # scipy's defaults (no continuity correction, exact at n = 50, min statistic) do not match R
    raw = sps.wilcoxon(a, b)
    assert abs(raw.pvalue - ref[1]) > 1e-4 or raw.statistic != ref[0]


def test_wilcoxon_all_zero_differences():
    assert S.wilcoxon_signed_rank([0.5, 0.7, 0.9], [0.5, 0.7, 0.9]) == (0.0, 1.0)


def test_holm_matches_r_p_adjust():
    got = S.holm(R_HOLM_IN)
    np.testing.assert_allclose(got, R_HOLM, rtol=1e-15, equal_nan=True)
    assert np.isnan(got[2])
    assert S.holm([]).shape == (0,)
    np.testing.assert_allclose(S.holm([0.02]), [0.02])


def test_transfer_score():
    assert S.transfer_score(0.9, 0.75) == pytest.approx(20.0)
    assert S.transfer_score(0.7, 0.8) == pytest.approx(-12.5)
    assert S.transfer_score(0.8, 0.8) == 0.0


def test_mean_sd():
    assert S.mean_sd([1.0, 2.0, 3.0, np.nan]) == pytest.approx((2.0, 1.0))
    m, sd = S.mean_sd([0.5])
    assert m == 0.5 and np.isnan(sd)
    assert all(np.isnan(S.mean_sd([])))
    assert all(np.isnan(S.mean_sd([np.nan])))
    assert S.mean_sd([0.8, 0.9])[1] == pytest.approx(np.std([0.8, 0.9], ddof=1))


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------
def _sim(n, seed, shift=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    y[:2] = [0, 1]
    return y, np.round(shift * y + rng.normal(size=n), 2)


def test_bootstrap_auc_ci_reproducible_and_seed_dependent():
    y, p = _sim(300, 5)
    a = S.bootstrap_auc_ci(y, p, seed=3)
    assert a == S.bootstrap_auc_ci(y, p, seed=3)
    assert a != S.bootstrap_auc_ci(y, p, seed=4)
    assert a[0] < S.auc(y, p) < a[1]


def test_bootstrap_auc_ci_narrows_with_n_and_agrees_with_delong():
    small, large = _sim(100, 1), _sim(5000, 2)
    w_small = np.diff(S.bootstrap_auc_ci(*small))[0]
    ci_large = S.bootstrap_auc_ci(*large, n_resamples=2000)
    assert np.diff(ci_large)[0] < 0.4 * w_small
    assert ci_large[0] < S.auc(*large) < ci_large[1]
    # at n = 5000 the percentile bootstrap and the DeLong normal interval nearly coincide
    np.testing.assert_allclose(ci_large, S.delong_auc_ci(*large), atol=4e-3)
    # a wider level gives a wider interval
    lo90, hi90 = S.bootstrap_auc_ci(*large, level=0.9)
    assert ci_large[0] < lo90 and hi90 < ci_large[1]


def test_bootstrap_counts_ties_as_half():
    # scores on a 4-level scale: most positive/negative pairs are ties
    rng = np.random.default_rng(4)
    y = (rng.random(3000) < 0.5).astype(int)
    p = np.clip(np.round(y * 0.6 + rng.normal(size=3000)), -1, 2)
    a = S.auc(y, p)
    lo, hi = S.bootstrap_auc_ci(y, p)
    assert lo < a < hi
    assert abs((lo + hi) / 2 - a) < 0.1 * (hi - lo)
    np.testing.assert_allclose([lo, hi], S.delong_auc_ci(y, p), atol=4e-3)


def test_bootstrap_is_stratified_tiny_cohort_never_nan():
    y = np.array([1, 1] + [0] * 10)
    p = np.array([0.9, 0.3] + [0.1 * k for k in range(10)])
    # a non-stratified bootstrap would draw no positive in ~(10/12)^12 = 11% of resamples
    for seed in range(10):
        lo, hi = S.bootstrap_auc_ci(y, p, n_resamples=2000, seed=seed)
        assert np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo < hi <= 1.0
    assert all(np.isnan(S.bootstrap_auc_ci(np.zeros(5), np.arange(5.0))))


def test_bootstrap_clusters_pool_duplicated_seeds_correctly():
    y, p = _sim(400, 9)
    items = np.arange(len(y))
    base = S.bootstrap_auc_ci(y, p, seed=1)
    # two "seeds" with identical predictions of the same items, pooled
    y2, p2, c2 = np.r_[y, y], np.r_[p, p], np.r_[items, items]
    clustered = S.bootstrap_auc_ci(y2, p2, seed=1, clusters=c2)
    naive = S.bootstrap_auc_ci(y2, p2, seed=1)
    np.testing.assert_allclose(clustered, base, atol=1e-12)
    # ignoring the clustering pretends to have twice the cases: the interval shrinks ~ 1/sqrt(2)
    assert np.diff(naive)[0] < 0.85 * np.diff(clustered)[0]


def test_bootstrap_mean_ci():
    rng = np.random.default_rng(0)
    dice = np.clip(rng.normal(0.8, 0.1, size=2000), 0, 1)
    lo, hi = S.bootstrap_mean_ci(np.r_[dice, np.nan])
    assert lo < dice.mean() < hi
    se = dice.std(ddof=1) / np.sqrt(dice.size)
    np.testing.assert_allclose([lo, hi], [dice.mean() - 1.96 * se, dice.mean() + 1.96 * se],
                               atol=0.15 * 1.96 * se)
    assert (lo, hi) == S.bootstrap_mean_ci(dice)
    assert (lo, hi) != S.bootstrap_mean_ci(dice, seed=1)
    assert all(np.isnan(S.bootstrap_mean_ci([])))


# --------------------------------------------------------------------------------------------
# exact McNemar, Spearman
# --------------------------------------------------------------------------------------------
def test_mcnemar_exact_matches_hand_computation_and_binomtest():
    from math import comb

    # 5 concordant hits, 3 concordant misses, 7 pairs hit by a only, 2 by b only
    a = np.r_[np.ones(5), np.zeros(3), np.ones(7), np.zeros(2)].astype(bool)
    b = np.r_[np.ones(5), np.zeros(3), np.zeros(7), np.ones(2)].astype(bool)
    hand = 2 * sum(comb(9, k) for k in range(3)) / 2 ** 9  # 2 · P(Bin(9, 1/2) ≤ 2) = 92/512
    assert hand == 92 / 512
    assert S.mcnemar_exact(a, b) == pytest.approx(hand, abs=1e-15)
    assert S.mcnemar_exact(b, a) == pytest.approx(hand, abs=1e-15)  # symmetric
    assert S.mcnemar_exact(a.astype(int), b.astype(float)) == pytest.approx(hand, abs=1e-15)  # 0/1 accepted
    rng = np.random.default_rng(5)
    for _ in range(20):
        x, y = rng.random(40) < 0.6, rng.random(40) < 0.4
        n01, n10 = int(np.sum(x & ~y)), int(np.sum(~x & y))
        ref = sps.binomtest(n01, n01 + n10, 0.5).pvalue if n01 + n10 else 1.0
        assert S.mcnemar_exact(x, y) == pytest.approx(ref, rel=1e-12, abs=1e-15)
    # balanced discordance → p = 1 (capped); no discordant pair → 1
    assert S.mcnemar_exact([1, 0, 1, 0], [0, 1, 0, 1]) == 1.0
    assert S.mcnemar_exact([1, 1, 0], [1, 1, 0]) == 1.0
    assert S.mcnemar_exact([], []) == 1.0
    with pytest.raises(ValueError, match="length"):
        S.mcnemar_exact([1, 0], [1])
    with pytest.raises(ValueError, match="binary"):
        S.mcnemar_exact([1, 0.5], [1, 0])


def _exact_spearman_p(x, y) -> float:
    res = sps.permutation_test((np.asarray(y, float),), lambda b: sps.spearmanr(x, b).statistic,
                               permutation_type="pairings", n_resamples=np.inf, vectorized=False)
    return float(res.pvalue)


def test_spearman_rho_from_scipy_and_exact_permutation_p():
    x = np.array([3.0, 10.0, 1.0, 7.0, 5.0])
    y = np.array([2.0, 9.5, 4.0, 8.0, 1.0])
    rho, p, n, method = S.spearman(x, y)
    assert n == 5 and method == "exact permutation"
    assert rho == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
    assert p == pytest.approx(_exact_spearman_p(x, y), abs=1e-12)
    # perfectly reversed: rho = -1, exact p = 2 / n! (scipy's t approximation says 0)
    for k in (3, 4):
        rho, p, n, _ = S.spearman(np.arange(k), -np.arange(k) ** 2)
        assert rho == pytest.approx(-1.0) and p == pytest.approx(2 / np.prod(np.arange(1, k + 1)))
        assert p == pytest.approx(_exact_spearman_p(np.arange(k), -np.arange(k) ** 2))
        assert sps.spearmanr(np.arange(k), -np.arange(k)).pvalue < 1e-6
    # ties
    xt, yt = np.array([1.0, 2, 2, 3, 4, 4]), np.array([1.0, 3, 2, 2, 5, 6])
    rho, p, _, _ = S.spearman(xt, yt)
    assert rho == pytest.approx(sps.spearmanr(xt, yt).statistic, abs=1e-12)
    assert p == pytest.approx(_exact_spearman_p(xt, yt), abs=1e-12)
    # n > 9: scipy's t approximation; nan pairs dropped
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=12), rng.normal(size=12)
    ref = sps.spearmanr(a, b)
    assert S.spearman(np.r_[a, np.nan], np.r_[b, 1.0]) == pytest.approx(
        (ref.statistic, ref.pvalue, 12, "t approximation"))
    # undefined: n < 3 or constant
    for xs, ys in (([1, 2], [2, 1]), ([1, 2, 3], [5, 5, 5]), ([1, np.nan, 3], [1, 2, 3])):
        rho, p, _, method = S.spearman(xs, ys)
        assert np.isnan(rho) and np.isnan(p) and method == "undefined"


# --------------------------------------------------------------------------------------------
# DeLong with too few cases in a class
# --------------------------------------------------------------------------------------------
def test_delong_with_one_case_in_a_class_gives_nan_not_a_confident_p():
    y = np.r_[0, np.ones(14, int)]  # one negative in 15: its placement has no variance estimate
    p1, p2 = np.arange(15.0), np.arange(15.0)[::-1] ** 2
    r = S.delong_test(y, p1, p2)
    assert r.auc1 == S.auc(y, p1) and r.auc2 == S.auc(y, p2)  # the AUCs are still defined
    assert np.isnan([r.se, r.z, r.p_value]).all()  # before: p = 0.0003
    assert (r.n_positive, r.n_negative, r.n_clusters, r.method) == (14, 1, 15, "DeLong")
    assert np.isnan(S.delong_auc_ci(y, p1)).all()
    # two negatives: defined again
    y2 = np.r_[0, 0, np.ones(13, int)]
    assert np.isfinite(S.delong_test(y2, p1, p2).p_value)
    # clustered: both negatives in one patient → one cluster holds the class → nan
    clusters = np.r_[0, 0, np.arange(1, 14)]
    r = S.delong_test(y2, p1, p2, clusters=clusters)
    assert np.isnan(r.p_value) and r.n_clusters == 14 and r.method.startswith("Obuchowski")
    assert np.isnan(S.delong_auc_ci(y2, p1, clusters=clusters)).all()


# --------------------------------------------------------------------------------------------
# Obuchowski (1997) clustered AUC
# --------------------------------------------------------------------------------------------
def test_obuchowski_with_singleton_clusters_is_exactly_delong_and_proc():
    # Obuchowski's S10 = I10 / ((I10 - 1) M) Σ (V10(X_i.) - m_i θ)^2 with one unit per cluster
    # (I10 = M, m_i = 1) is Σ (V10 - θ)^2 / (M - 1): DeLong's (and pROC's) ddof-1 variance, and
    # S11 = 0 because no cluster holds both classes — the factor between the two is exactly 1.
    y, p1, p2 = _delong_data()
    ids = np.array([f"patient-{k}" for k in (np.arange(60) * 7) % 60])  # arbitrary, distinct ids
    r = S.delong_test(y, p1, p2, clusters=ids)
    assert r.z == pytest.approx(R_DELONG_Z, abs=1e-9)
    assert r.p_value == pytest.approx(R_DELONG_P, abs=1e-9)
    assert (r.auc1, r.auc2) == pytest.approx((R_AUC1, R_AUC2), abs=1e-12)
    assert r.n_clusters == 60 and r.method == "Obuchowski (clustered DeLong)"
    np.testing.assert_allclose(S.delong_auc_ci(y, p1, clusters=ids), R_CI1_95, atol=1e-9)
    np.testing.assert_allclose(S.delong_auc_ci(y, p2, level=0.9, clusters=ids), R_CI2_90, atol=1e-9)
    rng = np.random.default_rng(7)
    yr = (rng.random(300) < 0.35).astype(int)
    a, b = np.round(yr + rng.normal(size=300), 1), np.round(0.5 * yr + rng.normal(size=300), 1)
    plain, single = S.delong_test(yr, a, b), S.delong_test(yr, a, b, clusters=np.arange(300))
    np.testing.assert_allclose([single.se, single.z, single.p_value], [plain.se, plain.z, plain.p_value],
                               rtol=1e-12)


# The mitotic-figure study of FDA/DIDSR (Tabata et al. 2019, Diagn Pathol 14:65), data and results
# from github.com/DIDSR/mitoticFigureCounts (CC0) at commit 5675b0b: 155 candidate cells
# (targetID order) in 4 whole-slide images (the clusters, sorted by name: CCB010352HE,
# CCB030097HE, CCB030179HE, CCB050031HE), truth (1 = mitotic figure), and binary calls of
# observers 1-5 under 5 modalities (microscope, scanners A-D). Encoding per cell: slide index,
# truth, then one base-32 digit per modality whose bit i is observer i+1's call.
_MITOSIS = """
11vvvvv 1001000 10204e4 1000g00 1002000 11ev9qv 11u2ii0 11uaukv 1000880 10g0000 30a2aa0 300p000
31tvv45 3002000 31tgke4 30200gi 1002000 11vvvvv 11vvvtv 10c0000 0002010 000i000 01frvvv 30i2020
31e2uc4 31vvppv 31a2004 30g0000 0002000 00g0004 21vbv8k 2082i00 2102000 21vnvvv 2102300 2002000
20ae20c 21q2004 2002000 2020000 31vnvtt 31vvvvv 3160000 21e3nn4 2002000 2002000 21vf754 0000010
11iijg1 1002h00 11vvvtv 11vnvnv 11gvn47 11unvvv 11ss1og 11qavtt 1000g00 1000g00 1040000 1080000
1000002 31eirqu 31f6nl4 313000g 3180000 3000000 30g0000 01b0200 11vvvvv 11vvvvv 11vvvrt 1002000
11s000s 11o000m 11o000k 118000g 21vvtot 21vfkus 21vvvvt 1001100 11s7v45 100g000 1120j04 1000100
1120000 11i0000 1110000 11vvvvv 11vvfvv 11uvvvv 1000010 118000s 1020000 31a2054 3021327 31vvrvv
3000800 31p0000 11g1hpg 11p0o4v 1000100 0004000 0000003 31vttll 3026000 3004444 30b0100 3000200
3004000 3004004 3000200 3000004 2004000 21j5203 21v4vgm 2080000 3000101 30g0000 3000001 21v6323
21v710i 2022300 2004000 2009800 2001000 20i0p8j 2020000 2000002 2000002 21vvtvt 21vttpt 2040100
0000002 1004000 1004000 1004004 1000001 30000g0 30g0002 3000002 0000190 1004000 1104000 1104000
11m400s 11l6906 1000220 0004000 01vdr9j 01vvvvv 21s6n04 21vtdtv 2120882 2000200 2000000
"""


def _mitosis() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slide (155,), truth (155,), calls (5 modalities, 5 observers, 155))."""
    cells = _MITOSIS.split()
    slide = np.array([int(c[0]) for c in cells])
    truth = np.array([int(c[1]) for c in cells])
    digits = np.array([[int(ch, 32) for ch in c[2:]] for c in cells])  # (155, 5)
    calls = (digits.T[:, None, :] >> np.arange(5)[None, :, None]) & 1
    return slide, truth, calls.astype(float)


# data(aucMRMCcluster, package = "mitoticFigureCounts") (see r_reference.R, not run here):
# theta.hat — AUC per modality (rows: microscope, scanner A-D) and observer (columns) — and the
# 10 x 10 cov.hat of ScannerA (observers 1-5 microscope, then 1-5 scanner A), each entry from
# doAUCcluster(), FDA/DIDSR's adaptation of Obuchowski's funcs_clusteredROC.R.
DIDSR_THETA = [
    [0.7640974307640974, 0.7778611945278612, 0.8058058058058059, 0.8419252585919252, 0.8019686353019686],
    [0.7129629629629629, 0.6996996996996997, 0.7035368702035368, 0.6909409409409409, 0.6976976976976977],
    [0.7429095762429095, 0.7147147147147147, 0.7376543209876543, 0.7258925592258926, 0.7535035035035035],
    [0.6847681014347681, 0.631297964631298, 0.7173840507173841, 0.6988655321988655, 0.7376543209876543],
    [0.7062062062062062, 0.6477310643977311, 0.8019686353019686, 0.7168001334668002, 0.7849516182849516],
]
DIDSR_COV_A = [
    [0.002712569111436253, 0.0010452455104141669, 0.0016448695746652203, 0.0010420325839607188,
     -0.0012266461401281214, 0.0009812399462817741, -0.00013751126015258642, 0.00011238972885881235,
     -0.0005077283268784497, -0.0005664841445993938],
    [0.0010452455104141669, 0.0007979679350686954, 0.00048607720111532417, 0.0003957958038076589,
     1.2556957865031589e-05, 0.0007262635991297456, -0.00031466481119946, 0.00015096975391247903,
     0.0002208791073265385, -0.00030588339935667735],
    [0.0016448695746652203, 0.00048607720111532417, 0.0010808605302988952, 0.000744130139546335,
     -0.0011721632817855488, 0.0003913161342420741, 2.8584726623555822e-05, -0.00010789252986549865,
     -0.0004548607318133304, -0.0002535337096316319],
    [0.0010420325839607188, 0.0003957958038076589, 0.000744130139546335, 0.0008303896076115739,
     -0.0014426090034022443, 8.471501971393184e-05, 6.195470325850495e-06, -0.0004887020863862154,
     -0.00016695845649134888, 7.142451606823898e-06],
    [-0.0012266461401281214, 1.2556957865031589e-05, -0.0011721632817855488, -0.0014426090034022443,
     0.003313141534726188, 0.000627772148319615, -0.0003829481078110443, 0.001270661206849969,
     0.000664467405189578, -0.0003525794565433498],
    [0.0009812399462817741, 0.0007262635991297456, 0.0003913161342420741, 8.471501971393184e-05,
     0.000627772148319615, 0.0008534548432560052, -0.0003171524145397422, 0.0004896651754544295,
     0.00016048733082815324, -0.00043134165902404],
    [-0.00013751126015258642, -0.00031466481119946, 2.8584726623555822e-05, 6.195470325850495e-06,
     -0.0003829481078110443, -0.0003171524145397422, 0.00018732964250797512, -0.0001450892861241773,
     -0.00024567531959781777, 0.0001154200095909819],
    [0.00011238972885881235, 0.00015096975391247903, -0.00010789252986549865, -0.0004887020863862154,
     0.001270661206849969, 0.0004896651754544295, -0.0001450892861241773, 0.0006880021100822809,
     5.0344235365957536e-05, -0.0003229513646282269],
    [-0.0005077283268784497, 0.0002208791073265385, -0.0004548607318133304, -0.00016695845649134888,
     0.000664467405189578, 0.00016048733082815324, -0.00024567531959781777, 5.0344235365957536e-05,
     0.0005367433926501985, 3.144577833293224e-05],
    [-0.0005664841445993938, -0.00030588339935667735, -0.0002535337096316319, 7.142451606823898e-06,
     -0.0003525794565433498, -0.00043134165902404, 0.0001154200095909819, -0.0003229513646282269,
     3.144577833293224e-05, 0.00025386993405034113],
]


def test_obuchowski_matches_didsr_doaucluster_on_mitotic_figure_data():
    slide, truth, calls = _mitosis()
    assert (slide.size, truth.sum(), np.bincount(slide).tolist()) == (155, 74, [14, 62, 39, 40])
    for m in range(5):
        for o in range(5):
            assert S.auc(truth, calls[m, o]) == pytest.approx(DIDSR_THETA[m][o], abs=1e-15)
    cov = np.array(DIDSR_COV_A)
    rows = [calls[0, o] for o in range(5)] + [calls[1, o] for o in range(5)]  # microscope, scanner A
    for i in range(10):
        lo, hi = S.delong_auc_ci(truth, rows[i], clusters=slide)
        a = DIDSR_THETA[i // 5][i % 5]
        half = sps.norm.ppf(0.975) * np.sqrt(cov[i, i])
        np.testing.assert_allclose([lo, hi], [max(a - half, 0.0), min(a + half, 1.0)], rtol=1e-12)
        for j in range(i + 1, 10):
            r = S.delong_test(truth, rows[i], rows[j], clusters=slide)
            se = np.sqrt(cov[i, i] + cov[j, j] - 2 * cov[i, j])
            assert r.se == pytest.approx(se, rel=1e-9), (i, j)
            assert r.p_value == pytest.approx(2 * sps.norm.sf(abs(r.difference) / se), rel=1e-8)
            assert r.n_clusters == 4


def _obuchowski_brute_force(y, p1, p2, clusters):
    """Obuchowski (1997) written out from the paper with the explicit M x N kernel matrices."""
    y = np.asarray(y).astype(bool)
    ids = np.unique(clusters)
    comps = []
    for p in (p1, p2):
        x, z = p[y], p[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])  # (M, N)
        theta = psi.mean()
        v10, v01 = psi.mean(axis=1), psi.mean(axis=0)  # V10(X_ik), V01(Y_il)
        xc, yc = clusters[y], clusters[~y]
        a = np.array([v10[xc == i].sum() - (xc == i).sum() * theta for i in ids])
        b = np.array([v01[yc == i].sum() - (yc == i).sum() * theta for i in ids])
        comps.append((theta, a, b))
    big_m, big_n, n_cl = int(y.sum()), int((~y).sum()), len(ids)
    i10 = len(np.unique(clusters[y]))
    i01 = len(np.unique(clusters[~y]))

    def cov(r, s):
        (_, ar, br), (_, as_, bs) = comps[r], comps[s]
        s10 = i10 / ((i10 - 1) * big_m) * np.sum(ar * as_)
        s01 = i01 / ((i01 - 1) * big_n) * np.sum(br * bs)
        s11_rs = n_cl / (n_cl - 1) * np.sum(ar * bs)
        s11_sr = n_cl / (n_cl - 1) * np.sum(as_ * br)
        return s10 / big_m + s01 / big_n + (s11_rs + s11_sr) / (big_m * big_n)

    var1, var2, c12 = cov(0, 0), cov(1, 1), cov(0, 1)
    return comps[0][0], comps[1][0], var1, var2, np.sqrt(var1 + var2 - 2 * c12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_obuchowski_equals_brute_force_from_the_paper(seed):
    rng = np.random.default_rng(seed)
    n_patients = 40 + 20 * seed
    sizes = rng.integers(1, 5, size=n_patients)  # 1-4 lesions per patient
    clusters = np.repeat(np.arange(n_patients) * 3 + 11, sizes)  # non-contiguous ids
    n = clusters.size
    u = rng.normal(size=n_patients)[np.searchsorted(np.unique(clusters), clusters)]  # patient effect
    y = (rng.random(n) < 0.3 + 0.3 * (u > 0)).astype(int)  # mixed patients and single-class ones
    p1 = np.round(u + y + rng.normal(size=n) * 0.7, 1)  # ties
    p2 = np.round(0.8 * u + 0.6 * y + rng.normal(size=n), 1)
    a1, a2, var1, var2, se = _obuchowski_brute_force(y, p1, p2, clusters)
    r = S.delong_test(y, p1, p2, clusters=clusters)
    np.testing.assert_allclose([r.auc1, r.auc2, r.se], [a1, a2, se], rtol=1e-10)
    assert r.p_value == pytest.approx(2 * sps.norm.sf(abs(a1 - a2) / se), rel=1e-9)
    q = sps.norm.ppf(0.975)
    np.testing.assert_allclose(S.delong_auc_ci(y, p1, clusters=clusters),
                               [max(a1 - q * np.sqrt(var1), 0), min(a1 + q * np.sqrt(var1), 1)], rtol=1e-10)
    # shuffling the rows changes nothing
    perm = rng.permutation(n)
    s = S.delong_test(y[perm], p1[perm], p2[perm], clusters=clusters[perm])
    assert s.p_value == pytest.approx(r.p_value, rel=1e-10)


def _clustered_cohort(rng, n_patients=60, lesions=3, patient_sd=1.0):
    """Patients with several lesions; disease and score share a patient effect (strong within-patient
    correlation); some patients hold both classes."""
    clusters = np.repeat(np.arange(n_patients), lesions)
    diseased = np.repeat(rng.random(n_patients) < 0.4, lesions)
    y = (rng.random(clusters.size) < np.where(diseased, 0.8, 0.05)).astype(int)
    u = np.repeat(rng.normal(size=n_patients) * patient_sd, lesions)
    return y, clusters, u


@pytest.mark.slow
def test_obuchowski_ci_covers_where_naive_delong_undercovers():
    """Seeded simulation, 120 patients x 3 lesions with a shared patient effect: 95% CI coverage of the
    lesion-level AUC and the size of the paired test (at 60 patients the Wald interval covers ~0.93)."""
    rng = np.random.default_rng(2024)
    n_sim = 1000
    est, cover_cl, cover_naive, reject_cl, reject_naive = [], [], [], [], []
    sims = []
    for _ in range(n_sim):
        y, clusters, u = _clustered_cohort(rng, n_patients=120)
        p = u + 1.0 * y + rng.normal(size=y.size) * 0.5
        # a second model with its own patient effect and the same AUC: the null of the paired test
        v = np.repeat(rng.normal(size=120), 3)
        q = v + 1.0 * y + rng.normal(size=y.size) * 0.5
        sims.append((y, clusters, p, q))
        est.append(S.auc(y, p))
    truth = float(np.mean(est))  # E[AUC estimate]; its Monte-Carlo error is ~0.001
    for y, clusters, p, q in sims:
        lo, hi = S.delong_auc_ci(y, p, clusters=clusters)
        cover_cl.append(lo <= truth <= hi)
        lo, hi = S.delong_auc_ci(y, p)
        cover_naive.append(lo <= truth <= hi)
        reject_cl.append(S.delong_test(y, p, q, clusters=clusters).p_value < 0.05)
        reject_naive.append(S.delong_test(y, p, q).p_value < 0.05)
    # binomial SE of a coverage near 0.95 over 1000 runs: 0.007
    assert 0.93 <= np.mean(cover_cl) <= 0.97, np.mean(cover_cl)
    assert np.mean(cover_naive) < 0.90, np.mean(cover_naive)
    assert np.mean(reject_cl) <= 0.07, np.mean(reject_cl)
    assert np.mean(reject_naive) > 0.08, np.mean(reject_naive)


# --------------------------------------------------------------------------------------------
# patient-level bootstrap with mixed clusters
# --------------------------------------------------------------------------------------------
def test_bootstrap_clusters_holding_both_classes():
    # before: ValueError("a cluster contains both positive and negative cases")
    lo, hi = S.bootstrap_auc_ci([0, 1, 0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4, 0.05, 0.9], clusters=[0, 0, 1, 1, 2, 2])
    assert 0.0 <= lo <= hi <= 1.0
    rng = np.random.default_rng(3)
    y, clusters, u = _clustered_cohort(rng, n_patients=150)
    assert any(set(y[clusters == c]) == {0, 1} for c in range(150))
    p = u + y + rng.normal(size=y.size) * 0.5
    ci = S.bootstrap_auc_ci(y, p, clusters=clusters, seed=2)
    assert ci == S.bootstrap_auc_ci(y, p, clusters=clusters, seed=2)  # seeded
    assert ci.n_resamples == 2000 and ci.n_skipped == 0 and (ci.low, ci.high) == tuple(ci)
    assert ci[0] < S.auc(y, p) < ci[1]
    # the patient-level bootstrap and Obuchowski's interval estimate the same thing
    np.testing.assert_allclose(ci, S.delong_auc_ci(y, p, clusters=clusters), atol=0.02)
    # both wider than the naive case-level intervals that ignore the patients
    assert np.diff(ci)[0] > 1.2 * np.diff(S.bootstrap_auc_ci(y, p))[0]


def test_bootstrap_counts_resamples_lacking_a_class():
    # clusters: M holds both classes, P only positives, N1-N3 only negatives. A resample of 5
    # clusters lacks positives iff all 5 draws are N's: (3/5)^5; lacks negatives iff all are P: (1/5)^5.
    y = np.array([1, 0, 1, 1, 0, 0, 0, 0, 0])
    clusters = np.array(["M", "M", "P", "P", "N1", "N1", "N2", "N3", "N3"])
    p = np.array([0.9, 0.2, 0.8, 0.3, 0.1, 0.4, 0.5, 0.05, 0.6])
    ci = S.bootstrap_auc_ci(y, p, n_resamples=20000, seed=1, clusters=clusters)
    expected = 0.6 ** 5 + 0.2 ** 5  # 0.0781
    assert ci.n_skipped / 20000 == pytest.approx(expected, abs=0.006)  # binomial SE 0.0019
    assert np.isfinite(ci).all()
    # fewer than 2 clusters holding a class: no interval
    assert np.isnan(S.bootstrap_auc_ci(y, p, clusters=np.where(y == 1, "M", clusters))).all()


# --------------------------------------------------------------------------------------------
# multi-class: macro one-vs-rest AUC, its bootstrap CI, paired bootstrap test
# --------------------------------------------------------------------------------------------
def _multiclass(n, k, seed, signal=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    y[:k] = np.arange(k)
    # integer scores 1-6, the true class's shifted up: many tied probabilities that sum to 1
    score = np.clip(np.round(rng.normal(2.5, 1.2, size=(n, k)) + 1.5 * signal * np.eye(k)[y]), 1, 6)
    return y, score / score.sum(axis=1, keepdims=True)


def test_macro_ovr_auc_matches_sklearn_and_leaves_out_absent_classes():
    from sklearn.metrics import roc_auc_score

    for k, seed in ((3, 0), (7, 1)):
        y, prob = _multiclass(400, k, seed)
        assert S.macro_ovr_auc(y, prob) == pytest.approx(
            roc_auc_score(y, prob, multi_class="ovr", average="macro"), abs=1e-12)
    y, prob = _multiclass(300, 3, 2)
    keep = y != 1  # class 1 absent: the mean over classes 0 and 2 only
    ref = np.mean([roc_auc_score(y[keep] == c, prob[keep, c]) for c in (0, 2)])
    assert S.macro_ovr_auc(y[keep], prob[keep]) == pytest.approx(ref, abs=1e-12)
    assert np.isnan(S.macro_ovr_auc(np.zeros(5, int), np.full((5, 3), 1 / 3)))
    # binary: a vector or (n, 2) gives the AUC of class 1
    yb, pb = _sim(200, 3)
    assert S.macro_ovr_auc(yb, pb) == S.auc(yb, pb)
    assert S.macro_ovr_auc(yb, np.column_stack([1 - pb, pb])) == S.auc(yb, pb)
    with pytest.raises(ValueError, match="class indices"):
        S.macro_ovr_auc(np.full(5, 3), np.full((5, 3), 1 / 3))


def _macro_linearised_se(y, prob):
    """SE of the macro OvR AUC from DeLong's linearisation, classes as strata (what the stratified
    bootstrap estimates): each row's influence Φ(r) = mean over classes c of
    (V10_c(r) − θ_c) / m_c if y_r = c else (V01_c(r) − θ_c) / n_c; var = Σ_j n_j var_j(Φ)."""
    k = prob.shape[1]
    phi = np.zeros(len(y))
    for c in range(k):
        pos = y == c
        x, z = prob[pos, c], prob[~pos, c]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        theta = psi.mean()
        phi[pos] += (psi.mean(axis=1) - theta) / pos.sum() / k
        phi[~pos] += (psi.mean(axis=0) - theta) / (~pos).sum() / k
    return np.sqrt(sum((y == j).sum() * np.var(phi[y == j]) for j in range(k)))


def test_bootstrap_macro_auc_ci_is_stratified_seeded_and_has_the_delong_width():
    y, prob = _multiclass(1500, 3, 4, signal=0.8)
    a = S.macro_ovr_auc(y, prob)
    ci = S.bootstrap_macro_auc_ci(y, prob, seed=5)
    assert ci == S.bootstrap_macro_auc_ci(y, prob, seed=5) and ci != S.bootstrap_macro_auc_ci(y, prob, seed=6)
    se = _macro_linearised_se(y, prob)
    np.testing.assert_allclose(ci, [a - 1.96 * se, a + 1.96 * se], atol=0.15 * 1.96 * se)
    # binary input: the same as bootstrap_auc_ci (same draws: positives first, then negatives)
    yb, pb = _sim(300, 8)
    assert S.bootstrap_macro_auc_ci(yb, pb, seed=2) == S.bootstrap_auc_ci(yb, pb, seed=2)
    assert S.bootstrap_macro_auc_ci(yb, np.column_stack([1 - pb, pb]), seed=2) == S.bootstrap_auc_ci(yb, pb, seed=2)
    # a tiny 3-class cohort: every resample keeps every class (stratified), never nan
    yt = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    pt = np.full((8, 3), 0.2) + 0.5 * np.eye(3)[yt] * np.linspace(0.2, 1, 8)[:, None]
    assert np.isfinite(S.bootstrap_macro_auc_ci(yt, pt)).all()
    # a present class with one case: no interval
    y1 = np.array([0, 1, 1, 2, 2, 2])
    assert np.isnan(S.bootstrap_macro_auc_ci(y1, np.full((6, 3), 1 / 3) + 0.1 * np.eye(3)[y1])).all()


def test_bootstrap_macro_auc_ci_with_patients():
    rng = np.random.default_rng(11)
    n_patients = 120
    clusters = np.repeat(np.arange(n_patients), 2)
    y = rng.integers(0, 3, size=clusters.size)  # a patient's two lesions may differ in class
    logits = rng.normal(size=(clusters.size, 3)) + np.eye(3)[y] + np.repeat(rng.normal(size=(n_patients, 3)), 2, 0)
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ci = S.bootstrap_macro_auc_ci(y, prob, clusters=clusters, seed=3)
    assert ci[0] < S.macro_ovr_auc(y, prob) < ci[1] and ci.n_skipped == 0
    assert ci == S.bootstrap_macro_auc_ci(y, prob, clusters=clusters, seed=3)


def test_bootstrap_auc_test_identical_better_and_reproducible():
    y, prob = _multiclass(400, 3, 6, signal=1.0)
    same = S.bootstrap_auc_test(y, prob, prob.copy())
    assert (same.difference, same.se, same.z, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    rng = np.random.default_rng(0)
    worse = 0.5 * prob + 0.5 * rng.dirichlet(np.ones(3), size=len(y))
    r = S.bootstrap_auc_test(y, prob, worse, n_resamples=1000, seed=4)
    assert r.auc1 == S.macro_ovr_auc(y, prob) and r.auc2 == S.macro_ovr_auc(y, worse)
    assert r.difference > 0 and r.p_value < 1e-3 and r.z == pytest.approx(r.difference / r.se)
    assert (r.n_cases, r.n_clusters, r.method) == (400, 400, "stratified bootstrap")
    assert r == S.bootstrap_auc_test(y, prob, worse, n_resamples=1000, seed=4)
    assert r.se != S.bootstrap_auc_test(y, prob, worse, n_resamples=1000, seed=5).se
    with pytest.raises(ValueError, match="shape"):
        S.bootstrap_auc_test(y, prob, worse[:, :2])


def test_binary_bootstrap_test_near_proc_delong_p():
    # roc.test(method="bootstrap") and roc.test(method="delong") test the same null; on the
    # 60-case pROC data the bootstrap p (Monte-Carlo SE ~0.005 at 2000 resamples) is near R's DeLong p
    y, p1, p2 = _delong_data()
    for seed in range(3):
        r = S.bootstrap_auc_test(y, p1, p2, seed=seed)
        assert r.p_value == pytest.approx(R_DELONG_P, abs=0.03)
        assert r.difference == pytest.approx(R_AUC1 - R_AUC2, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_bootstrap_test_agrees_with_delong(seed):
    rng = np.random.default_rng(seed)
    n = 400
    y = (rng.random(n) < 0.4).astype(int)
    p1 = y * 0.9 + rng.normal(size=n)
    p2 = 0.7 * p1 + y * 0.2 * seed + rng.normal(size=n) * 0.8
    d = S.delong_test(y, p1, p2)
    b = S.bootstrap_auc_test(y, p1, p2, seed=seed)
    assert b.difference == pytest.approx(d.difference, abs=1e-12)
    assert b.se == pytest.approx(d.se, rel=0.12)  # bootstrap SD of the difference vs DeLong's SE
    assert abs(b.p_value - d.p_value) < 0.05 + 0.25 * d.p_value
    # (n, 2) input is the same test
    assert S.bootstrap_auc_test(y, np.c_[1 - p1, p1], np.c_[1 - p2, p2], seed=seed) == b


def test_bootstrap_auc_test_with_patients_and_too_few_units():
    rng = np.random.default_rng(5)
    y, clusters, u = _clustered_cohort(rng, n_patients=120)
    p1 = u + y + rng.normal(size=y.size) * 0.5
    p2 = u + 0.6 * y + rng.normal(size=y.size) * 0.5
    b = S.bootstrap_auc_test(y, p1, p2, clusters=clusters, seed=1)
    o = S.delong_test(y, p1, p2, clusters=clusters)
    assert b.method == "bootstrap (clusters)" and b.n_clusters == 120 and b.n_cases == y.size
    assert b.se == pytest.approx(o.se, rel=0.2)  # patient bootstrap vs Obuchowski
    one_neg = np.r_[0, np.ones(9, int)]
    r = S.bootstrap_auc_test(one_neg, np.arange(10.0), np.arange(10.0) ** 0.5 * (-1) ** np.arange(10))
    assert np.isnan([r.se, r.z, r.p_value]).all() and np.isfinite(r.auc1)
    r = S.bootstrap_auc_test(np.ones(5, int), np.arange(5.0), np.arange(5.0))
    assert np.isnan([r.auc1, r.p_value]).all()


# --------------------------------------------------------------------------------------------
# memory: the (resamples × rows) weights are evaluated in bounded sub-chunks
# --------------------------------------------------------------------------------------------
def _bootstrap_calls():
    """Every bootstrap, binary and multi-class, unclustered, with clusters within a class (pooled seeds)
    and with clusters holding several classes (unstratified; the 9-row case skips resamples)."""
    rng = np.random.default_rng(11)
    y, patients, u = _clustered_cohort(rng, n_patients=40)
    p1, p2 = u + y + rng.normal(size=y.size), u + 0.5 * y + rng.normal(size=y.size)
    y9 = np.array([1, 0, 1, 1, 0, 0, 0, 0, 0])
    c9 = np.array(["M", "M", "P", "P", "N1", "N1", "N2", "N3", "N3"])
    p9 = np.array([0.9, 0.2, 0.8, 0.3, 0.1, 0.4, 0.5, 0.05, 0.6])
    yk, pk = _multiclass(75, 4, seed=2)
    pk_other = _multiclass(75, 4, seed=3, signal=0.5)[1]
    items = np.r_[np.arange(75), np.arange(75)]  # two seeds' predictions of the same items, pooled
    yk2, pk2, pk2_other = np.r_[yk, yk], np.r_[pk, pk[::-1]], np.r_[pk_other, pk_other]
    b = dict(n_resamples=300, seed=4)
    return [
        lambda: S.bootstrap_auc_ci(y, p1, **b),
        lambda: S.bootstrap_auc_ci(y, p1, clusters=patients, **b),
        lambda: S.bootstrap_auc_ci(y9, p9, clusters=c9, **b),
        lambda: S.bootstrap_macro_auc_ci(yk2, pk2, **b),
        lambda: S.bootstrap_macro_auc_ci(yk2, pk2, clusters=items, **b),
        lambda: S.bootstrap_macro_auc_ci(yk2, pk2, clusters=items // 3, **b),
        lambda: S.bootstrap_auc_test(y, p1, p2, clusters=patients, **b),
        lambda: S.bootstrap_auc_test(yk2, pk2, pk2_other, **b),
        lambda: S.bootstrap_auc_test(yk2, pk2, pk2_other, clusters=items, **b),
    ]


@pytest.mark.parametrize("row_chunk", [1, 400])
def test_bootstrap_row_chunking_is_bit_identical_and_bounds_the_weights(monkeypatch, row_chunk):
    """Sub-chunking the (resamples × rows) weights changes neither a result nor any resample's AUC,
    and no weight array exceeds the bound (one resample at least)."""
    original = S._weighted_auc

    def run_all():
        results, per_kernel, shapes = [], [], []

        def spy(pos, score):
            evaluate, seen = original(pos, score), []
            per_kernel.append(seen)

            def recorded(w):
                shapes.append(w.shape)
                seen.append(evaluate(w))
                return seen[-1]
            return recorded

        monkeypatch.setattr(S, "_weighted_auc", spy)
        for call in _bootstrap_calls():
            r = call()
            results.append((r, getattr(r, "n_skipped", None)))
        return results, [np.concatenate(s) for s in per_kernel], shapes

    reference, reference_aucs, reference_shapes = run_all()
    assert len(reference_shapes) == len(reference_aucs)  # default: each kernel sees all resamples at once
    assert reference[2][1] > 0  # the skip count is exercised
    monkeypatch.setattr(S, "_ROW_CHUNK_ELEMENTS", row_chunk)
    chunked, chunked_aucs, chunked_shapes = run_all()
    assert [repr(r) for r in chunked] == [repr(r) for r in reference]
    assert len(chunked_aucs) == len(reference_aucs)
    for a, b in zip(chunked_aucs, reference_aucs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(b <= max(1, row_chunk // n) for b, n in chunked_shapes)
    assert len(chunked_shapes) > len(reference_shapes)
