"""medxfer.study.stats against R (pROC 1.18.0 / stats, R 4.2.2) and against direct slow formulas.

The hard-coded R values come from ``Rscript tests/study/r_reference.R`` (R 4.2.2 Patched
(2022-11-10 r83330), pROC 1.18.0); the data there are integer formulas reproduced below.
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
    with pytest.raises(ValueError, match="both classes"):
        S.delong_test(np.ones(10), np.arange(10.0), np.arange(10.0)[::-1])
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
    with pytest.raises(ValueError, match="both positive and negative"):
        S.bootstrap_auc_ci([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], clusters=[0, 0, 1, 1])


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
