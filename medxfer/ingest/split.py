"""Patient-level, stratified k-fold assignment: writes the manifest's ``fold`` column.

All items of a patient share one fold. Patients are stratified by their most frequent label and,
within a stratum, dealt (largest first, ties in seeded random order) to the fold that holds the
fewest items of that stratum so far; folds stay balanced in items, not only in patients.
Hand-written rather than scikit-learn's ``StratifiedGroupKFold`` to avoid a heavy dependency
for thirty lines, and because that one balances groups, not items, per fold.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..core.errors import MedxferError
from ..core.files import atomic_write_json
from .manifest import read_manifest, write_csv


class SplitError(MedxferError, ValueError):
    """Unusable split arguments (reported to the user as a one-line error)."""


def assign_folds(patients: list[str], strata: list[str], folds: int, seed: int = 0) -> dict[str, int]:
    """Patient -> fold for items given as parallel lists (one entry per item)."""
    if folds < 2:
        raise SplitError(f"--folds must be at least 2 (got {folds})")
    items_of: dict[str, list[str]] = defaultdict(list)
    for p, s in zip(patients, strata):
        items_of[p].append(s)
    if len(items_of) < folds:
        raise SplitError(f"{len(items_of)} patients cannot fill {folds} folds")
    stratum_of = {p: sorted(Counter(v).items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for p, v in items_of.items()}
    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for p in sorted(items_of):
        by_stratum[stratum_of[p]].append(p)
    total = np.zeros(folds, dtype=int)
    fold_of: dict[str, int] = {}
    for stratum in sorted(by_stratum):
        members = [by_stratum[stratum][i] for i in rng.permutation(len(by_stratum[stratum]))]
        members.sort(key=lambda p: -len(items_of[p]))  # stable: random order among equal sizes
        in_stratum = np.zeros(folds, dtype=int)
        for p in members:
            k = min(range(folds), key=lambda f: (in_stratum[f], total[f], f))
            fold_of[p] = k
            in_stratum[k] += len(items_of[p])
            total[k] += len(items_of[p])
    return fold_of


def split(out_dir: str | os.PathLike, folds: int, *, stratify: str | None = None, seed: int = 0) -> dict:
    """Add/replace the ``fold`` column of ``out_dir/manifest.csv``; write ``split.json``; return its summary."""
    out = Path(out_dir)
    manifest = out / "manifest.csv"
    if not manifest.is_file():
        raise SplitError(f"no manifest.csv in {out} (run `medxfer ingest` first)")
    rows, columns = read_manifest(manifest)
    if not rows:
        raise SplitError(f"{manifest} has no items")
    if stratify and stratify not in columns:
        raise SplitError(f"--stratify column {stratify!r} is not in the manifest (columns: {', '.join(columns)})")
    strata = [(r.get(stratify) or "") if stratify else "" for r in rows]
    fold_of = assign_folds([r["patient"] for r in rows], strata, folds, seed)
    for r in rows:
        r["fold"] = fold_of[r["patient"]]
    if "fold" not in columns:
        columns.append("fold")
    write_csv(manifest, rows, columns)
    per_fold: dict[int, Counter] = defaultdict(Counter)
    for r, s in zip(rows, strata):
        per_fold[r["fold"]][s] += 1
    summary = {
        "folds": folds, "stratify": stratify, "seed": seed,
        "patients": len(fold_of), "items": len(rows),
        "items_per_fold": {str(k): sum(per_fold[k].values()) for k in range(folds)},
        "patients_per_fold": {str(k): sum(1 for f in fold_of.values() if f == k) for k in range(folds)},
        "strata_per_fold": {str(k): dict(sorted(per_fold[k].items())) for k in range(folds)} if stratify else None,
    }
    atomic_write_json(out / "split.json", summary, indent=1)
    return summary
