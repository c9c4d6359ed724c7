# Reference values for tests/study/test_stats.py (hard-coded there as R_REF).
# Run: Rscript tests/study/r_reference.R
# The data are deterministic integer formulas, reproduced exactly in the Python test.
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
