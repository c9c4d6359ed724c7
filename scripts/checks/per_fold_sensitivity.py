"""Per-fold sensitivity of a two-source AUC comparison: does it hold in every fold, and without any one fold?

For two weights sources of a classification study (same other grid values), from the runs' test predictions:

* per test fold: each source's AUC, their difference and its paired DeLong p (the fold's own test items);
* leave one fold out: the pooled out-of-fold AUC difference over the other folds, with DeLong p;
* over folds: the number of folds in which A beats B, and the exact Wilcoxon signed-rank p of the per-fold
  AUCs (with 5 folds the smallest two-sided p is 0.0625: a per-fold test cannot reach 0.05).

Statistics are medxfer.study.stats (checked against R / pROC in tests/study/test_stats.py). Run in the
study's work folder with its MLFLOW_TRACKING_URI, e.g.
  python scripts/checks/per_fold_sensitivity.py busi-cls-headline imagenet scratch --where freeze=none
"""
from __future__ import annotations

import argparse

import numpy as np

from medxfer.study.report.collect import collect_study
from medxfer.study.report.summarize import per_item
from medxfer.study.stats import delong_test, wilcoxon_signed_rank


def _item_predictions(runs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Item ids, labels, P(class 1) (seeds averaged per item, as the report does) and each item's patient
    pseudonym (its item id where the predictions name none)."""
    ids = np.concatenate([r.item_id for r in runs]).astype(str)
    ids_y, y = per_item(ids, np.concatenate([r.y for r in runs]).astype(float))
    _, p = per_item(ids, np.concatenate([r.prob[:, 1] for r in runs]))
    patients = dict(zip(ids, np.concatenate([r.patient if r.patient is not None else r.item_id for r in runs])))
    return ids_y, y, p, np.array([patients[i] or i for i in ids_y]).astype(str)


def _paired(a_runs, b_runs, folds: list[str]) -> tuple[float, float, float, int, str]:
    """AUC of A, of B, paired DeLong p on the shared items of ``folds`` (clustered by patient when a patient has
    several items: Obuchowski), their number and the method."""
    ia, ya, pa, cl = _item_predictions([r for r in a_runs if r.fold in folds])
    ib, _, pb, _ = _item_predictions([r for r in b_runs if r.fold in folds])
    _, xa, xb = np.intersect1d(ia, ib, return_indices=True)
    clusters = cl[xa] if len(np.unique(cl[xa])) < xa.size else None
    res = delong_test(ya[xa].astype(int), pa[xa], pb[xb], clusters=clusters)
    return res.auc1, res.auc2, res.p_value, int(xa.size), res.method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("source_a")
    ap.add_argument("source_b")
    ap.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                    help="other grid values the two cells share (e.g. freeze=none); repeatable")
    args = ap.parse_args()
    where = dict(w.split("=", 1) for w in args.where)
    runs = [r for r in collect_study(args.study).runs
            if r.task == "classification" and r.binary and all(r.grid.get(k) == v for k, v in where.items())]
    a_runs = [r for r in runs if r.grid.get("weights") == args.source_a]
    b_runs = [r for r in runs if r.grid.get("weights") == args.source_b]
    cells = {r.cell for r in a_runs} | {r.cell for r in b_runs}
    if not a_runs or not b_runs or len(cells) != 2:
        raise SystemExit(f"need exactly one cell per source, got {sorted(cells)}: narrow it with --where")
    folds = sorted({r.fold for r in a_runs} & {r.fold for r in b_runs}, key=int)

    shared = ", ".join(f"{k}={v}" for k, v in where.items())
    print(f"{args.study}: {args.source_a} (A) vs {args.source_b} (B), {shared}")
    print("\n| test fold | n | AUC A | AUC B | A − B | DeLong p |\n|---|---|---|---|---|---|")
    per_a, per_b = [], []
    for fold in folds:
        a, b, p, n, _ = _paired(a_runs, b_runs, [fold])
        per_a.append(a), per_b.append(b)
        print(f"| {fold} | {n} | {a:.3f} | {b:.3f} | {a - b:+.3f} | {p:.2g} |")
    print("\n| left out | n | pooled AUC A | pooled AUC B | A − B | DeLong p |\n|---|---|---|---|---|---|")
    for fold in folds:
        a, b, p, n, _ = _paired(a_runs, b_runs, [f for f in folds if f != fold])
        print(f"| fold {fold} | {n} | {a:.3f} | {b:.3f} | {a - b:+.3f} | {p:.2g} |")
    a, b, p, n, method = _paired(a_runs, b_runs, folds)
    print(f"| none | {n} | {a:.3f} | {b:.3f} | {a - b:+.3f} | {p:.2g} |\n\ntest: {method}")
    wins = sum(x > y for x, y in zip(per_a, per_b))
    _, p_folds = wilcoxon_signed_rank(np.array(per_a), np.array(per_b))
    print(f"\nA beats B in {wins} of {len(folds)} folds; Wilcoxon signed-rank over the folds' AUCs p = {p_folds:.4g}; "
          f"mean per-fold difference {np.mean(np.array(per_a) - np.array(per_b)):+.3f} "
          f"(SD {np.std(np.array(per_a) - np.array(per_b), ddof=1):.3f})")


if __name__ == "__main__":
    main()
