"""Patient-level, stratified k-fold assignment: writes the manifest's ``fold`` column.

All items of a patient share one fold. Patients are stratified by their most frequent label and,
within a stratum, dealt (largest first, ties in seeded random order) to the fold that holds the
fewest items of that stratum so far; folds stay balanced in items, not only in patients.
Hand-written rather than scikit-learn's ``StratifiedGroupKFold`` to avoid a heavy dependency
for thirty lines, and because that one balances groups, not items, per fold.

``split.json`` records the assignment (patient pseudonym -> fold), so that a re-ingest of the
cohort keeps every known patient's fold (:func:`reapply_folds`).
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..core.errors import MedxferError
from ..core.files import atomic_write_json
from .manifest import MANIFEST_FILE, read_manifest, write_csv

SPLIT_FILE = "split.json"

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
    """Add/replace the ``fold`` column of ``out_dir/manifest.csv``; write ``split.json`` (the summary and the
    patient -> fold assignment a re-ingest re-applies); return it."""
    out = Path(out_dir)
    manifest = out / MANIFEST_FILE
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
        "assignment": dict(sorted(fold_of.items())),  # patient pseudonym -> fold: re-applied by a re-ingest
    }
    atomic_write_json(out / SPLIT_FILE, summary, indent=1)
    return summary


def split_from_column(out_dir: str | os.PathLike, column: str, order: list[str]) -> dict:
    """Folds from an existing assignment column (a public dataset's official train / val / test split):
    the value ``order[k]`` becomes fold ``k``. With ``order = [test, val, train]``, ``fold: 0`` of a study
    tests on the official test set and selects on the official validation set (see ``fold_roles``).

    Rows with another value get no fold (left out by training, counted here); a patient whose rows
    carry different values is an error (the column must split by patient, or folds would leak).
    Writes ``split.json`` like :func:`split`, so a re-ingest keeps the assignment."""
    out = Path(out_dir)
    manifest = out / MANIFEST_FILE
    if not manifest.is_file():
        raise SplitError(f"no manifest.csv in {out} (run `medxfer ingest` first)")
    rows, columns = read_manifest(manifest)
    if column not in columns:
        raise SplitError(f"--from-column {column!r} is not in the manifest (columns: {', '.join(columns)})")
    order = [str(v).strip() for v in order]
    if len(order) < 2 or len(set(order)) != len(order):
        raise SplitError(f"--order names each fold's value once, at least two: got {order}")
    fold_of: dict[str, int] = {}
    unassigned = 0
    for r in rows:
        value = (r.get(column) or "").strip()
        if value not in order:
            r["fold"] = ""
            unassigned += 1
            continue
        k = order.index(value)
        if fold_of.setdefault(r["patient"], k) != k:
            raise SplitError(f"patient {r['patient']} has items in {order[fold_of[r['patient']]]!r} and {value!r} of "
                             f"column {column!r}: folds must keep a patient's items together")
        r["fold"] = k
    if not fold_of:
        raise SplitError(f"no row of column {column!r} has one of the values {order}")
    if "fold" not in columns:
        columns.append("fold")
    write_csv(manifest, rows, columns)
    summary = {
        "folds": len(order), "from_column": column, "order": order, "patients": len(fold_of),
        "items": len(rows) - unassigned, "items_without_fold": unassigned,
        "items_per_fold": {str(k): sum(1 for r in rows if r["fold"] == k) for k in range(len(order))},
        "assignment": dict(sorted(fold_of.items())),
    }
    atomic_write_json(out / SPLIT_FILE, summary, indent=1)
    return summary


def reapply_folds(out_dir: str | os.PathLike, rows: list[dict], columns: list[str]) -> list[str]:
    """Keep the split of a cohort that is ingested again: set each new manifest row's ``fold`` to its
    patient's recorded fold (``rows`` and ``columns`` are changed in place; call before the manifest
    is replaced).

    The assignment comes from ``split.json`` or, for a ``split.json`` written without one (or a fold
    column made by hand), from the ``fold`` column of the manifest about to be replaced. A patient
    not in the assignment gets an empty fold (``medxfer train`` leaves such rows out). Returns the
    warnings for the user (new patients without a fold, a split that cannot be recovered); nothing
    happens, and nothing is returned, for a cohort that was never split.
    """
    out = Path(out_dir)
    recorded = _read_split(out / SPLIT_FILE)
    info = recorded or {}
    assignment = info.get("assignment") if isinstance(info.get("assignment"), dict) else None
    previous = _previous_folds(out / MANIFEST_FILE) if assignment is None else None
    if recorded is None and not previous:
        return []
    if assignment is None:
        assignment = previous or {}
    if "fold" not in columns:
        columns.append("fold")
    missing: dict[str, int] = Counter()
    for r in rows:
        r["fold"] = assignment.get(r["patient"], "")
        if r["fold"] == "":
            missing[r["patient"]] += 1
    if not missing:
        return []
    again = _split_command(out, info)
    if not assignment:
        return [f"{out} was split before, but its folds could not be recovered ({SPLIT_FILE} records no "
                f"assignment and the previous manifest has no fold column): every fold is empty — run `{again}`"]
    return [f"{len(missing)} patient(s) ({sum(missing.values())} item(s)) are new since the cohort was split and "
            f"have no fold (medxfer train leaves them out): run `{again}` to include them (the folds of other "
            f"patients may change)"]


def _read_split(path: Path) -> dict | None:
    """``split.json`` as a dict; None when absent; ``{}`` when unreadable."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _previous_folds(manifest: Path) -> dict[str, str]:
    """Patient -> fold from an existing manifest's fold column (patients spread over folds left out)."""
    try:
        rows, columns = read_manifest(manifest)
    except (OSError, ValueError, csv.Error):
        return {}
    if "fold" not in columns:
        return {}
    seen: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r.get("patient") and (r.get("fold") or "") != "":
            seen[r["patient"]].add(r["fold"])
    return {p: next(iter(f)) for p, f in seen.items() if len(f) == 1}


def _split_command(out: Path, info: dict) -> str:
    if info.get("from_column"):
        return f"medxfer split {out} --from-column {info['from_column']} --order {','.join(info.get('order') or [])}"
    cmd = f"medxfer split {out} --folds {info.get('folds') or 'K'}"
    if info.get("stratify"):
        cmd += f" --stratify {info['stratify']}"
    if info.get("seed") is not None:
        cmd += f" --seed {info['seed']}"
    return cmd
