"""The report's tables (cells, comparisons, pooled comparisons, per-class Dice, localization, similarity) as
formatted text, for HTML and Markdown."""
from __future__ import annotations

from collections.abc import Sequence

from .document import Table
from .formatting import finite, fmt3, fmt4g, fmt_ci, fmt_mean_sd, fmt_p, fmt_signed
from .model import SIM_HEADERS, CellSummary, CohortCounts, PooledGroup, Rate, StudySummary, sim_measures

# right-aligned columns, by header
NUMERIC_HEADERS = frozenset({"Runs", "Cases", "Pooled", "A", "B", "A − B", "p", "p (Holm)", "Transfer score",
                             "Transfer score (per fold)", "Pairs", "A (matched runs)", "B (matched runs)",
                             "Hit rate", "Dice", "IoU", "Fréchet distance", "MMD²", "Intensity distance",
                             "Source images", "Sources", "Patients", "Items", "TP", "FP", "FN", "TN",
                             "Sensitivity", "Specificity", "PPV", "NPV", "Brier", "Predictions"})
FLAGGED_TRANSFER = "n/a (degenerate baseline)"  # a transfer score against a degenerate scratch cell
LOC_MEASURES = {"loc_dice": "Dice (mean)", "loc_hit": "hit rate"}
CLASS_METRIC_PREFIX = "dice_"  # a per-class comparison's metric: dice_<class>


def _table(table_id: str, header: Sequence[str], rows: Sequence[Sequence[str]], row_ids: Sequence[str] = ()) -> Table:
    return Table(table_id=table_id, header=tuple(header), rows=tuple(tuple(r) for r in rows),
                 numeric=tuple(h in NUMERIC_HEADERS for h in header), row_ids=tuple(row_ids))


def metric_label(c: CellSummary) -> str:
    """The pooled metric of a cell as the tables name it: AUC, AUC (macro OvR) or Dice."""
    if c.task == "segmentation":
        return "Dice"
    return "AUC" if c.n_classes == 2 else "AUC (macro OvR)"


def _cases(c: CellSummary) -> str:
    """Distinct items pooled, and their patients when fewer (several items of one patient)."""
    if c.n_patients is not None and c.n_patients < c.n_cases:
        return f"{c.n_cases} ({c.n_patients} patients)"
    return str(c.n_cases)


def _fold_transfer(c: CellSummary) -> str:
    """Mean ± SD over folds of the per-fold transfer score: ``+12.3 ± 4.5 %``; ``(3 folds)`` after it when folds
    were left out (the Notes column says which)."""
    if not finite(c.transfer_fold_mean):
        return "n/a"
    folds = f" ({c.transfer_folds} fold{'s' if c.transfer_folds != 1 else ''})" if c.transfer_fold_note else ""
    if not finite(c.transfer_fold_sd):
        return f"{c.transfer_fold_mean:+.1f} %{folds}"
    return f"{c.transfer_fold_mean:+.1f} ± {c.transfer_fold_sd:.1f} %{folds}"


def cell_notes(c: CellSummary) -> str:
    """Why a cell or its transfer scores are not to be trusted ("" when they are): the cell's flag, its scratch
    baseline's (both transfer scores then read n/a), else the folds left out of the per-fold score."""
    return "; ".join(x for x in (c.flag, c.transfer_flag or c.transfer_fold_note) if x)


def cell_table(s: StudySummary) -> Table:
    """One row per cell: grid values, runs, mean ± SD per run, pooled metric with CI, transfer scores (pooled and
    per fold); a Notes column with the flags of degenerate cells and baselines when there are any."""
    notes = any(cell_notes(c) for c in s.cells)
    header = ["Task", *s.grid_keys, "Runs", "Folds", "Seeds", "Metric", "Mean ± SD (per run)", "Pooled",
              f"{int(s.level * 100)} % CI", "Cases", "Transfer score", "Transfer score (per fold)",
              *(["Notes"] if notes else [])]
    rows = []
    for c in s.cells:
        flagged = bool(c.transfer_flag)
        rows.append([c.task, *[c.grid.get(k, "") for k in s.grid_keys], str(c.n_runs), ",".join(c.folds),
                     ",".join(c.seeds), metric_label(c), fmt_mean_sd(c.mean, c.sd), fmt3(c.pooled),
                     fmt_ci(c.ci_low, c.ci_high), _cases(c),
                     FLAGGED_TRANSFER if flagged else fmt_signed(c.transfer_score, 1, " %"),
                     FLAGGED_TRANSFER if flagged else _fold_transfer(c), *([cell_notes(c)] if notes else [])])
    return _table("cells", header, rows, [c.cell for c in s.cells])


def pooled_value_table(groups: list[PooledGroup], table_id: str) -> Table:
    """One row per group and value of the compared key: runs pooled, mean ± SD of their test metric."""
    by = groups[0].spec.by
    header = ["Group", by, "Runs", "Mean ± SD (per run)"]
    rows = [[g.group, v.value, str(v.n_runs), fmt_mean_sd(v.mean, v.sd)] for g in groups for v in g.values]
    return _table(table_id, header, rows)


def pooled_comparison_table(groups: list[PooledGroup], table_id: str) -> Table:
    """One row per group and pair of values: matched runs, their means, the mean difference, Wilcoxon p."""
    header = ["Group", "Value A", "Value B", "Pairs", "A (matched runs)", "B (matched runs)", "A − B", "p", "p (Holm)",
              "Test"]
    rows = [[g.group, c.value_a, c.value_b, str(c.n_pairs), fmt3(c.a), fmt3(c.b), fmt_signed(c.difference),
             fmt_p(c.p), fmt_p(c.p_holm), c.test] for g in groups for c in g.comparisons]
    return _table(table_id, header, rows)


def comparison_table(s: StudySummary) -> Table:
    """One row per pair of weights sources compared (AUC by DeLong, Dice by Wilcoxon)."""
    header = ["Group", "Source A", "Source B", "Cases", "Metric", "A", "B", "A − B", "p", "p (Holm)", "Test"]
    rows = [[c.group, c.source_a, c.source_b, str(c.n_cases), c.metric, fmt3(c.a), fmt3(c.b), fmt_signed(c.difference),
             fmt_p(c.p), fmt_p(c.p_holm), c.test] for c in s.comparisons]
    return _table("comparisons", header, rows)


def class_cell_table(s: StudySummary) -> Table:
    """One row per cell and class: runs, mean ± SD per run, mean per-case Dice with its CI, cases."""
    header = [*s.grid_keys, "Class", "Runs", "Mean ± SD (per run)", "Dice", f"{int(s.level * 100)} % CI", "Cases"]
    rows, ids = [], []
    for c in s.class_cells:
        for k in c.classes:
            rows.append([*[c.grid.get(key, "") for key in s.grid_keys], k.name, str(k.n_runs),
                         fmt_mean_sd(k.mean, k.sd), fmt3(k.pooled), fmt_ci(k.ci_low, k.ci_high), str(k.n_cases)])
            ids.append(c.cell)
    return _table("classes", header, rows, ids)


def class_comparison_table(s: StudySummary) -> Table:
    """One row per pair of weights sources and class (per-case Dice by Wilcoxon)."""
    header = ["Group", "Class", "Source A", "Source B", "Cases", "A", "B", "A − B", "p", "p (Holm)", "Test"]
    rows = [[c.group, c.metric.removeprefix(CLASS_METRIC_PREFIX), c.source_a, c.source_b, str(c.n_cases), fmt3(c.a),
             fmt3(c.b), fmt_signed(c.difference), fmt_p(c.p), fmt_p(c.p_holm), c.test] for c in s.class_comparisons]
    return _table("class-comparisons", header, rows)


def loc_cell_table(s: StudySummary) -> Table:
    """One row per cell with localization: hit rate, Dice and IoU, pooled with CIs and per run."""
    pct = f"{int(s.level * 100)} % CI"
    header = [*s.grid_keys, "Runs", "Cases", "Hit rate", f"Hit rate {pct}", "Hit rate mean ± SD (per run)", "Dice",
              f"Dice {pct}", "Dice mean ± SD (per run)", "IoU", "IoU mean ± SD (per run)"]
    rows = []
    for c in s.loc_cells:
        L = c.loc
        rows.append([*[c.grid.get(k, "") for k in s.grid_keys], str(L.n_runs), str(L.n_cases), fmt3(L.hit),
                     fmt_ci(L.hit_ci_low, L.hit_ci_high), fmt_mean_sd(L.hit_mean, L.hit_sd), fmt3(L.dice),
                     fmt_ci(L.dice_ci_low, L.dice_ci_high), fmt_mean_sd(L.dice_mean, L.dice_sd), fmt3(L.iou),
                     fmt_mean_sd(L.iou_mean, L.iou_sd)])
    return _table("localization", header, rows)


def loc_comparison_table(s: StudySummary) -> Table:
    """One row per pair of weights sources and localization measure (Dice by Wilcoxon, hits by McNemar)."""
    header = ["Group", "Source A", "Source B", "Cases", "Measure", "A", "B", "A − B", "p", "p (Holm)", "Test"]
    rows = [[c.group, c.source_a, c.source_b, str(c.n_cases), LOC_MEASURES.get(c.metric, c.metric), fmt3(c.a),
             fmt3(c.b), fmt_signed(c.difference), fmt_p(c.p), fmt_p(c.p_holm), c.test] for c in s.loc_comparisons]
    return _table("localization-comparisons", header, rows)


def similarity_table(s: StudySummary) -> Table:
    """One row per pretrained source of a group: its distances (those some source has) and its transfer score."""
    measures = [m for m, _ in sim_measures(s.similarity.rows)]
    header = ["Group", "Source", *(SIM_HEADERS[m] for m in measures), "Source images", "Transfer score"]
    rows = [[r.group, r.source, *(fmt4g(getattr(r, m)) for m in measures),
             str(r.n_source) if r.n_source is not None else "n/a", fmt_signed(r.transfer_score, 1, " %")]
            for r in s.similarity.rows]
    return _table("similarity", header, rows)


def correlation_table(s: StudySummary) -> Table:
    """One row per group and distance: Spearman's ρ with the transfer score (or why it is undefined)."""
    header = ["Group", "Distance", "Sources", "Spearman ρ", "p", "p method"]
    rows = []
    for c in s.similarity.correlations:
        if c.note:
            rows.append([c.group, SIM_HEADERS[c.measure], str(c.n), c.note, "–", "–"])
        else:
            rows.append([c.group, SIM_HEADERS[c.measure], str(c.n), f"{c.rho:+.3f}", fmt_p(c.p), c.method])
    return _table("similarity-spearman", header, rows)


def _class_headers(n_classes: int | None) -> list[str]:
    if not n_classes:
        return []
    if n_classes == 2:
        return ["Negatives (class 0)", "Positives (class 1)"]
    return [f"Class {k}" for k in range(n_classes)]


def cohort_table(counts: CohortCounts, table_id: str = "cohort") -> Table:
    """One row per test fold and one for all folds: patients, items and (classification) items per class."""
    header = ["Test fold", "Patients", "Items", *_class_headers(counts.n_classes)]
    rows = [[f.fold, "n/a" if f.n_patients is None else str(f.n_patients), str(f.n_items),
             *(str(n) for n in f.class_counts)] for f in [*counts.folds, counts.overall]]
    return Table(table_id=table_id, header=tuple(header), rows=tuple(tuple(r) for r in rows),
                 numeric=(False, True, True, *([True] * len(_class_headers(counts.n_classes)))))


def _rate_cells(r: Rate) -> list[str]:
    return [fmt3(r.value), fmt_ci(r.low, r.high)]


def _threshold_range(c: CellSummary) -> str:
    m = c.clinical
    if m.threshold_min == m.threshold_max:
        return f"{m.threshold_min:.3f}"
    return f"{m.threshold_min:.3f}–{m.threshold_max:.3f}"


def clinical_table(s: StudySummary) -> Table:
    """One row per binary classification cell at its runs' validation operating points: the runs used, the
    thresholds' range, TP / FP / FN / TN pooled over folds and seeds, sensitivity, specificity, PPV and NPV with
    their CIs, the Brier score; a Notes column with the flags of degenerate cells when there are any."""
    pct = f"{int(s.level * 100)} % CI"
    cells = [c for c in s.cells if c.task == "classification" and c.n_classes == 2]
    notes = any(c.flag for c in cells)
    header = [*s.grid_keys, "Runs", "Thresholds", "TP", "FP", "FN", "TN", "Sensitivity", pct, "Specificity", pct,
              "PPV", pct, "NPV", pct, "Brier", *(["Notes"] if notes else [])]
    rows = []
    for c in cells:
        m = c.clinical
        grid = [c.grid.get(k, "") for k in s.grid_keys]
        if m is None:
            rows.append([*grid, f"0 of {c.n_runs}", "n/a", *(["n/a"] * 12), fmt3(c.brier),
                         *([c.flag] if notes else [])])
            continue
        runs = str(m.n_runs) if not m.n_runs_without else f"{m.n_runs} of {m.n_runs + m.n_runs_without}"
        rows.append([*grid, runs, _threshold_range(c), str(m.tp), str(m.fp), str(m.fn), str(m.tn),
                     *_rate_cells(m.sensitivity), *_rate_cells(m.specificity), *_rate_cells(m.ppv),
                     *_rate_cells(m.npv), fmt3(c.brier), *([c.flag] if notes else [])])
    return _table("clinical", header, rows, [c.cell for c in cells])


def confusion_table(s: StudySummary) -> Table:
    """One row per multi-class cell and true class: predictions of each class (argmax), pooled over folds and
    seeds, and the cell's Brier score on its first row."""
    cells = [c for c in s.cells if c.task == "classification" and c.n_classes not in (None, 2) and c.confusion]
    k = max((c.n_classes for c in cells), default=0)
    header = [*s.grid_keys, "True class", *(f"Predicted {j}" for j in range(k)), "Brier"]
    rows, ids = [], []
    for c in cells:
        for true, counts in enumerate(c.confusion):
            rows.append([*[c.grid.get(key, "") for key in s.grid_keys], str(true), *(str(n) for n in counts),
                         *([""] * (k - len(counts))), fmt3(c.brier) if true == 0 else ""])
            ids.append(c.cell)
    return Table(table_id="confusion", header=tuple(header), rows=tuple(tuple(r) for r in rows),
                 numeric=tuple(h not in s.grid_keys and h != "True class" for h in header), row_ids=tuple(ids))
