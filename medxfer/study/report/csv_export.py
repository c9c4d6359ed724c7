"""The report's machine-readable tables: ``results.csv``, ``comparisons.csv`` and, with a similarity
section, ``similarity.csv`` and ``similarity_spearman.csv`` (full precision, empty where undefined).

Per-class Dice (segmentation cells scoring two or more classes) adds the columns ``dice_<class>``,
``dice_<class>_ci_low``, ``dice_<class>_ci_high``, ``dice_<class>_mean``, ``dice_<class>_sd`` and
``dice_<class>_cases`` to ``results.csv`` and rows of metric ``dice_<class>`` (their own Holm family) to
``comparisons.csv``; a study without them keeps both files as they were.

Every cell row carries its per-fold transfer score (``transfer_score_fold_mean``, ``_fold_sd``, ``transfer_folds``),
the flags of a degenerate cell (``flag``) or scratch baseline (``transfer_flag``; its transfer scores are kept but
not to be trusted) and ``n_patients`` (empty when the predictions name no patients). A study with a cell whose
per-fold transfer score left folds out adds ``transfer_fold_note`` (which and why); one with a bootstrap CI resting on
fewer than all resamples adds ``ci_n_resamples`` and ``ci_n_skipped``. Pooled comparisons add rows
of metric ``pooled <metric>`` (``pooled test_auc``) to ``comparisons.csv``: ``group`` says what was compared and
pooled, ``source_a`` / ``source_b`` are the compared values, ``n_cases`` the matched runs, ``a`` / ``b`` their
mean test metric; their own Holm family."""
from __future__ import annotations

import csv
import os

from ...core.files import atomic_writer
from .formatting import csv_num
from .model import CellSummary, LocSummary, PooledGroup, StudySummary

LOC_COLUMNS = ["loc_runs", "loc_cases", "loc_hit", "loc_hit_ci_low", "loc_hit_ci_high", "loc_hit_mean", "loc_hit_sd",
               "loc_dice", "loc_dice_ci_low", "loc_dice_ci_high", "loc_dice_mean", "loc_dice_sd", "loc_iou",
               "loc_iou_mean", "loc_iou_sd"]


def _loc_values(L: LocSummary | None) -> list[str]:
    if L is None:
        return [""] * len(LOC_COLUMNS)
    return [str(L.n_runs), str(L.n_cases), *[csv_num(x) for x in (
        L.hit, L.hit_ci_low, L.hit_ci_high, L.hit_mean, L.hit_sd, L.dice, L.dice_ci_low, L.dice_ci_high, L.dice_mean,
        L.dice_sd, L.iou, L.iou_mean, L.iou_sd)]]


CLASS_SUFFIXES = ("", "_ci_low", "_ci_high", "_mean", "_sd", "_cases")
# results.csv columns of every study, after scratch_cell
CELL_COLUMNS = ["transfer_score_fold_mean", "transfer_score_fold_sd", "transfer_folds", "transfer_flag", "flag",
                "n_patients"]
# classification studies: the validation operating point pooled over folds and seeds, and the Brier score
CLINICAL_RATES = ("sensitivity", "specificity", "ppv", "npv")
CLINICAL_COLUMNS = ["threshold_runs", "threshold_min", "threshold_max", "tp", "fp", "fn", "tn",
                    *(f"{r}{x}" for r in CLINICAL_RATES for x in ("", "_ci_low", "_ci_high")), "brier"]
FOLD_NOTE_COLUMNS = ["transfer_fold_note"]  # only when some cell's per-fold transfer score left folds out
SKIPPED_COLUMNS = ["ci_n_resamples", "ci_n_skipped"]  # only when some cell's CI rests on fewer than all resamples


def class_columns(names: list[str]) -> list[str]:
    """``results.csv`` columns of the per-class Dice: for each class its pooled Dice, CI, mean, SD and cases."""
    return [f"dice_{name}{suffix}" for name in names for suffix in CLASS_SUFFIXES]


def _class_values(c: CellSummary, names: list[str]) -> list[str]:
    by_name = {k.name: k for k in c.classes}
    values: list[str] = []
    for name in names:
        k = by_name.get(name)
        values += ([""] * len(CLASS_SUFFIXES) if k is None else
                   [*(csv_num(x) for x in (k.pooled, k.ci_low, k.ci_high, k.mean, k.sd)), str(k.n_cases)])
    return values


def _clinical_values(c: CellSummary) -> list[str]:
    m = c.clinical
    if m is None:
        return [""] * (len(CLINICAL_COLUMNS) - 1) + [csv_num(c.brier)]
    rates = [getattr(m, r) for r in CLINICAL_RATES]
    return [str(m.n_runs), csv_num(m.threshold_min), csv_num(m.threshold_max), str(m.tp), str(m.fp), str(m.fn),
            str(m.tn), *(csv_num(x) for r in rates for x in (r.value, r.low, r.high)), csv_num(c.brier)]


def write_results_csv(s: StudySummary, path: str | os.PathLike) -> None:
    """One row per cell; the ``loc_*`` columns only when some cell has localization, the ``dice_<class>*``
    columns only when some cell has per-class Dice."""
    has_loc = bool(s.loc_cells)
    names = s.class_names
    fold_notes = any(c.transfer_fold_note for c in s.cells)
    skipped = any(c.ci_n_skipped for c in s.cells)
    clinical = any(c.task == "classification" for c in s.cells)
    with atomic_writer(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["study", "cell", "task", *s.grid_keys, "n_runs", "folds", "seeds", "metric", "mean", "sd",
                    "pooled", "ci_low", "ci_high", "transfer_score", "pooled_kind", "n_cases", "scratch_cell",
                    *CELL_COLUMNS, *(FOLD_NOTE_COLUMNS if fold_notes else []), *(SKIPPED_COLUMNS if skipped else []),
                    *(LOC_COLUMNS if has_loc else []), *class_columns(names),
                    *(CLINICAL_COLUMNS if clinical else [])])
        for c in s.cells:
            w.writerow([s.name, c.cell, c.task, *[c.grid.get(k, "") for k in s.grid_keys], c.n_runs,
                        ";".join(c.folds), ";".join(c.seeds), c.metric, csv_num(c.mean), csv_num(c.sd),
                        csv_num(c.pooled), csv_num(c.ci_low), csv_num(c.ci_high), csv_num(c.transfer_score),
                        c.pooled_kind, c.n_cases, c.scratch_cell or "", csv_num(c.transfer_fold_mean),
                        csv_num(c.transfer_fold_sd), c.transfer_folds if c.scratch_cell else "", c.transfer_flag,
                        c.flag, "" if c.n_patients is None else c.n_patients,
                        *([c.transfer_fold_note] if fold_notes else []),
                        *([s.n_resamples, c.ci_n_skipped] if skipped else []),
                        *(_loc_values(c.loc) if has_loc else []), *_class_values(c, names),
                        *((_clinical_values(c) if c.task == "classification" else [""] * len(CLINICAL_COLUMNS))
                          if clinical else [])])


def pooled_group_label(g: PooledGroup) -> str:
    """A pooled comparison's group in ``comparisons.csv``: ``weights, pooled over encoder, freeze: lr=0.001``."""
    return f"{g.spec.label}: {g.group}"


def write_comparisons_csv(s: StudySummary, path: str | os.PathLike) -> None:
    """One row per comparison; per-class rows (metric ``dice_<class>``, own Holm family), then localization rows
    (metric ``loc_dice`` / ``loc_hit``, own Holm family), then pooled comparisons (metric ``pooled <metric>``,
    own Holm family) last."""
    with atomic_writer(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["study", "task", "group", "source_a", "source_b", "cell_a", "cell_b", "n_cases", "metric", "a",
                    "b", "difference", "p", "p_holm", "test"])
        for c in [*s.comparisons, *s.class_comparisons, *s.loc_comparisons]:
            w.writerow([s.name, c.task, c.group, c.source_a, c.source_b, c.cell_a, c.cell_b, c.n_cases, c.metric,
                        csv_num(c.a), csv_num(c.b), csv_num(c.difference), csv_num(c.p), csv_num(c.p_holm), c.test])
        for g in s.pooled:
            for c in g.comparisons:
                w.writerow([s.name, g.task, pooled_group_label(g), c.value_a, c.value_b, "", "", c.n_pairs,
                            f"pooled {g.metric}", csv_num(c.a), csv_num(c.b), csv_num(c.difference), csv_num(c.p),
                            csv_num(c.p_holm), c.test])


def write_similarity_csvs(s: StudySummary, rows_path: str | os.PathLike, spearman_path: str | os.PathLike) -> None:
    """The similarity section: one row per source of a group, and one per group and distance (Spearman)."""
    sim = s.similarity
    others = [k for k in s.grid_keys if k != "weights"]
    with atomic_writer(rows_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["study", "task", "group", *others, "source", "cell", "scratch_cell", "frechet", "mmd2",
                    "intensity", "task2vec", "n_source", "n_target", "transfer_score"])
        for r in sim.rows:
            w.writerow([s.name, r.task, r.group, *[r.grid.get(k, "") for k in others], r.source, r.cell,
                        r.scratch_cell, csv_num(r.frechet), csv_num(r.mmd2), csv_num(r.intensity), csv_num(r.task2vec),
                        "" if r.n_source is None else r.n_source, "" if sim.n_target is None else sim.n_target,
                        csv_num(r.transfer_score)])
    with atomic_writer(spearman_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["study", "task", "group", "measure", "n", "rho", "p", "p_method", "note"])
        for c in sim.correlations:
            w.writerow([s.name, c.task, c.group, c.measure, c.n, csv_num(c.rho), csv_num(c.p), c.method, c.note])


def write_cohort_csv(s: StudySummary, path: str | os.PathLike) -> None:
    """One row per task and test fold (and ``all``): items, patients (empty when unnamed) and items per class."""
    k = max((c.n_classes or 0 for c in s.cohort), default=0)
    with atomic_writer(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["study", "task", "fold", "n_patients", "n_items", *(f"n_class_{j}" for j in range(k))])
        for c in s.cohort:
            for fold in [*c.folds, c.overall]:
                counts = [str(n) for n in fold.class_counts]
                w.writerow([s.name, c.task, fold.fold, "" if fold.n_patients is None else fold.n_patients,
                            fold.n_items, *counts, *([""] * (k - len(counts)))])


def write_calibration_csv(s: StudySummary, path: str | os.PathLike) -> None:
    """The reliability data of every binary cell: one row per non-empty bin of P(class 1)."""
    with atomic_writer(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["study", "cell", *s.grid_keys, "mean_predicted", "fraction_positive", "n"])
        for c in s.cells:
            for mean, frac, n in c.calibration:
                w.writerow([s.name, c.cell, *[c.grid.get(k, "") for k in s.grid_keys], csv_num(mean),
                            csv_num(frac), n])
