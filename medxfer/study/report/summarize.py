"""Summarise a collected study: per-cell statistics, pairwise comparisons, localization, similarity.

Per cell (one combination of grid values, all folds and seeds): mean ± SD of the runs' test
metric, the pooled metric (out-of-fold AUC, macro OvR AUC, or mean per-case Dice) with a
bootstrap CI, and the transfer score against the scratch cell with the same other grid values —
on the pooled metric, and per fold (cats-scans: each fold's score, then mean ± SD over folds).
Cells identical in every grid key but ``weights`` are compared on the items both have (DeLong,
a paired bootstrap for more than two classes, or Wilcoxon; localization by Wilcoxon and exact
McNemar), Holm-adjusted per family.

Patients: the bootstrap CIs resample patients (all items and seeds' predictions of a patient
together), and a binary comparison is Obuchowski's clustered DeLong when a patient has several
items; an item whose predictions name no patient (an empty pseudonym, or no patient column) is its own
unit, and a cell none of whose items has a pseudonym has no ``n_patients``. Where patients hold items of
two classes the bootstrap is unstratified and resamples lacking a class are skipped: the CIs and tests
carry the count (``CellSummary.ci_n_skipped``, ``Comparison.n_skipped``) and a note says how many of how
many resamples each rests on.

Degenerate cells are flagged (``CellSummary.flag``): constant predictions in a run, an AUC below
0.5 in most folds. A transfer score against a degenerate scratch cell (flagged, or a pooled AUC of
0.5 or below) carries the reason in ``CellSummary.transfer_flag``. The per-fold transfer score leaves
out the folds in which scratch is a degenerate baseline itself (a fold AUC at or below 0.5, a run with
constant predictions; a fold Dice of 0) and says which in ``CellSummary.transfer_fold_note``.

Pooled comparisons (the spec's ``compare``, :class:`~.model.PooledSpec`): the values of one grid key
on the runs' test metric, pooled over other grid keys, folds and seeds, per combination of the
remaining keys; each pair of values by the Wilcoxon signed-rank test on matched runs (same pooled
keys' values, fold and seed), Holm-adjusted as a family of their own.

Segmentation runs whose ``per_case.csv`` scores two or more classes (``dice_<class>``, native 3D with
``segments``) get the same statistics per class: mean ± SD over runs, mean per-case Dice with a bootstrap
CI, and Wilcoxon comparisons between weights sources on the shared cases, Holm-adjusted as a family of
their own (the ``dice`` comparisons, their mean over classes, keep theirs).

The runs of a cell are pooled only when they loaded the same weights (the ``weights.sha256`` each
run logged): a cell whose runs loaded different weights — a ``file:`` replaced or a name
re-imported during the study by a medxfer that did not pin them — is an error, not averaged.
"""
from __future__ import annotations

import itertools
import math
import platform
import time
from importlib import metadata
from statistics import NormalDist
from typing import Any

import numpy as np

from ..stats import (auc, bootstrap_auc_ci, bootstrap_auc_test, bootstrap_macro_auc_ci, bootstrap_mean_ci, delong_test,
                     holm, macro_ovr_auc, mcnemar_exact, mean_sd, spearman, transfer_score, wilcoxon_signed_rank)
from ...tracking.layout import SIMILARITY_ARTIFACT
from .model import (LEVEL, METRICS, SIM_MEASURES, CellSummary, ChildRun, ClassSummary, ClinicalSummary,
                    CohortCounts, Comparison, FoldCount, ItemSampling, LocSummary, NativeInput, PooledComparison,
                    PooledGroup, PooledSpec, PooledValue, Rate, ReportError, SimilarityCorrelation, SimilarityRow,
                    SimilaritySummary, StudyRuns, StudySummary)

CALIBRATION_BINS = 10  # equal-width bins of P(class 1) in the reliability data
SOFTWARE = ("medxfer", "monai", "torch", "python")  # versions the methods name (runs' params software.<name>)
SOFTWARE_PARAM = "software."
# run params (or metrics.json config keys) the paste-ready methods report, in this order
SETTING_KEYS = ("epochs", "batch_size", "image_size", "lr", "encoder_lr_scale", "weight_decay", "dropout",
                "augment", "class_weighting", "freeze")


def _natural(value: str) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _value_key(key: str, value: str) -> tuple:
    if key == "weights" and value == "scratch":
        return (2, 0.0, "")  # scratch last: comparisons read "source − scratch"
    return _natural(value)


def per_item(items: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct item ids and the nan-ignoring mean of ``values`` per item (over seeds)."""
    uniq, inv = np.unique(items.astype(str), return_inverse=True)
    ok = ~np.isnan(values)
    s = np.bincount(inv[ok], weights=values[ok], minlength=len(uniq))
    n = np.bincount(inv[ok], minlength=len(uniq))
    with np.errstate(invalid="ignore", divide="ignore"):
        return uniq, np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _per_item_prob(items: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct item ids and each item's class probabilities averaged over its rows (seeds), per class."""
    columns = [per_item(items, prob[:, k]) for k in range(prob.shape[1])]
    return columns[0][0], np.column_stack([v for _, v in columns])


def patients_of(runs: list[ChildRun]) -> dict[str, str]:
    """Each item's patient (the manifest's pseudonym), from the runs whose predictions.csv names them; items
    with an empty pseudonym (the manifest names no patient) are left out: their patient is unknown."""
    out: dict[str, str] = {}
    for r in runs:
        if r.patient is not None:
            for item, patient in zip(r.item_id.astype(str), r.patient.astype(str)):
                if patient.strip():
                    out.setdefault(item, patient)
    return out


def _clusters(items: np.ndarray, patients: dict[str, str]) -> np.ndarray:
    """The cluster of each row: its item's patient, or the item itself where no run named a patient."""
    return np.array([f"p:{patients[i]}" if i in patients else f"i:{i}" for i in items.astype(str)], dtype=object)


def _if_repeated(clusters: np.ndarray) -> np.ndarray | None:
    """``clusters`` when some cluster holds several rows, else None (every row its own unit: the plain methods)."""
    return clusters if np.unique(clusters.astype(str)).size < clusters.size else None


def _run_names(runs: list[ChildRun]) -> str:
    names = [f"fold{r.fold}/seed{r.seed}" for r in runs]
    return ", ".join(names[:3]) + (", …" if len(names) > 3 else "")


def fold_metrics(runs: list[ChildRun]) -> dict[str, float]:
    """Each fold's test metric: the mean over the fold's runs (seeds) with a finite one; nan when none has."""
    by_fold: dict[str, list[float]] = {}
    for r in runs:
        by_fold.setdefault(r.fold, []).append(r.metric)
    return {k: _nanmean(np.array(v, dtype=float)) for k, v in by_fold.items()}


def cell_flag(runs: list[ChildRun]) -> str:
    """Why a classification cell is degenerate: a run with constant predictions, or a test AUC below 0.5 in
    most folds (seeds averaged per fold); "" when it is not."""
    constant = [r for r in runs if r.constant]
    if constant:
        return f"constant predictions in {len(constant)} of {len(runs)} run(s) ({_run_names(constant)})"
    values = [v for v in fold_metrics(runs).values() if math.isfinite(v)]
    below = sum(v < 0.5 for v in values)
    if values and below > len(values) / 2:
        return f"AUC below 0.5 in {below} of {len(values)} folds"
    return ""


def _folds_words(folds: list[str]) -> str:
    return f"fold{'s' if len(folds) > 1 else ''} {', '.join(folds)}"


def fold_transfer(source: list[ChildRun], scratch: list[ChildRun]) -> tuple[list[float], str]:
    """The per-fold transfer scores of ``source`` against ``scratch`` (each fold's test metric, seeds averaged, on
    the folds both have; finite ones) and a note on the folds left out because scratch is a degenerate baseline in
    them — a fold AUC at or below chance (0.5) or a run with constant predictions (classification), a fold Dice of
    0 (segmentation): "per-fold: 2 of 5 folds left out (scratch at or below chance in folds 0, 1)"; "" when none."""
    a, b = fold_metrics(source), fold_metrics(scratch)
    segmentation = any(r.task == "segmentation" for r in scratch)
    constant = {r.fold for r in scratch if r.constant}
    shared = sorted((k for k in a if k in b), key=_natural)
    flat, low, scores = [], [], []
    for k in shared:
        if k in constant:
            flat.append(k)
        elif math.isfinite(b[k]) and (b[k] == 0 if segmentation else b[k] <= 0.5):
            low.append(k)
        else:
            scores.append(transfer_score(a[k], b[k]))
    if not flat and not low:
        return [v for v in scores if math.isfinite(v)], ""
    why = []
    if low:
        why.append(f"scratch {'Dice 0' if segmentation else 'at or below chance'} in {_folds_words(low)}")
    if flat:
        why.append(f"scratch constant predictions in {_folds_words(flat)}")
    n_out = len(flat) + len(low)
    note = f"per-fold: {n_out} of {len(shared)} folds left out ({'; '.join(why)})"
    return [v for v in scores if math.isfinite(v)], note


def baseline_flag(scratch: CellSummary) -> str:
    """Why a scratch cell is a degenerate baseline for transfer scores (flagged itself, a pooled AUC of exactly
    0.5, below chance, or a pooled Dice of 0); "" when it is a fair one."""
    if scratch.flag:
        return f"degenerate scratch baseline: {scratch.flag}"
    if scratch.task == "segmentation":
        return "degenerate scratch baseline: pooled Dice 0" if scratch.pooled == 0 else ""
    if math.isclose(scratch.pooled, 0.5, abs_tol=1e-12):  # exactly chance, up to rounding of the AUC
        return "degenerate scratch baseline: pooled AUC exactly 0.5 (chance)"
    if scratch.pooled < 0.5:
        return f"degenerate scratch baseline: pooled AUC {scratch.pooled:.3f}, below chance"
    return ""


def _summarize_cell(cell: str, runs: list[ChildRun], n_resamples: int, seed: int,
                    patients: dict[str, str] | None = None) -> CellSummary:
    first = runs[0]
    task = first.task
    values = [r.metric for r in runs]
    mean, sd = mean_sd(values)
    items = np.concatenate([r.item_id for r in runs]).astype(str)
    n_cases = int(len(np.unique(items)))
    common = dict(cell=cell, task=task, grid=dict(first.grid), n_runs=len(runs),
                  folds=sorted({r.fold for r in runs}, key=_natural),
                  seeds=sorted({r.seed for r in runs}, key=_natural),
                  metric=METRICS[task], mean=mean, sd=sd, run_values=values, n_cases=n_cases)
    if task == "segmentation":
        _, case_dice = per_item(items, np.concatenate([r.dice for r in runs]))
        case_dice = case_dice[~np.isnan(case_dice)]
        pooled = float(np.mean(case_dice)) if case_dice.size else math.nan
        lo, hi = bootstrap_mean_ci(case_dice, n_resamples=n_resamples, level=LEVEL, seed=seed)
        return CellSummary(**common, pooled=pooled, ci_low=lo, ci_high=hi, pooled_kind="per-case Dice")

    widths = {r.prob.shape[1] for r in runs}
    if len(widths) != 1:
        raise ReportError(f"cell {cell}: runs disagree on the number of classes")
    n_classes = widths.pop()
    patients = patients or {}
    uniq = np.unique(items)
    unnamed = int(sum(i not in patients for i in uniq))
    # n_patients only where some item has a real pseudonym: items alone are not "patients"
    common.update(flag=cell_flag(runs), n_without_patient=unnamed,
                  n_patients=int(np.unique(_clusters(uniq, patients).astype(str)).size) if unnamed < uniq.size
                  else None)
    y = np.concatenate([r.y for r in runs])
    prob = np.concatenate([r.prob for r in runs])
    keep = np.isfinite(prob).all(axis=1)
    y, prob, items = y[keep], prob[keep], items[keep]
    # resample patients: all items of a patient and all seeds' predictions of an item together
    clusters = _if_repeated(_clusters(items, patients))
    if n_classes != 2:
        try:
            pooled = macro_ovr_auc(y, prob)
            ci = bootstrap_macro_auc_ci(y, prob, n_resamples=n_resamples, level=LEVEL, seed=seed, clusters=clusters)
            lo, hi, skipped = ci.low, ci.high, ci.n_skipped
        except ValueError:  # labels outside the probability columns
            pooled, lo, hi, skipped = math.nan, math.nan, math.nan, 0
        return CellSummary(**common, pooled=pooled, ci_low=lo, ci_high=hi, n_classes=n_classes,
                           pooled_kind="OOF macro OvR AUC", ci_n_skipped=skipped)
    p = prob[:, 1]
    pooled = auc(y, p)
    try:
        ci = bootstrap_auc_ci(y, p, n_resamples=n_resamples, level=LEVEL, seed=seed, clusters=clusters)
        lo, hi, skipped = ci.low, ci.high, ci.n_skipped
    except ValueError:  # e.g. labels other than 0 / 1
        lo, hi, skipped = math.nan, math.nan, 0
    roc = None
    if 0 < y.sum() < len(y):
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(y, p)
        roc = (fpr, tpr)
    return CellSummary(**common, pooled=pooled, ci_low=lo, ci_high=hi, n_classes=2, pooled_kind="OOF AUC", roc=roc,
                       ci_n_skipped=skipped)


def class_names(runs: list[ChildRun]) -> list[str]:
    """The classes the runs scored per case (``dice_<class>`` columns), in column order; empty with fewer
    than two (one foreground class is the ``dice`` column itself)."""
    names = list(dict.fromkeys(name for r in runs for name in r.class_dice))
    return names if len(names) >= 2 else []


def _summarize_classes(runs: list[ChildRun], n_resamples: int, seed: int) -> list[ClassSummary]:
    """Per class: mean ± SD over the runs that scored it, mean per-case Dice (seeds averaged per case) with
    a percentile bootstrap CI."""
    out = []
    for name in class_names(runs):
        scored = [r for r in runs if name in r.class_dice]
        mean, sd = mean_sd([_nanmean(r.class_dice[name]) for r in scored])
        items = np.concatenate([r.item_id for r in scored]).astype(str)
        _, case_dice = per_item(items, np.concatenate([r.class_dice[name] for r in scored]))
        case_dice = case_dice[~np.isnan(case_dice)]
        lo, hi = bootstrap_mean_ci(case_dice, n_resamples=n_resamples, level=LEVEL, seed=seed)
        out.append(ClassSummary(name=name, n_runs=len(scored), mean=mean, sd=sd,
                                pooled=float(np.mean(case_dice)) if case_dice.size else math.nan,
                                ci_low=lo, ci_high=hi, n_cases=int(case_dice.size)))
    return out


def _nanmean(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return float(np.mean(v)) if v.size else math.nan


def _loc_per_item(runs: list[ChildRun]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scored items of runs with localization, and their hit / Dice / IoU averaged over seeds."""
    items = np.concatenate([r.loc.item_id for r in runs]).astype(str)
    ids, hit = per_item(items, np.concatenate([r.loc.hit for r in runs]))
    _, dice = per_item(items, np.concatenate([r.loc.dice for r in runs]))
    _, iou = per_item(items, np.concatenate([r.loc.iou for r in runs]))
    return ids, hit, dice, iou


def _summarize_loc(runs: list[ChildRun], n_resamples: int, seed: int) -> LocSummary | None:
    with_loc = [r for r in runs if r.loc is not None]
    if not with_loc:
        return None
    ids, hit, dice, iou = _loc_per_item(with_loc)
    hit_lo, hit_hi = bootstrap_mean_ci(hit, n_resamples=n_resamples, level=LEVEL, seed=seed)
    dice_lo, dice_hi = bootstrap_mean_ci(dice, n_resamples=n_resamples, level=LEVEL, seed=seed)
    hit_mean, hit_sd = mean_sd([_nanmean(r.loc.hit) for r in with_loc])
    dice_mean, dice_sd = mean_sd([_nanmean(r.loc.dice) for r in with_loc])
    iou_mean, iou_sd = mean_sd([_nanmean(r.loc.iou) for r in with_loc])
    return LocSummary(n_runs=len(with_loc), n_cases=int(ids.size), hit=_nanmean(hit), hit_ci_low=hit_lo,
                      hit_ci_high=hit_hi, dice=_nanmean(dice), dice_ci_low=dice_lo, dice_ci_high=dice_hi,
                      iou=_nanmean(iou), hit_mean=hit_mean, hit_sd=hit_sd, dice_mean=dice_mean, dice_sd=dice_sd,
                      iou_mean=iou_mean, iou_sd=iou_sd)


def group_description(task: str, grid: dict[str, str], tasks: set[str]) -> str:
    """A group of comparable cells in words: its grid values but ``weights`` (and the task when there are two)."""
    parts = [f"{k}={v}" for k, v in grid.items() if k != "weights"]
    text = ", ".join(parts) if parts else "all cells"
    return f"{task}: {text}" if len(tasks) > 1 else text


def _too_few(y: np.ndarray, clusters: np.ndarray | None, binary: bool) -> str:
    """Why a comparison has no p-value when a class has fewer than 2 units (cases; patients when clustered)."""
    for c in ([1, 0] if binary else np.unique(y)):
        units = int(np.sum(y == c)) if clusters is None else int(np.unique(clusters[y == c].astype(str)).size)
        if units < 2:
            what = ("positives" if c == 1 else "negatives") if binary else f"cases of class {int(c)}"
            return f"n/a (fewer than 2 {'patients with ' if clusters is not None else ''}{what})"
    return "n/a (no variance of the difference)"


def _compare(ca: CellSummary, cb: CellSummary, ra: list[ChildRun], rb: list[ChildRun], group: str,
             patients: dict[str, str] | None = None, n_resamples: int = 2000, seed: int = 0) -> Comparison:
    """Two cells on the items both have, probabilities averaged over seeds per item: binary by DeLong (Obuchowski's
    clustered DeLong when a patient has several items), more classes by the paired bootstrap of the macro OvR AUC
    (resampling patients); segmentation by Wilcoxon on per-case Dice."""
    base = dict(task=ca.task, group=group, source_a=ca.grid.get("weights", ""), source_b=cb.grid.get("weights", ""),
                cell_a=ca.cell, cell_b=cb.cell, p_holm=math.nan)
    items_a = np.concatenate([r.item_id for r in ra]).astype(str)
    items_b = np.concatenate([r.item_id for r in rb]).astype(str)
    if ca.task == "segmentation":
        return _paired_dice(base, "Dice", items_a, np.concatenate([r.dice for r in ra]),
                            items_b, np.concatenate([r.dice for r in rb]))
    binary = ca.n_classes == 2
    metric = "AUC" if binary else "AUC (macro OvR)"
    if ca.n_classes != cb.n_classes:
        return Comparison(**base, n_cases=0, metric=metric, a=ca.pooled, b=cb.pooled, difference=math.nan,
                          p=math.nan, test="n/a (different numbers of classes)")
    ia, pa = _per_item_prob(items_a, np.concatenate([r.prob for r in ra]))
    ib, pb = _per_item_prob(items_b, np.concatenate([r.prob for r in rb]))
    _, ya = per_item(items_a, np.concatenate([r.y for r in ra]).astype(float))
    _, yb = per_item(items_b, np.concatenate([r.y for r in rb]).astype(float))
    shared, xa, xb = np.intersect1d(ia, ib, return_indices=True)
    y, a, b = ya[xa], pa[xa], pb[xb]
    # the same label in both cells (and in every seed), finite probabilities
    ok = ((y == yb[xb]) & (y == np.round(y)) & (y >= 0) & (y < ca.n_classes) & np.isfinite(a).all(axis=1)
          & np.isfinite(b).all(axis=1))
    y, a, b, shared = y[ok].astype(int), a[ok], b[ok], shared[ok]
    if np.unique(y).size < 2:
        return Comparison(**base, n_cases=int(y.size), metric=metric, a=math.nan, b=math.nan, difference=math.nan,
                          p=math.nan, test="n/a (shared cases lack a class)")
    clusters = _if_repeated(_clusters(shared, patients or {}))
    by_patient = "" if clusters is None else f"clustered by patient, {np.unique(clusters.astype(str)).size} patients"
    if binary:
        res = delong_test(y, a[:, 1], b[:, 1], clusters=clusters)
        test = "DeLong" + (f" (Obuchowski {by_patient})" if by_patient else "")
        found = dict(n_cases=res.n_positive + res.n_negative, a=res.auc1, b=res.auc2, difference=res.difference,
                     p=res.p_value, se=res.se)
    else:
        res = bootstrap_auc_test(y, a, b, n_resamples=n_resamples, seed=seed, clusters=clusters)
        used = f"{n_resamples - res.n_skipped} of {n_resamples}" if res.n_skipped else f"{n_resamples}"
        test = f"paired bootstrap ({used} resamples" + (f", {by_patient})" if by_patient else ")")
        found = dict(n_cases=res.n_cases, a=res.auc1, b=res.auc2, difference=res.difference, p=res.p_value,
                     n_skipped=res.n_skipped, se=res.se)
    if not math.isfinite(found["p"]):
        test = _too_few(y, clusters, binary)
    return Comparison(**base, metric=metric, test=test, **found)


def _paired_dice(base: dict, metric: str, items_a: np.ndarray, dice_a: np.ndarray, items_b: np.ndarray,
                 dice_b: np.ndarray) -> Comparison:
    """Per-case Dice of two cells (seeds averaged per case) on their shared cases: Wilcoxon signed-rank."""
    ia, da = per_item(items_a, dice_a)
    ib, db = per_item(items_b, dice_b)
    _, xa, xb = np.intersect1d(ia, ib, return_indices=True)
    a, b = da[xa], db[xb]
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if a.size == 0:
        return Comparison(**base, n_cases=0, metric=metric, a=math.nan, b=math.nan, difference=math.nan,
                          p=math.nan, test="n/a (no shared cases)")
    _, p = wilcoxon_signed_rank(a, b)
    ma, mb = float(np.mean(a)), float(np.mean(b))
    return Comparison(**base, n_cases=int(a.size), metric=metric, a=ma, b=mb, difference=ma - mb, p=p,
                      test="Wilcoxon signed-rank")


def _compare_classes(ca: CellSummary, cb: CellSummary, ra: list[ChildRun], rb: list[ChildRun],
                     group: str) -> list[Comparison]:
    """Per-class Dice of two cells, each class both scored (metric ``dice_<class>``), by :func:`_paired_dice`."""
    base = dict(task=ca.task, group=group, source_a=ca.grid.get("weights", ""), source_b=cb.grid.get("weights", ""),
                cell_a=ca.cell, cell_b=cb.cell, p_holm=math.nan)
    shared = [k.name for k in ca.classes if k.name in {x.name for x in cb.classes}]
    out = []
    for name in shared:
        sa = [r for r in ra if name in r.class_dice]
        sb = [r for r in rb if name in r.class_dice]
        out.append(_paired_dice(base, f"dice_{name}",
                                np.concatenate([r.item_id for r in sa]).astype(str),
                                np.concatenate([r.class_dice[name] for r in sa]),
                                np.concatenate([r.item_id for r in sb]).astype(str),
                                np.concatenate([r.class_dice[name] for r in sb])))
    return out


def native_inputs(runs: list[ChildRun]) -> list[NativeInput]:
    """The patch sizes and voxel grids with which runs fed whole volumes to 3D networks, each with its cells;
    empty when no run did (``input: 3d``)."""
    groups: dict[tuple[str, str, str], list[ChildRun]] = {}
    for r in runs:
        if r.volumetric:
            key = (r.task, r.sampling.get("roi_size", "None"), r.sampling.get("spacing", "None"))
            groups.setdefault(key, []).append(r)
    return [NativeInput(task=task, roi_size=roi, spacing=spacing, cells=sorted({r.cell for r in members}),
                        n_runs=len(members)) for (task, roi, spacing), members in groups.items()]


def _compare_loc(ca: CellSummary, cb: CellSummary, ra: list[ChildRun], rb: list[ChildRun],
                 group: str) -> list[Comparison]:
    """Localization of two cells on their shared scored cases (item ids; seeds averaged per case):
    Wilcoxon signed-rank on per-case Dice, exact McNemar on per-case hits (a case's hit over several
    seeds is the majority; cases tied over seeds are left out of the McNemar test)."""
    la = [r for r in ra if r.loc is not None]
    lb = [r for r in rb if r.loc is not None]
    if not la or not lb:
        return []
    base = dict(task=ca.task, group=group, source_a=ca.grid.get("weights", ""), source_b=cb.grid.get("weights", ""),
                cell_a=ca.cell, cell_b=cb.cell, p_holm=math.nan)
    ia, ha, da, _ = _loc_per_item(la)
    ib, hb, db, _ = _loc_per_item(lb)
    _, xa, xb = np.intersect1d(ia, ib, return_indices=True)
    out: list[Comparison] = []
    a, b = da[xa], db[xb]
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if a.size:
        _, p = wilcoxon_signed_rank(a, b)
        ma, mb = float(np.mean(a)), float(np.mean(b))
        out.append(Comparison(**base, n_cases=int(a.size), metric="loc_dice", a=ma, b=mb, difference=ma - mb, p=p,
                              test="Wilcoxon signed-rank"))
    else:
        out.append(Comparison(**base, n_cases=0, metric="loc_dice", a=math.nan, b=math.nan, difference=math.nan,
                              p=math.nan, test="n/a (no shared cases)"))
    a, b = ha[xa], hb[xb]
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if a.size:
        decided = (a != 0.5) & (b != 0.5)
        p = mcnemar_exact(a[decided] > 0.5, b[decided] > 0.5)
        tied = int(a.size - decided.sum())
        test = "McNemar exact" + (f" ({tied} case(s) tied over seeds left out)" if tied else "")
        ma, mb = float(np.mean(a)), float(np.mean(b))
        out.append(Comparison(**base, n_cases=int(a.size), metric="loc_hit", a=ma, b=mb, difference=ma - mb, p=p,
                              test=test))
    else:
        out.append(Comparison(**base, n_cases=0, metric="loc_hit", a=math.nan, b=math.nan, difference=math.nan,
                              p=math.nan, test="n/a (no shared cases)"))
    return out


def _json_float(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _similarity(data: dict | None, cells: list[CellSummary], keys: list[str], tasks: set[str],
                notes: list[str]) -> SimilaritySummary | None:
    """Distances of each pretrained source (similarity.json) against its transfer score, per group of
    cells equal in every grid key but ``weights`` that has a scratch cell; Spearman per distance.

    A distance no source of the grid has (Task2Vec in a similarity.json written before medxfer had
    it, or with no labelled task) gets no correlation; a source without a Task2Vec distance says why
    in a note. A cell whose transfer score rests on a degenerate scratch baseline (its
    ``transfer_flag``) stays in the table but is left out of the correlations, with a note."""
    if data is None:
        return None
    if "weights" not in keys:
        notes.append(f"{SIMILARITY_ARTIFACT} is ignored: the grid has no weights key")
        return None
    sources = {str(k): v for k, v in data["sources"].items() if isinstance(v, dict)}
    pretrained = {c.grid.get("weights", "") for c in cells} - {"scratch"}
    unknown = sorted(k for k in sources if k not in pretrained)
    if unknown:
        notes.append(f"{SIMILARITY_ARTIFACT}: source(s) {', '.join(unknown)} not among the grid's pretrained "
                     "weights sources, ignored")
    missing = sorted(w for w in pretrained if w not in sources)
    if missing:
        notes.append(f"{SIMILARITY_ARTIFACT} has no distances for weights source(s) {', '.join(missing)}; "
                     "left out of the similarity section")
    in_grid = [sources[w] for w in sorted(pretrained) if w in sources]
    measures = [m for m, _ in SIM_MEASURES if any(math.isfinite(_json_float(e.get(m))) for e in in_grid)]
    if "task2vec" not in data:
        notes.append(f"{SIMILARITY_ARTIFACT} was written before medxfer computed Task2Vec: no Task2Vec distances "
                     "(a study run with a similarity section computes them)")
    for w in sorted(pretrained):
        why = sources.get(w, {}).get("task2vec_note")
        if why and not math.isfinite(_json_float(sources[w].get("task2vec"))):
            notes.append(f"{SIMILARITY_ARTIFACT}: no Task2Vec distance for {w}: {why}")
    groups: dict[tuple, list[CellSummary]] = {}
    for c in cells:
        groups.setdefault((c.task, tuple((k, v) for k, v in c.grid.items() if k != "weights")), []).append(c)
    rows: list[SimilarityRow] = []
    correlations: list[SimilarityCorrelation] = []
    flagged: list[str] = []
    for members in groups.values():
        if not any(c.grid.get("weights") == "scratch" for c in members):
            continue
        group = group_description(members[0].task, members[0].grid, tasks)
        group_rows = []
        for c in members:
            w = c.grid.get("weights", "")
            if w == "scratch" or w not in sources or c.scratch_cell is None:
                continue
            entry = sources[w]
            n_src = _json_float(entry.get("n"))
            group_rows.append(SimilarityRow(
                task=c.task, group=group, grid=dict(c.grid), cell=c.cell, scratch_cell=c.scratch_cell, source=w,
                frechet=_json_float(entry.get("frechet")), mmd2=_json_float(entry.get("mmd2")),
                intensity=_json_float(entry.get("intensity")),
                n_source=int(n_src) if math.isfinite(n_src) else None,
                transfer_score=float(c.transfer_score) if c.transfer_score is not None else math.nan,
                task2vec=_json_float(entry.get("task2vec"))))
        if not group_rows:
            continue
        rows += group_rows
        # a transfer score over a degenerate scratch baseline is not a measure of transfer: not correlated
        flags = {c.cell: getattr(c, "transfer_flag", "") for c in members}
        flagged += [f"{r.source} ({group})" for r in group_rows if flags.get(r.cell)]
        ts = [math.nan if flags.get(r.cell) else r.transfer_score for r in group_rows]
        for measure in measures:
            with np.errstate(all="ignore"):
                rho, p, n, method = spearman([getattr(r, measure) for r in group_rows], ts)
            note = "" if method != "undefined" else ("n < 3: undefined" if n < 3 else "undefined (constant values)")
            correlations.append(SimilarityCorrelation(task=members[0].task, group=group, measure=measure, n=n,
                                                      rho=rho, p=p, method=method, note=note))
    if flagged:
        notes.append(f"similarity: left out of the Spearman correlations, their transfer score resting on a degenerate "
                     f"scratch baseline (transfer_flag): {'; '.join(flagged)}")
    if not rows:
        notes.append(f"{SIMILARITY_ARTIFACT} names no pretrained source of a group with a scratch cell; "
                     "no similarity section")
        return None
    target = data.get("target") if isinstance(data.get("target"), dict) else {}
    n_target = _json_float(target.get("n"))
    return SimilaritySummary(encoder=str(data.get("encoder", "")), weights=str(data.get("weights", "")),
                             image_size=str(data.get("image_size", "")),
                             n_target=int(n_target) if math.isfinite(n_target) else None,
                             rows=rows, correlations=correlations)


def _count(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def item_sampling(runs: list[ChildRun]) -> list[ItemSampling]:
    """The settings (task, input, slices, aggregate) with which runs cut volumes / cines into 2D samples,
    from the params they logged, each with its cells and the test items / samples summed over its runs;
    empty when every run trained on 2D items."""
    groups: dict[tuple[str, str, str, str], list[ChildRun]] = {}
    for r in runs:
        if r.sliced:
            settings = r.sampling
            key = (r.task, settings.get("input", "2d"), settings.get("slices", "all"), settings.get("aggregate", ""))
            groups.setdefault(key, []).append(r)
    out = []
    for (task, input_mode, slices, aggregate), members in groups.items():
        items = [_count(r.sampling.get("data.n_test")) for r in members]
        samples = [_count(r.sampling.get("data.n_test_samples")) for r in members]
        out.append(ItemSampling(task=task, input=input_mode, slices=slices, aggregate=aggregate,
                                cells=sorted({r.cell for r in members}), n_runs=len(members),
                                n_test_items=None if None in items else sum(items),
                                n_test_samples=None if None in samples else sum(samples)))
    return out


def check_one_weights(cell: str, runs: list[ChildRun]) -> None:
    """:class:`ReportError` when the runs of ``cell`` loaded different weights (their logged sha256;
    runs without one — scratch, older runs — are not judged): pooling them would average two models."""
    where: dict[str, list[str]] = {}
    for r in runs:
        if r.weights_sha256:
            where.setdefault(r.weights_sha256, []).append(f"fold{r.fold}/seed{r.seed} (run {r.run_id})")
    if len(where) > 1:
        found = "; ".join(f"{sha[:12]}… in {', '.join(runs_of)}"
                          for sha, runs_of in sorted(where.items(), key=lambda kv: kv[1]))
        raise ReportError(f"cell {cell}: its runs loaded different weights (sha256 {found}); the weights changed "
                          "during the study: delete the runs of the wrong weights in MLflow (or run them again) "
                          "and report again")


def _paired_runs(spec: PooledSpec, runs: list[ChildRun]) -> dict[str, dict[tuple, float]]:
    """{value of ``by``: {(pooled keys' values, fold, seed): test metric}} of one group's runs."""
    out: dict[str, dict[tuple, float]] = {}
    for r in runs:
        match = (tuple(r.grid.get(k, "") for k in spec.pool), r.fold, r.seed)
        out.setdefault(r.grid.get(spec.by, ""), {})[match] = r.metric
    return out


def _pooled_pair(va: str, vb: str, a_runs: dict[tuple, float], b_runs: dict[tuple, float]) -> PooledComparison:
    """Two values of ``by`` on their matched runs (same pooled keys' values, fold, seed; finite metrics): Wilcoxon."""
    shared = sorted(set(a_runs) & set(b_runs))
    a = np.array([a_runs[k] for k in shared], dtype=float)
    b = np.array([b_runs[k] for k in shared], dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size == 0:
        return PooledComparison(va, vb, 0, math.nan, math.nan, math.nan, math.nan, math.nan, "n/a (no matched runs)")
    _, p = wilcoxon_signed_rank(a, b)
    return PooledComparison(va, vb, int(a.size), float(np.mean(a)), float(np.mean(b)), float(np.mean(a - b)), p,
                            math.nan, "Wilcoxon signed-rank (matched runs)")


def pooled_comparisons(specs: list[PooledSpec], runs: list[ChildRun], keys: list[str]) -> list[PooledGroup]:
    """Per spec and combination of the grid keys neither compared nor pooled: each value of ``by`` with mean ± SD
    of its runs' test metric, each pair of values by Wilcoxon on matched runs; Holm-adjusted together."""
    tasks = {r.task for r in runs}
    out: list[PooledGroup] = []
    for spec in specs:
        rest = [k for k in keys if k != spec.by and k not in spec.pool]
        groups: dict[tuple, list[ChildRun]] = {}
        for r in runs:
            groups.setdefault((r.task, tuple(r.grid.get(k, "") for k in rest)), []).append(r)
        for task, values in sorted(groups, key=lambda g: (g[0], tuple(_value_key(k, v) for k, v in zip(rest, g[1])))):
            grid = dict(zip(rest, values))
            text = ", ".join(f"{k}={v}" for k, v in grid.items()) or "all runs"
            by_value = _paired_runs(spec, groups[task, values])
            order = sorted(by_value, key=lambda v: _value_key(spec.by, v))
            summaries = []
            for v in order:
                metrics = [m for m in by_value[v].values() if math.isfinite(m)]
                summaries.append(PooledValue(v, len(metrics), *mean_sd(metrics)))
            pairs = [_pooled_pair(va, vb, by_value[va], by_value[vb]) for va, vb in itertools.combinations(order, 2)]
            out.append(PooledGroup(spec=spec, task=task, group=f"{task}: {text}" if len(tasks) > 1 else text,
                                   grid=grid, metric=METRICS[task], values=summaries, comparisons=pairs))
    family = [c for g in out for c in g.comparisons]
    for c, q in zip(family, holm([c.p for c in family]) if family else []):
        c.p_holm = float(q)
    return out


def skipped_notes(cells: list[CellSummary], comparisons: list[Comparison], n_resamples: int) -> list[str]:
    """Notes on the bootstrap CIs and paired bootstrap tests that rest on fewer than all ``n_resamples``: where
    patients hold items of two classes the patients are drawn unstratified, and a resample lacking a class has no
    AUC and is skipped (a class in few patients makes that common)."""
    why = ("resamples that drew no patient of a class are skipped (patients holding items of two classes are "
           "resampled unstratified)")
    rests = [f"{c.cell} on {n_resamples - c.ci_n_skipped} of {n_resamples}" for c in cells if c.ci_n_skipped]
    tests = [f"{c.source_a} vs {c.source_b} ({c.group}) on {n_resamples - c.n_skipped} of {n_resamples}"
             for c in comparisons if c.n_skipped]
    out = []
    if rests:
        out.append(f"Bootstrap CIs resting on fewer than all resamples ({why}): {'; '.join(rests)}")
    if tests:
        out.append(f"Paired bootstrap tests resting on fewer than all resamples ({why}): {'; '.join(tests)}")
    return out


def _compare_specs(runs: StudyRuns, compare: list[PooledSpec] | None) -> list[PooledSpec]:
    """The pooled comparisons to make: ``compare`` when given (each checked: :class:`ReportError`), else the spec's."""
    if compare is None:
        return list(runs.compare)
    for spec in compare:
        problem = spec.problem(list(runs.grid_keys))
        if problem:
            raise ReportError(f"study {runs.name}: {problem}")
    return list(compare)


def summarize(runs: StudyRuns, n_resamples: int = 2000, seed: int = 0,
              compare: list[PooledSpec] | None = None) -> StudySummary:
    """Cell rows (mean ± SD, pooled metric with bootstrap CI, transfer scores, flags), comparison rows
    (DeLong / paired bootstrap / Wilcoxon between weights sources, Holm-adjusted together) and the pooled
    comparisons of ``compare`` (default: the spec's, ``runs.compare``)."""
    keys = runs.grid_keys
    specs = _compare_specs(runs, compare)
    patients = patients_of(runs.runs)
    by_cell: dict[str, list[ChildRun]] = {}
    for r in runs.runs:
        by_cell.setdefault(r.cell, []).append(r)
    order = sorted(by_cell, key=lambda c: (by_cell[c][0].task,
                                           tuple(_value_key(k, by_cell[c][0].grid.get(k, "")) for k in keys), c))
    ordered = {c: sorted(by_cell[c], key=lambda r: (_natural(r.seed), _natural(r.fold))) for c in order}
    for c in order:
        check_one_weights(c, ordered[c])
    cells = [_summarize_cell(c, ordered[c], n_resamples, seed, patients) for c in order]
    for c in cells:
        if c.task == "classification":
            c.loc = _summarize_loc(ordered[c.cell], n_resamples, seed)
        else:
            c.classes = _summarize_classes(ordered[c.cell], n_resamples, seed)
    tasks = {c.task for c in cells}

    def others(c: CellSummary) -> tuple:
        return (c.task, tuple((k, v) for k, v in c.grid.items() if k != "weights"))

    if "weights" in keys:
        scratch = {others(c): c for c in cells if c.grid.get("weights") == "scratch"}
        for c in cells:
            ref = scratch.get(others(c))
            if ref is not None and ref is not c:
                c.scratch_cell = ref.cell
                c.transfer_score = transfer_score(c.pooled, ref.pooled)
                per_fold, c.transfer_fold_note = fold_transfer(ordered[c.cell], ordered[ref.cell])
                if per_fold:
                    c.transfer_fold_mean, c.transfer_fold_sd = mean_sd(per_fold)
                    c.transfer_folds = len(per_fold)
                c.transfer_flag = baseline_flag(ref)

    comparisons: list[Comparison] = []
    loc_comparisons: list[Comparison] = []
    class_comparisons: list[Comparison] = []
    if "weights" in keys:
        groups: dict[tuple, list[CellSummary]] = {}
        for c in cells:
            groups.setdefault(others(c), []).append(c)
        for members in groups.values():
            if len(members) < 2:
                continue
            group = group_description(members[0].task, members[0].grid, tasks)
            for ca, cb in itertools.combinations(members, 2):
                comparisons.append(_compare(ca, cb, by_cell[ca.cell], by_cell[cb.cell], group, patients,
                                            n_resamples, seed))
                if ca.loc is not None and cb.loc is not None:
                    loc_comparisons += _compare_loc(ca, cb, by_cell[ca.cell], by_cell[cb.cell], group)
                if ca.classes and cb.classes:
                    class_comparisons += _compare_classes(ca, cb, by_cell[ca.cell], by_cell[cb.cell], group)
    for family in (comparisons, loc_comparisons, class_comparisons):  # Holm within each family
        if family:
            adjusted = holm([c.p for c in family])
            for c, q in zip(family, adjusted):
                c.p_holm = float(q)
    for c in cells:
        if c.task == "classification":
            add_operating_point(c, ordered[c.cell], patients)
    notes = list(runs.notes) + skipped_notes(cells, comparisons, n_resamples) + operating_point_notes(cells)
    software, software_source = software_versions(runs.runs)
    similarity = _similarity(runs.similarity, cells, list(keys), tasks, notes)
    return StudySummary(name=runs.name, parent_run_id=runs.parent_run_id, grid_keys=list(keys), cells=cells,
                        comparisons=comparisons, n_resamples=int(n_resamples), seed=int(seed),
                        n_runs=len(runs.runs), n_not_finished=runs.n_not_finished, n_superseded=runs.n_superseded,
                        notes=notes, created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        loc_comparisons=loc_comparisons, similarity=similarity, sampling=item_sampling(runs.runs),
                        native=native_inputs(runs.runs), class_comparisons=class_comparisons,
                        pooled=pooled_comparisons(specs, runs.runs, list(keys)),
                        n_no_patient_column=sum(r.task == "classification" and r.patient is None for r in runs.runs),
                        cohort=cohort_counts(runs.runs, patients), pretrain=list(runs.pretrain),
                        settings=run_settings(runs.runs, runs.optimizer),
                        preprocessing=preprocessing_by_source(runs.runs),
                        software=software, software_source=software_source)


# ---- cohort counts, operating points, calibration, settings for the paste-ready methods
def _fold_count(fold: str, items: dict[str, tuple[int, str]], n_classes: int | None) -> FoldCount:
    """Counts of ``items`` ({item: (class index, patient or "")}) of one fold (or all)."""
    named = {patient for _, patient in items.values() if patient}
    counts = [0] * n_classes if n_classes else []
    for y, _ in items.values():
        if n_classes and 0 <= y < n_classes:
            counts[y] += 1
    unnamed = sum(not patient for _, patient in items.values())
    return FoldCount(fold=fold, n_items=len(items), n_patients=len(named) + unnamed if named else None,
                     class_counts=counts)


def cohort_counts(runs: list[ChildRun], patients: dict[str, str]) -> list[CohortCounts]:
    """Per task, the distinct tested items of all its runs, per test fold and overall: items, patients (the
    predictions' pseudonyms; an item without one counts as its own patient) and, for classification, items per
    class; whether every patient's items lie in one test fold (a patient-level split)."""
    out = []
    for task in sorted({r.task for r in runs}):
        members = [r for r in runs if r.task == task]
        widths = {r.prob.shape[1] for r in members if r.prob is not None}
        n_classes = max(widths) if task == "classification" and widths else None
        by_fold: dict[str, dict[str, tuple[int, str]]] = {}
        for r in members:
            labels = r.y if r.y is not None else np.full(len(r.item_id), -1)
            fold_items = by_fold.setdefault(r.fold, {})
            for item, y in zip(r.item_id.astype(str), labels):
                fold_items.setdefault(item, (int(y), patients.get(item, "")))
        every: dict[str, tuple[int, str]] = {}
        for fold_items in by_fold.values():
            every.update(fold_items)
        folds_of: dict[str, set[str]] = {}
        for fold, fold_items in by_fold.items():
            for _, patient in fold_items.values():
                if patient:
                    folds_of.setdefault(patient, set()).add(fold)
        out.append(CohortCounts(
            task=task, n_classes=n_classes,
            folds=[_fold_count(f, by_fold[f], n_classes) for f in sorted(by_fold, key=_natural)],
            overall=_fold_count("all", every, n_classes),
            patient_split=all(len(f) == 1 for f in folds_of.values()) if folds_of else None,
            n_without_patient=sum(not patient for _, patient in every.values())))
    return out


def clustered_wilson(num: np.ndarray, den: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of the proportion ``Σ num / Σ den`` over clusters (one entry per patient: its
    counts summed over its items and seeds), with the effective sample size ``n / deff``: deff is the design
    effect (Rao & Scott), the cluster-robust (linearised ratio) variance over the binomial one, at least 1. When the
    proportion is 0 or 1 there is no variance to estimate it from and ``n_eff`` is the number of clusters (the
    upper bound of deff: a patient counts once). (nan, nan) without a denominator."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    used = den > 0
    num, den = num[used], den[used]
    n, k = float(den.sum()), int(used.sum())
    if n == 0:
        return math.nan, math.nan
    phat = float(num.sum()) / n
    binomial = phat * (1 - phat) / n
    if binomial > 0:
        robust = float(((num - phat * den) ** 2).sum()) / n ** 2  # = binomial when every cluster is one row
        n_eff = n / max(1.0, robust / binomial)
    else:
        n_eff = float(k)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    centre = (phat + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
    half = z / (1 + z * z / n_eff) * math.sqrt(phat * (1 - phat) / n_eff + z * z / (4 * n_eff ** 2))
    return max(0.0, centre - half), min(1.0, centre + half)


def _rate(num: np.ndarray, den: np.ndarray, level: float) -> Rate:
    """A proportion from per-cluster counts, with its :func:`clustered_wilson` interval."""
    top, bottom = int(num.sum()), int(den.sum())
    low, high = clustered_wilson(num, den, level)
    return Rate(value=top / bottom if bottom else math.nan, low=low, high=high, num=top, den=bottom)


def clinical_summary(runs: list[ChildRun], patients: dict[str, str], level: float = LEVEL) -> ClinicalSummary | None:
    """A binary cell at each run's validation operating point (P(class 1) >= its Youden threshold, as the run
    scored itself), pooled over the runs that recorded one: TP, FP, FN, TN and sensitivity, specificity, PPV, NPV
    with Wilson intervals clustered by patient (:func:`clustered_wilson`; an item without a patient is its own
    cluster, all seeds' predictions of an item in its cluster). None when no run recorded a validation threshold."""
    used = [r for r in runs if r.binary and r.thresholds and r.threshold_source != "test"]
    if not used:
        return None
    items, y, called = [], [], []
    for r in used:
        ok = np.isfinite(r.prob).all(axis=1)
        items.append(r.item_id.astype(str)[ok])
        y.append(r.y[ok] == 1)
        called.append(r.prob[ok, 1] >= r.thresholds[0])
    item, pos, call = np.concatenate(items), np.concatenate(y), np.concatenate(called)
    cells = {"tp": pos & call, "fp": ~pos & call, "fn": pos & ~call, "tn": ~pos & ~call}
    _, cluster = np.unique(_clusters(item, patients).astype(str), return_inverse=True)
    n_clusters = int(cluster.max()) + 1 if cluster.size else 0
    per = {k: np.bincount(cluster, weights=v.astype(float), minlength=n_clusters) for k, v in cells.items()}
    tp, fp, fn, tn = (per[k] for k in ("tp", "fp", "fn", "tn"))
    thresholds = [r.thresholds[0] for r in used]
    return ClinicalSummary(n_runs=len(used), n_runs_without=len(runs) - len(used), tp=int(tp.sum()),
                           fp=int(fp.sum()), fn=int(fn.sum()), tn=int(tn.sum()),
                           sensitivity=_rate(tp, tp + fn, level), specificity=_rate(tn, tn + fp, level),
                           ppv=_rate(tp, tp + fp, level), npv=_rate(tn, tn + fn, level),
                           threshold_min=min(thresholds), threshold_max=max(thresholds))


def brier_score(y: np.ndarray, prob: np.ndarray) -> float:
    """Mean Brier score: (p − y)² of P(class 1) for two classes, Σ_k (p_k − 1[y = k])² (Brier 1950) for more."""
    if len(y) == 0:
        return math.nan
    if prob.shape[1] == 2:
        return float(np.mean((prob[:, 1] - (y == 1)) ** 2))
    onehot = np.eye(prob.shape[1])[np.clip(y, 0, prob.shape[1] - 1)]
    return float(np.mean(((prob - onehot) ** 2).sum(axis=1)))


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = CALIBRATION_BINS) -> list[tuple[float, float, int]]:
    """Reliability data of P(class 1): equal-width bins of [0, 1] (the last one closed), the non-empty ones as
    (mean predicted probability, observed fraction of class 1, predictions)."""
    which = np.clip((np.asarray(p, dtype=float) * n_bins).astype(int), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        inside = which == b
        if inside.any():
            out.append((float(p[inside].mean()), float((y[inside] == 1).mean()), int(inside.sum())))
    return out


def add_operating_point(c: CellSummary, runs: list[ChildRun], patients: dict[str, str]) -> None:
    """Fill a classification cell's clinical metrics, confusion counts, Brier score and reliability data."""
    y = np.concatenate([r.y for r in runs])
    prob = np.concatenate([r.prob for r in runs])
    keep = np.isfinite(prob).all(axis=1)
    y, prob = y[keep], prob[keep]
    c.brier = brier_score(y, prob)
    k = prob.shape[1]
    if k == 2:
        c.calibration = calibration_bins(y, prob[:, 1])
        c.clinical = clinical_summary(runs, patients)
        if c.clinical is not None:
            m = c.clinical
            c.confusion, c.confusion_rule = [[m.tn, m.fp], [m.fn, m.tp]], "validation Youden threshold"
        return
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (np.clip(y, 0, k - 1), prob.argmax(axis=1)), 1)
    c.confusion, c.confusion_rule = confusion.tolist(), "argmax"


def operating_point_notes(cells: list[CellSummary]) -> list[str]:
    """Notes on binary cells whose runs recorded no validation operating point (left out of the clinical metrics)."""
    out = []
    for c in cells:
        if c.task != "classification" or c.n_classes != 2:
            continue
        if c.clinical is None:
            out.append(f"{c.cell}: no run recorded a validation operating point (metrics.json's youden_thresholds): "
                       "no sensitivity / specificity / PPV / NPV")
        elif c.clinical.n_runs_without:
            out.append(f"{c.cell}: {c.clinical.n_runs_without} of {c.n_runs} run(s) recorded no validation operating "
                       "point and are left out of the clinical metrics")
    return out


def _agreed(values: list[str]) -> str:
    """One value when all agree, else the distinct values with "(varies)"."""
    distinct = sorted({v for v in values if v not in ("", "None")}, key=_natural)
    if not distinct:
        return ""
    return distinct[0] if len(distinct) == 1 else f"{', '.join(distinct)} (varies)"


def run_settings(runs: list[ChildRun], optimizer: str = "") -> dict[str, str]:
    """The runs' training settings the methods name (:data:`SETTING_KEYS` from their params, else their
    metrics.json config), each as one value or the distinct values; and the optimiser when known."""
    out = {}
    for key in SETTING_KEYS:
        value = _agreed([r.params.get(key, str(r.config.get(key, ""))) for r in runs])
        if value:
            out[key] = value
    if optimizer:
        out["optimizer"] = optimizer
    return out


def _preprocessing_words(params: dict[str, str]) -> str:
    """A run's ``preprocessing.*`` params in words: mode, channel order, scaling, mean and SD."""
    pp = {k.removeprefix("preprocessing."): v for k, v in params.items() if k.startswith("preprocessing.")}
    if not pp:
        return ""
    parts = [pp.get("mode", "")]
    if pp.get("channel_order"):
        parts.append(f"{pp['channel_order']} channels")
    if pp.get("scale", "1.0") not in ("1", "1.0"):
        parts.append(f"[0, 1] × {pp['scale']}")
    if pp.get("mean"):
        parts.append(f"mean {pp['mean']}")
    if pp.get("std"):
        parts.append(f"SD {pp['std']}")
    if pp.get("post_scale", "1.0") not in ("1", "1.0"):
        parts.append(f"then × {pp['post_scale']}")
    if pp.get("intensity"):
        parts.append(f"intensity {pp['intensity']}")
    return ", ".join(p for p in parts if p)


def preprocessing_by_source(runs: list[ChildRun]) -> dict[str, str]:
    """Each weights source's input preprocessing, from its runs' ``preprocessing.*`` params (sources in grid order)."""
    out: dict[str, list[str]] = {}
    for r in runs:
        source = r.grid.get("weights") or r.params.get("weights", "")
        words = _preprocessing_words(r.params)
        if source and words:
            out.setdefault(source, []).append(words)
    return {source: _agreed(values) for source, values in sorted(out.items(), key=lambda kv: _value_key("weights",
                                                                                                     kv[0]))}


def _installed(name: str) -> str:
    if name == "python":
        return platform.python_version()
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def software_versions(runs: list[ChildRun]) -> tuple[dict[str, str], str]:
    """The software versions the runs logged (params ``software.<name>``), else those of the environment writing
    the report; with the words saying which."""
    logged = {name: _agreed([r.params.get(SOFTWARE_PARAM + name, "") for r in runs]) for name in SOFTWARE}
    if all(logged.values()):
        return logged, "as the runs logged them"
    here = {name: _installed(name) for name in SOFTWARE}
    if any(logged.values()):
        return ({n: logged[n] or here[n] for n in SOFTWARE},
                "as the runs logged them; where a run logged none, of the environment that wrote this report")
    return here, "of the environment that wrote this report (the runs logged no versions)"
