"""Summarise a collected study: per-cell statistics, pairwise comparisons, localization, similarity.

Per cell (one combination of grid values, all folds and seeds): mean ± SD of the runs' test
metric, the pooled metric (out-of-fold AUC, macro OvR AUC, or mean per-case Dice) with a
bootstrap CI, and the transfer score against the scratch cell with the same other grid values.
Cells identical in every grid key but ``weights`` are compared on the items both have (DeLong or
Wilcoxon; localization by Wilcoxon and exact McNemar), Holm-adjusted per family.

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
import time
from typing import Any

import numpy as np

from ..stats import (auc, bootstrap_auc_ci, bootstrap_mean_ci, delong_test, holm, mcnemar_exact, mean_sd, spearman,
                     transfer_score, wilcoxon_signed_rank)
from ...tracking.layout import SIMILARITY_ARTIFACT
from .model import (LEVEL, METRICS, SIM_MEASURES, CellSummary, ChildRun, ClassSummary, Comparison, ItemSampling,
                    LocSummary, NativeInput, ReportError, SimilarityCorrelation, SimilarityRow, SimilaritySummary,
                    StudyRuns, StudySummary)


def _natural(value: str) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _value_key(key: str, value: str) -> tuple:
    if key == "weights" and value == "scratch":
        return (2, 0.0, "")  # scratch last: comparisons read "source − scratch"
    return _natural(value)


def _per_item(items: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct item ids and the nan-ignoring mean of ``values`` per item (over seeds)."""
    uniq, inv = np.unique(items.astype(str), return_inverse=True)
    ok = ~np.isnan(values)
    s = np.bincount(inv[ok], weights=values[ok], minlength=len(uniq))
    n = np.bincount(inv[ok], minlength=len(uniq))
    with np.errstate(invalid="ignore", divide="ignore"):
        return uniq, np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _macro_ovr_auc(y: np.ndarray, prob: np.ndarray) -> float:
    """Macro one-vs-rest AUC (sklearn ``roc_auc_score(multi_class="ovr")``); classes absent from
    ``y`` are left out of the average."""
    from sklearn.metrics import roc_auc_score

    present = [c for c in range(prob.shape[1]) if 0 < int((y == c).sum()) < len(y)]
    if not present:
        return math.nan
    return float(np.mean([roc_auc_score(y == c, prob[:, c]) for c in present]))


def _summarize_cell(cell: str, runs: list[ChildRun], n_resamples: int, seed: int) -> CellSummary:
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
        _, per_item = _per_item(items, np.concatenate([r.dice for r in runs]))
        per_item = per_item[~np.isnan(per_item)]
        pooled = float(np.mean(per_item)) if per_item.size else math.nan
        lo, hi = bootstrap_mean_ci(per_item, n_resamples=n_resamples, level=LEVEL, seed=seed)
        return CellSummary(**common, pooled=pooled, ci_low=lo, ci_high=hi, pooled_kind="per-case Dice")

    widths = {r.prob.shape[1] for r in runs}
    if len(widths) != 1:
        raise ReportError(f"cell {cell}: runs disagree on the number of classes")
    n_classes = widths.pop()
    y = np.concatenate([r.y for r in runs])
    prob = np.concatenate([r.prob for r in runs])
    keep = np.isfinite(prob).all(axis=1)
    y, prob, items = y[keep], prob[keep], items[keep]
    if n_classes != 2:
        return CellSummary(**common, pooled=_macro_ovr_auc(y, prob), ci_low=math.nan, ci_high=math.nan,
                           n_classes=n_classes, pooled_kind="OOF macro OvR AUC")
    p = prob[:, 1]
    pooled = auc(y, p)
    clusters = items if len(np.unique(items)) < len(items) else None  # several seeds: resample items
    try:
        lo, hi = bootstrap_auc_ci(y, p, n_resamples=n_resamples, level=LEVEL, seed=seed, clusters=clusters)
    except ValueError:  # e.g. one item with contradicting labels in two runs
        lo, hi = math.nan, math.nan
    roc = None
    if 0 < y.sum() < len(y):
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(y, p)
        roc = (fpr, tpr)
    return CellSummary(**common, pooled=pooled, ci_low=lo, ci_high=hi, n_classes=2, pooled_kind="OOF AUC", roc=roc)


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
        _, per_item = _per_item(items, np.concatenate([r.class_dice[name] for r in scored]))
        per_item = per_item[~np.isnan(per_item)]
        lo, hi = bootstrap_mean_ci(per_item, n_resamples=n_resamples, level=LEVEL, seed=seed)
        out.append(ClassSummary(name=name, n_runs=len(scored), mean=mean, sd=sd,
                                pooled=float(np.mean(per_item)) if per_item.size else math.nan,
                                ci_low=lo, ci_high=hi, n_cases=int(per_item.size)))
    return out


def _nanmean(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return float(np.mean(v)) if v.size else math.nan


def _loc_per_item(runs: list[ChildRun]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scored items of runs with localization, and their hit / Dice / IoU averaged over seeds."""
    items = np.concatenate([r.loc.item_id for r in runs]).astype(str)
    ids, hit = _per_item(items, np.concatenate([r.loc.hit for r in runs]))
    _, dice = _per_item(items, np.concatenate([r.loc.dice for r in runs]))
    _, iou = _per_item(items, np.concatenate([r.loc.iou for r in runs]))
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


def _compare(ca: CellSummary, cb: CellSummary, ra: list[ChildRun], rb: list[ChildRun], group: str) -> Comparison:
    base = dict(task=ca.task, group=group, source_a=ca.grid.get("weights", ""), source_b=cb.grid.get("weights", ""),
                cell_a=ca.cell, cell_b=cb.cell, p_holm=math.nan)
    items_a = np.concatenate([r.item_id for r in ra]).astype(str)
    items_b = np.concatenate([r.item_id for r in rb]).astype(str)
    if ca.task == "segmentation":
        return _paired_dice(base, "Dice", items_a, np.concatenate([r.dice for r in ra]),
                            items_b, np.concatenate([r.dice for r in rb]))
    ia, pa = _per_item(items_a, np.concatenate([r.prob[:, 1] if r.binary else np.full(len(r.y), np.nan) for r in ra]))
    ib, pb = _per_item(items_b, np.concatenate([r.prob[:, 1] if r.binary else np.full(len(r.y), np.nan) for r in rb]))
    shared = np.intersect1d(ia, ib)
    if ca.n_classes != 2 or cb.n_classes != 2:
        return Comparison(**base, n_cases=int(shared.size), metric="AUC (macro OvR)", a=ca.pooled, b=cb.pooled,
                          difference=ca.pooled - cb.pooled, p=math.nan, test="n/a (multi-class)")
    _, ya = _per_item(items_a, np.concatenate([r.y for r in ra]).astype(float))
    _, xa, xb = np.intersect1d(ia, ib, return_indices=True)
    yb = _per_item(items_b, np.concatenate([r.y for r in rb]).astype(float))[1][xb]
    y, a, b = ya[xa], pa[xa], pb[xb]
    ok = (y == yb) & np.isin(y, (0.0, 1.0)) & ~np.isnan(a) & ~np.isnan(b)  # same label in both, finite scores
    y, a, b = y[ok].astype(int), a[ok], b[ok]
    if y.size == 0 or y.all() or not y.any():
        return Comparison(**base, n_cases=int(y.size), metric="AUC", a=math.nan, b=math.nan, difference=math.nan,
                          p=math.nan, test="n/a (shared cases lack a class)")
    res = delong_test(y, a, b)
    return Comparison(**base, n_cases=res.n_positive + res.n_negative, metric="AUC", a=res.auc1, b=res.auc2,
                      difference=res.difference, p=res.p_value, test="DeLong")


def _paired_dice(base: dict, metric: str, items_a: np.ndarray, dice_a: np.ndarray, items_b: np.ndarray,
                 dice_b: np.ndarray) -> Comparison:
    """Per-case Dice of two cells (seeds averaged per case) on their shared cases: Wilcoxon signed-rank."""
    ia, da = _per_item(items_a, dice_a)
    ib, db = _per_item(items_b, dice_b)
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
    cells equal in every grid key but ``weights`` that has a scratch cell; Spearman per distance."""
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
    groups: dict[tuple, list[CellSummary]] = {}
    for c in cells:
        groups.setdefault((c.task, tuple((k, v) for k, v in c.grid.items() if k != "weights")), []).append(c)
    rows: list[SimilarityRow] = []
    correlations: list[SimilarityCorrelation] = []
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
                transfer_score=float(c.transfer_score) if c.transfer_score is not None else math.nan))
        if not group_rows:
            continue
        rows += group_rows
        ts = [r.transfer_score for r in group_rows]
        for measure, _ in SIM_MEASURES:
            with np.errstate(all="ignore"):
                rho, p, n, method = spearman([getattr(r, measure) for r in group_rows], ts)
            note = "" if method != "undefined" else ("n < 3: undefined" if n < 3 else "undefined (constant values)")
            correlations.append(SimilarityCorrelation(task=members[0].task, group=group, measure=measure, n=n,
                                                      rho=rho, p=p, method=method, note=note))
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


def summarize(runs: StudyRuns, n_resamples: int = 2000, seed: int = 0) -> StudySummary:
    """Cell rows (mean ± SD, pooled metric with bootstrap CI, transfer score) and comparison rows
    (DeLong / Wilcoxon between weights sources, Holm-adjusted together)."""
    keys = runs.grid_keys
    by_cell: dict[str, list[ChildRun]] = {}
    for r in runs.runs:
        by_cell.setdefault(r.cell, []).append(r)
    order = sorted(by_cell, key=lambda c: (by_cell[c][0].task,
                                           tuple(_value_key(k, by_cell[c][0].grid.get(k, "")) for k in keys), c))
    ordered = {c: sorted(by_cell[c], key=lambda r: (_natural(r.seed), _natural(r.fold))) for c in order}
    for c in order:
        check_one_weights(c, ordered[c])
    cells = [_summarize_cell(c, ordered[c], n_resamples, seed) for c in order]
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
                comparisons.append(_compare(ca, cb, by_cell[ca.cell], by_cell[cb.cell], group))
                if ca.loc is not None and cb.loc is not None:
                    loc_comparisons += _compare_loc(ca, cb, by_cell[ca.cell], by_cell[cb.cell], group)
                if ca.classes and cb.classes:
                    class_comparisons += _compare_classes(ca, cb, by_cell[ca.cell], by_cell[cb.cell], group)
    for family in (comparisons, loc_comparisons, class_comparisons):  # Holm within each family
        if family:
            adjusted = holm([c.p for c in family])
            for c, q in zip(family, adjusted):
                c.p_holm = float(q)
    notes = list(runs.notes)
    similarity = _similarity(runs.similarity, cells, list(keys), tasks, notes)
    return StudySummary(name=runs.name, parent_run_id=runs.parent_run_id, grid_keys=list(keys), cells=cells,
                        comparisons=comparisons, n_resamples=int(n_resamples), seed=int(seed),
                        n_runs=len(runs.runs), n_not_finished=runs.n_not_finished, n_superseded=runs.n_superseded,
                        notes=notes, created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        loc_comparisons=loc_comparisons, similarity=similarity, sampling=item_sampling(runs.runs),
                        native=native_inputs(runs.runs), class_comparisons=class_comparisons)
