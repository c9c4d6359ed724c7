# Reference values for tests/study/test_stats.py (hard-coded there as R_*).
# Run: Rscript tests/study/r_reference.R
# The data are deterministic integer formulas, reproduced exactly in the Python test.
# Values in the test came from R 4.2.2 Patched (2022-11-10 r83330), pROC 1.18.0. Use R < 4.6.0 for
# the Wilcoxon lines: R 4.6.0 computes exact conditional p-values with ties and zeros (and ranks the
# zeros), so wx_small_ties differs there; later R-devel also keeps zeros in the normal approximation
# (wx_large_ties) and ranks signif(x, 7). wx_exact and wx_n50 (no ties, no zeros) agree in all versions.
suppressPackageStartupMessages(library(pROC))
f <- function(x) sprintf("%.17g", x)
cat("# ", R.version.string, ", pROC ", as.character(packageVersion("pROC")), "\n", sep = "")

# --- DeLong / AUC: 60 cases, tied scores -------------------------------------------------
i <- 0:59
y <- as.integer(((i * 37) %% 11) < 5)
p1 <- (((i * 29 + 7) %% 23) + 5 * y) / 10
p2 <- (((i * 17 + 3) %% 19) + 3 * y) / 8
r1 <- roc(y, p1, levels = c(0, 1), direction = "<", quiet = TRUE)
r2 <- roc(y, p2, levels = c(0, 1), direction = "<", quiet = TRUE)
t <- roc.test(r1, r2, method = "delong", paired = TRUE)
ci1 <- ci.auc(r1, method = "delong")
ci2 <- ci.auc(r2, method = "delong", conf.level = 0.9)
cat("auc1 =", f(as.numeric(auc(r1))), "\n")
cat("auc2 =", f(as.numeric(auc(r2))), "\n")
cat("delong_z =", f(unname(t$statistic)), "\n")
cat("delong_p =", f(t$p.value), "\n")
cat("ci1_95 =", f(ci1[1]), f(ci1[3]), "\n")
cat("ci2_90 =", f(ci2[1]), f(ci2[3]), "\n")

# --- Wilcoxon signed-rank ----------------------------------------------------------------
j <- 0:19  # exact: n = 20 < 50, no ties, no zeros
w1 <- wilcox.test((j * 31 + 5) %% 97, (j * 53 + 11) %% 89, paired = TRUE)
cat("wx_exact =", f(unname(w1$statistic)), f(w1$p.value), "#", w1$method, "\n")
m <- 0:14    # small with ties and zeros: normal approximation + continuity correction
w2 <- suppressWarnings(wilcox.test((m * 5 + 1) %% 7, (m * 3 + 2) %% 5, paired = TRUE))
cat("wx_small_ties =", f(unname(w2$statistic)), f(w2$p.value), "#", w2$method, "\n")
k <- 0:79    # large with ties and zeros
w3 <- suppressWarnings(wilcox.test((k * 13 + 2) %% 9, (k * 7 + 5) %% 8, paired = TRUE))
cat("wx_large_ties =", f(unname(w3$statistic)), f(w3$p.value), "#", w3$method, "\n")

# --- Holm ----------------------------------------------------------------------------------
ph <- c(0.01, 0.04, NA, 0.03, 0.005, 0.04, 0.2, 0.5, 0.0001)
cat("holm =", paste(f(p.adjust(ph, method = "holm")), collapse = " "), "\n")
q <- 0:49    # n = 50, no ties, no zeros: R already uses the normal approximation (scipy "auto" would not)
w4 <- wilcox.test((q * 31 + 5) %% 97 + q / 1024, (q * 53 + 11) %% 89, paired = TRUE)
cat("wx_n50 =", f(unname(w4$statistic)), f(w4$p.value), "#", w4$method, "\n")

# === NOT RUN HERE (no R on the machine that wrote the tests) ================================
# Obuchowski (1997) clustered AUC: DIDSR_THETA / DIDSR_COV_A in test_stats.py are the values the
# FDA/DIDSR authors stored in data/aucMRMCcluster.rda of github.com/DIDSR/mitoticFigureCounts
# (CC0), commit 5675b0b (2023-11-24), computed by their doAUCcluster() (R/doAUCcluster.R, adapted
# from Obuchowski's funcs_clusteredROC.R, lerner.ccf.org/qhs/software) in
# inst/extra/docs/05_doMRMCaucORcluster.R. They were read from the .rda (Python package rdata) and
# recomputed by medxfer.study.stats to a relative 1e-11. To print them, and to recompute one entry:
#   remotes::install_github("DIDSR/mitoticFigureCounts@5675b0b")
#   library(mitoticFigureCounts)
#   r <- aucMRMCcluster$ScannerA
#   cat("theta.hat =", f(t(r$theta.hat)), "\n")   # rows: microscope, scanner.A; 5 observers each
#   cat("cov.hat =", f(r$cov.hat), "\n")          # 10 x 10, column-major
#   d <- dfClassify20180627
#   m <- d[d$modalityID == "microscope", ]; m <- m[order(m$targetID), ]
#   a <- d[d$modalityID == "scanner.A", ];  a <- a[order(a$targetID), ]
#   x <- doAUCcluster(m$observer.1, a$observer.1, m$truth, m$wsiName)
#   cat(f(c(x$auc.var.A, x$auc.var.B, (x$auc.var.A + x$auc.var.B - x$auc.var.AminusB) / 2)), "\n")
#   # = cov.hat[1, 1], cov.hat[6, 6], cov.hat[1, 6]
# Obuchowski's own worked example (MRA, 65 arteries of 36 patients, Biometrics 53:574, Table 3;
# clusteredROC_help.pdf in the same repository: AUC 0.9837 (SE 0.0108) and 0.9852 (SE 0.0097),
# difference 0.0014 (SE 0.0066), p = 0.8271; I = 36, I10 = 23, I01 = 27, M = 29, N = 36) is not
# reproduced: its data file MRA.csv is not public in the sources searched.
#
# Paired bootstrap test of two AUCs (bootstrap_auc_test): pROC's counterpart, for comparison of
# p-values up to Monte-Carlo error only (R's and numpy's random streams differ), e.g. on the
# 60-case data above:
#   roc.test(r1, r2, method = "bootstrap", paired = TRUE, boot.n = 2000, boot.stratified = TRUE)
# D = (AUC1 - AUC2) / sd(bootstrap differences), p = 2 * pnorm(-abs(D)) (pROC R/bootstrap.R,
# R/roc.test.R, checked in xrobin/pROC 1.19.0.1 source). Its DeLong counterpart above gives
# delong_p = 0.36060740795794999; the bootstrap p should be close to it.
