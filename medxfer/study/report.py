"""Study report: collect a study's finished runs from MLflow, summarise them, write HTML/Markdown/CSV.

Reads the layout of ``docs/study-mlflow-layout.md``: experiment ``medxfer/<name>``, one parent run
(``medxfer.role=study``) and one child run per cell × fold × seed (``medxfer.role=cell``) with a
``predictions.csv`` (classification) or ``per_case.csv`` (segmentation) artifact.

Per cell (one combination of grid values, all folds and seeds):

* mean ± SD of the runs' ``test_auc`` / ``test_dice`` (each run scored on its own test fold);
* pooled out-of-fold (OOF) AUC — the AUC of the concatenated test predictions of all folds —
  with a stratified bootstrap 95 % CI (items are the resampling unit when several seeds are
  pooled); macro one-vs-rest AUC without CI for more than two classes; for segmentation the
  mean per-case Dice (averaged over seeds per case) with a bootstrap CI of the mean;
* transfer score (van den Brandt et al. 2021) against the scratch cell with the same other grid
  values, on the pooled metric.

Cells identical in every grid key but ``weights`` are compared pairwise on the items both have:
DeLong's test (binary classification, probability averaged over seeds per item) or the Wilcoxon
signed-rank test (per-case Dice); all p-values of a report are Holm-adjusted together.

Optional sections:

* **Lesion localization** — classification runs with a ``localization.csv`` (Grad-CAM pointing
  game hit and Dice/IoU per scored test case): per cell the pooled hit rate, Dice and IoU (cases
  averaged over seeds) with bootstrap CIs and mean ± SD over runs; the same pairs of cells as the
  AUC comparisons compared on their shared cases by Wilcoxon (Dice) and exact McNemar (hits),
  Holm-adjusted as their own family.
* **Dataset similarity vs transfer** — when the parent run has a ``similarity.json`` (distances of
  each pretraining stage's cohort to the study's cohort): per group of comparable cells each
  source's distances against its transfer score, with Spearman correlations and a scatter figure.

The report holds study and grid values, MLflow run ids and numbers only — no class names, no
tracking URI, no item ids.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import itertools
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..tracking import client as mlflow_client
from ..tracking import search_all_runs
from . import stats

__all__ = ["ReportError", "ChildRun", "StudyRuns", "CellSummary", "Comparison", "StudySummary", "Localization",
           "LocSummary", "SimilarityRow", "SimilarityCorrelation", "SimilaritySummary",
           "collect_study", "summarize", "write_report", "build_report"]

LEVEL = 0.95
ROLE_TAG = "medxfer.role"
PARENT_TAG = "mlflow.parentRunId"
ARTIFACTS = {"classification": "predictions.csv", "segmentation": "per_case.csv"}
METRICS = {"classification": "test_auc", "segmentation": "test_dice"}
DEFAULT_GRID_KEYS = ("encoder", "weights", "freeze", "lr")
LOC_ARTIFACT = "localization.csv"  # optional, classification runs: Grad-CAM localization per scored case
SIMILARITY_ARTIFACT = "similarity.json"  # optional, parent run: source-vs-target cohort distances
SIM_MEASURES = (("frechet", "Fréchet distance"), ("mmd2", "MMD²"), ("intensity", "intensity distance"))


class ReportError(ValueError):
    """A study that cannot be reported (unknown, no finished run, unreadable artifacts)."""


# ------------------------------------------------------------------------------------------------
# data model
# ------------------------------------------------------------------------------------------------
@dataclass
class Localization:
    """A classification run's ``localization.csv``: one row per scored test case (non-empty mask)."""

    item_id: np.ndarray  # object array of str
    hit: np.ndarray  # pointing game: 1.0 hit, 0.0 miss, nan unknown
    dice: np.ndarray  # Dice of the thresholded map vs the mask
    iou: np.ndarray  # IoU of the same (nan when the column is absent)


@dataclass
class ChildRun:
    """One finished cell × fold × seed run with its test-set rows."""

    run_id: str
    name: str
    cell: str
    task: str
    grid: dict[str, str]
    fold: str
    seed: str
    metric: float  # test_auc or test_dice (nan when not logged)
    item_id: np.ndarray  # object array of str
    y: np.ndarray | None = None  # class index (classification)
    prob: np.ndarray | None = None  # (n, n_classes) class probabilities (classification)
    dice: np.ndarray | None = None  # per-case Dice (segmentation)
    config_hash: str = ""
    end_time: int = 0
    loc: Localization | None = None  # from localization.csv, when the run has one

    @property
    def binary(self) -> bool:
        return self.prob is not None and self.prob.shape[1] == 2


@dataclass
class StudyRuns:
    """What :func:`collect_study` found."""

    name: str
    experiment_id: str | None
    parent_run_id: str | None
    grid_keys: list[str]
    runs: list[ChildRun]
    n_not_finished: int = 0  # child runs FAILED / RUNNING / KILLED, ignored
    n_superseded: int = 0  # FINISHED runs replaced by a later one with the same config_hash
    notes: list[str] = field(default_factory=list)
    similarity: dict | None = None  # the parent run's similarity.json, when it has a readable one


@dataclass
class LocSummary:
    """A cell's Grad-CAM localization, pooled over its runs' scored cases (seeds averaged per case)."""

    n_runs: int  # runs with a localization.csv
    n_cases: int  # distinct scored cases
    hit: float  # pointing-game hit rate
    hit_ci_low: float
    hit_ci_high: float
    dice: float
    dice_ci_low: float
    dice_ci_high: float
    iou: float
    hit_mean: float  # mean ± SD over runs of each run's own hit rate / mean Dice / mean IoU
    hit_sd: float
    dice_mean: float
    dice_sd: float
    iou_mean: float
    iou_sd: float


@dataclass
class CellSummary:
    cell: str
    task: str
    grid: dict[str, str]
    n_runs: int
    folds: list[str]
    seeds: list[str]
    metric: str  # "test_auc" | "test_dice"
    mean: float
    sd: float
    run_values: list[float]  # each run's test metric (the dots of the bar chart)
    pooled: float
    ci_low: float
    ci_high: float
    n_cases: int  # distinct items pooled
    n_classes: int | None = None
    transfer_score: float | None = None
    scratch_cell: str | None = None
    pooled_kind: str = ""  # "OOF AUC" | "OOF macro OvR AUC" | "per-case Dice"
    roc: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    loc: LocSummary | None = None  # Grad-CAM localization (classification cells with localization.csv)


@dataclass
class Comparison:
    task: str
    group: str  # e.g. "encoder=resnet18, freeze=all, lr=0.001"
    source_a: str
    source_b: str
    cell_a: str
    cell_b: str
    n_cases: int
    metric: str  # "AUC" | "Dice" | "AUC (macro OvR)"; localization: "loc_dice" | "loc_hit"
    a: float
    b: float
    difference: float
    p: float
    p_holm: float
    test: str  # "DeLong" | "Wilcoxon signed-rank" | "McNemar exact" | "n/a (multi-class)" | "n/a (…)"


@dataclass
class SimilarityRow:
    """One pretrained source of one group of comparable cells: its distances and transfer score."""

    task: str
    group: str
    grid: dict[str, str]
    cell: str
    scratch_cell: str
    source: str
    frechet: float
    mmd2: float
    intensity: float
    n_source: int | None
    transfer_score: float


@dataclass
class SimilarityCorrelation:
    """Spearman correlation of one distance with the transfer score across a group's sources."""

    task: str
    group: str
    measure: str  # "frechet" | "mmd2" | "intensity"
    n: int
    rho: float
    p: float
    method: str  # "exact permutation" | "t approximation" | "undefined"
    note: str  # "" | "n < 3: undefined" | "undefined (constant values)"


@dataclass
class SimilaritySummary:
    encoder: str
    weights: str
    image_size: str
    n_target: int | None
    rows: list[SimilarityRow]
    correlations: list[SimilarityCorrelation]


@dataclass
class StudySummary:
    name: str
    parent_run_id: str | None
    grid_keys: list[str]
    cells: list[CellSummary]
    comparisons: list[Comparison]
    n_resamples: int
    seed: int
    level: float = LEVEL
    n_runs: int = 0
    n_not_finished: int = 0
    n_superseded: int = 0
    notes: list[str] = field(default_factory=list)
    created: str = ""
    loc_comparisons: list[Comparison] = field(default_factory=list)  # Holm-adjusted as their own family
    similarity: SimilaritySummary | None = None


# ------------------------------------------------------------------------------------------------
# collect
# ------------------------------------------------------------------------------------------------
def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _load_rows(run: ChildRun, path: Path) -> None:
    """Fill ``run`` from its predictions.csv / per_case.csv."""
    columns, rows = _read_csv(path)
    if "item_id" not in columns:
        raise ReportError(f"run {run.name}: {path.name} has no item_id column")
    run.item_id = np.array([r["item_id"] for r in rows], dtype=object)
    if run.task == "segmentation":
        if "dice" not in columns:
            raise ReportError(f"run {run.name}: per_case.csv has no dice column")
        run.dice = np.array([_float(r["dice"]) for r in rows], dtype=float)
        return
    classes = [c for c in columns if c.startswith("p_")]
    if "y" not in columns or not classes:
        raise ReportError(f"run {run.name}: predictions.csv needs y and p_<class> columns")
    run.y = np.array([int(float(r["y"])) for r in rows], dtype=int)
    run.prob = np.array([[_float(r[c]) for c in classes] for r in rows], dtype=float).reshape(len(rows), len(classes))
    if "p" in columns and len(classes) == 2:  # P(class 1) as written (equals p_<class 1>)
        run.prob[:, 1] = [_float(r["p"]) for r in rows]


def _load_localization(run: ChildRun, path: Path) -> Localization:
    """A run's localization.csv (``item_id, fold, label, hit, dice, iou``); hits other than 0/1 read
    as unknown (nan), rows with neither a hit nor a Dice are dropped. The label is not read."""
    columns, rows = _read_csv(path)
    missing = [c for c in ("item_id", "hit", "dice") if c not in columns]
    if missing:
        raise ReportError(f"run {run.name}: {LOC_ARTIFACT} lacks column(s) {', '.join(missing)}")
    bools = {"true": 1.0, "false": 0.0}
    hit = np.array([bools.get(str(r["hit"]).strip().lower(), _float(r["hit"])) for r in rows], dtype=float)
    hit[~np.isin(hit, (0.0, 1.0))] = np.nan
    dice = np.array([_float(r["dice"]) for r in rows], dtype=float)
    iou = np.array([_float(r.get("iou")) for r in rows], dtype=float)
    keep = ~(np.isnan(hit) & np.isnan(dice))
    items = np.array([r["item_id"] for r in rows], dtype=object)
    return Localization(item_id=items[keep], hit=hit[keep], dice=dice[keep], iou=iou[keep])


def _read_similarity(client, parent_id: str | None, notes: list[str]) -> dict | None:
    """The parent run's similarity.json, or None when it has none (a note when it is unreadable)."""
    if parent_id is None:
        return None
    with tempfile.TemporaryDirectory(prefix="medxfer-report-") as tmp:
        try:
            path = client.download_artifacts(parent_id, SIMILARITY_ARTIFACT, tmp)
        except Exception:  # noqa: BLE001 - absent: no similarity section
            return None
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("sources"), dict):
                raise ValueError("no 'sources' object")
        except (OSError, ValueError) as exc:
            notes.append(f"{SIMILARITY_ARTIFACT} on the parent run is unreadable ({type(exc).__name__}); "
                         "no similarity section")
            return None
    return data


def _grid_keys(tag_lists: Iterable[str]) -> list[str]:
    keys: list[str] = []
    for text in tag_lists:
        for k in (text or "").split(","):
            k = k.strip()
            if k and k not in keys:
                keys.append(k)
    return keys


def _current_grid(client, parent_id: str | None) -> set[str] | None:
    """The config hashes of the study's grid as ``study run`` last expanded it (its ``grid.json``
    on the parent run), or None when the parent has none (a study made by other means)."""
    import json

    if parent_id is None:
        return None
    with tempfile.TemporaryDirectory(prefix="medxfer-report-") as tmp:
        try:
            path = client.download_artifacts(parent_id, "grid.json", tmp)
            return set(json.loads(Path(path).read_text())["config_hashes"])
        except Exception:  # noqa: BLE001 - absent or unreadable: use every child run
            return None


def collect_study(name: str) -> StudyRuns:
    """The finished child runs of study ``name`` with their test-set predictions / per-case Dice.

    Children with a status other than FINISHED are ignored; of several FINISHED children with
    one ``config_hash`` the latest (end time) wins. :class:`ReportError` when the experiment
    ``medxfer/<name>`` does not exist or holds no finished child run.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = mlflow_client()
    experiment = client.get_experiment_by_name(f"medxfer/{name}")
    if experiment is None:
        raise ReportError(f"study {name!r}: no MLflow experiment 'medxfer/{name}' in the tracking store "
                          "(run `medxfer study run SPEC.yaml` first, or check MLFLOW_TRACKING_URI)")
    exp_id = experiment.experiment_id
    # the earliest parent, as the runner chooses it when shards race to create one
    parents = search_all_runs(client, exp_id, f"tags.`{ROLE_TAG}` = 'study'", order_by=["attributes.start_time ASC"])
    parent_id = parents[0].info.run_id if parents else None

    children = search_all_runs(client, exp_id, f"tags.`{ROLE_TAG}` = 'cell'")
    grid = _current_grid(client, parent_id)
    notes: list[str] = []
    if grid is not None:  # only runs of the spec as last run (not of an earlier version of it)
        outside = [r for r in children if r.data.tags.get("config_hash") not in grid]
        children = [r for r in children if r.data.tags.get("config_hash") in grid]
        if outside:
            notes.append(f"{len(outside)} run(s) of other configurations (an earlier version of the spec, "
                         "another cohort) are not part of the current grid and left out")
    finished = [r for r in children if r.info.status == "FINISHED"]
    n_not_finished = len(children) - len(finished)
    latest: dict[str, Any] = {}
    for r in finished:
        key = r.data.tags.get("config_hash") or r.info.run_id
        rank = (r.info.end_time or 0, r.info.start_time or 0, r.info.run_id)
        if key not in latest or rank > latest[key][0]:
            latest[key] = (rank, r)
    chosen = [v[1] for v in latest.values()]
    n_superseded = len(finished) - len(chosen)
    if not chosen:
        raise ReportError(f"study {name!r}: experiment 'medxfer/{name}' holds no finished run "
                          f"({n_not_finished} unfinished/failed child run(s))")

    grid_keys = _grid_keys(r.data.tags.get("medxfer.grid_keys", "") for r in chosen)
    if not grid_keys:
        grid_keys = [k for k in DEFAULT_GRID_KEYS if any(k in r.data.tags for r in chosen)]

    runs: list[ChildRun] = []
    with tempfile.TemporaryDirectory(prefix="medxfer-report-") as tmp:
        for r in sorted(chosen, key=lambda r: (r.data.tags.get("cell", ""), r.info.start_time or 0)):
            tags = r.data.tags
            task = tags.get("task") or ("segmentation" if "test_dice" in r.data.metrics else "classification")
            name_ = tags.get("mlflow.runName") or r.info.run_name or r.info.run_id
            cell = tags.get("cell") or name_.rsplit("/fold", 1)[0]
            run = ChildRun(run_id=r.info.run_id, name=name_, cell=cell, task=task,
                           grid={k: tags.get(k, "") for k in grid_keys}, fold=tags.get("fold", ""),
                           seed=tags.get("seed", ""), metric=float(r.data.metrics.get(METRICS.get(task, ""), math.nan)),
                           item_id=np.array([], dtype=object), config_hash=tags.get("config_hash", ""),
                           end_time=r.info.end_time or 0)
            artifact = ARTIFACTS.get(task)
            if artifact is None:
                notes.append(f"run {name_}: unknown task {task!r}, left out")
                continue
            dst = Path(tmp) / r.info.run_id
            dst.mkdir()
            try:
                path = Path(client.download_artifacts(r.info.run_id, artifact, str(dst)))
            except Exception:  # noqa: BLE001 - MlflowException or OSError: the artifact is absent
                notes.append(f"run {name_}: finished without {artifact}, left out")
                continue
            _load_rows(run, path)
            if task == "classification":  # optional: its absence keeps the run in the AUC part
                try:
                    loc_path = Path(client.download_artifacts(r.info.run_id, LOC_ARTIFACT, str(dst)))
                except Exception:  # noqa: BLE001 - absent
                    pass
                else:
                    try:
                        run.loc = _load_localization(run, loc_path)
                    except (ReportError, OSError, KeyError, csv.Error) as exc:
                        notes.append(f"run {name_}: unreadable {LOC_ARTIFACT} ({exc}), left out of the "
                                     "localization section")
            runs.append(run)
    n_cls = sum(r.task == "classification" for r in runs)
    n_loc = sum(r.loc is not None for r in runs)
    if n_loc and n_loc < n_cls:
        notes.append(f"{n_cls - n_loc} of {n_cls} classification run(s) have no (readable) {LOC_ARTIFACT}; "
                     "they are left out of the localization section")
    if not runs:
        raise ReportError(f"study {name!r}: no finished run has its {' / '.join(ARTIFACTS.values())} artifact")
    similarity = _read_similarity(client, parent_id, notes)
    return StudyRuns(name=name, experiment_id=exp_id, parent_run_id=parent_id, grid_keys=grid_keys, runs=runs,
                     n_not_finished=n_not_finished, n_superseded=n_superseded, notes=notes, similarity=similarity)


# ------------------------------------------------------------------------------------------------
# summarize
# ------------------------------------------------------------------------------------------------
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
    mean, sd = stats.mean_sd(values)
    items = np.concatenate([r.item_id for r in runs]).astype(str)
    n_cases = int(len(np.unique(items)))
    common = dict(cell=cell, task=task, grid=dict(first.grid), n_runs=len(runs),
                  folds=sorted({r.fold for r in runs}, key=_natural), seeds=sorted({r.seed for r in runs}, key=_natural),
                  metric=METRICS[task], mean=mean, sd=sd, run_values=values, n_cases=n_cases)
    if task == "segmentation":
        _, per_item = _per_item(items, np.concatenate([r.dice for r in runs]))
        per_item = per_item[~np.isnan(per_item)]
        pooled = float(np.mean(per_item)) if per_item.size else math.nan
        lo, hi = stats.bootstrap_mean_ci(per_item, n_resamples=n_resamples, level=LEVEL, seed=seed)
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
    pooled = stats.auc(y, p)
    clusters = items if len(np.unique(items)) < len(items) else None  # several seeds: resample items
    try:
        lo, hi = stats.bootstrap_auc_ci(y, p, n_resamples=n_resamples, level=LEVEL, seed=seed, clusters=clusters)
    except ValueError:  # e.g. one item with contradicting labels in two runs
        lo, hi = math.nan, math.nan
    roc = None
    if 0 < y.sum() < len(y):
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(y, p)
        roc = (fpr, tpr)
    return CellSummary(**common, pooled=pooled, ci_low=lo, ci_high=hi, n_classes=2, pooled_kind="OOF AUC", roc=roc)


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
    hit_lo, hit_hi = stats.bootstrap_mean_ci(hit, n_resamples=n_resamples, level=LEVEL, seed=seed)
    dice_lo, dice_hi = stats.bootstrap_mean_ci(dice, n_resamples=n_resamples, level=LEVEL, seed=seed)
    hit_mean, hit_sd = stats.mean_sd([_nanmean(r.loc.hit) for r in with_loc])
    dice_mean, dice_sd = stats.mean_sd([_nanmean(r.loc.dice) for r in with_loc])
    iou_mean, iou_sd = stats.mean_sd([_nanmean(r.loc.iou) for r in with_loc])
    return LocSummary(n_runs=len(with_loc), n_cases=int(ids.size), hit=_nanmean(hit), hit_ci_low=hit_lo,
                      hit_ci_high=hit_hi, dice=_nanmean(dice), dice_ci_low=dice_lo, dice_ci_high=dice_hi,
                      iou=_nanmean(iou), hit_mean=hit_mean, hit_sd=hit_sd, dice_mean=dice_mean, dice_sd=dice_sd,
                      iou_mean=iou_mean, iou_sd=iou_sd)


def _group_description(task: str, grid: dict[str, str], tasks: set[str]) -> str:
    parts = [f"{k}={v}" for k, v in grid.items() if k != "weights"]
    text = ", ".join(parts) if parts else "all cells"
    return f"{task}: {text}" if len(tasks) > 1 else text


def _compare(ca: CellSummary, cb: CellSummary, ra: list[ChildRun], rb: list[ChildRun], group: str) -> Comparison:
    base = dict(task=ca.task, group=group, source_a=ca.grid.get("weights", ""), source_b=cb.grid.get("weights", ""),
                cell_a=ca.cell, cell_b=cb.cell, p_holm=math.nan)
    items_a = np.concatenate([r.item_id for r in ra]).astype(str)
    items_b = np.concatenate([r.item_id for r in rb]).astype(str)
    if ca.task == "segmentation":
        ia, da = _per_item(items_a, np.concatenate([r.dice for r in ra]))
        ib, db = _per_item(items_b, np.concatenate([r.dice for r in rb]))
        _, xa, xb = np.intersect1d(ia, ib, return_indices=True)
        a, b = da[xa], db[xb]
        ok = ~(np.isnan(a) | np.isnan(b))
        a, b = a[ok], b[ok]
        if a.size == 0:
            return Comparison(**base, n_cases=0, metric="Dice", a=math.nan, b=math.nan, difference=math.nan,
                              p=math.nan, test="n/a (no shared cases)")
        _, p = stats.wilcoxon_signed_rank(a, b)
        ma, mb = float(np.mean(a)), float(np.mean(b))
        return Comparison(**base, n_cases=int(a.size), metric="Dice", a=ma, b=mb, difference=ma - mb, p=p,
                          test="Wilcoxon signed-rank")
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
    res = stats.delong_test(y, a, b)
    return Comparison(**base, n_cases=res.n_positive + res.n_negative, metric="AUC", a=res.auc1, b=res.auc2,
                      difference=res.difference, p=res.p_value, test="DeLong")


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
        _, p = stats.wilcoxon_signed_rank(a, b)
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
        p = stats.mcnemar_exact(a[decided] > 0.5, b[decided] > 0.5)
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
        group = _group_description(members[0].task, members[0].grid, tasks)
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
                rho, p, n, method = stats.spearman([getattr(r, measure) for r in group_rows], ts)
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
    cells = [_summarize_cell(c, ordered[c], n_resamples, seed) for c in order]
    for c in cells:
        if c.task == "classification":
            c.loc = _summarize_loc(ordered[c.cell], n_resamples, seed)
    tasks = {c.task for c in cells}

    def others(c: CellSummary) -> tuple:
        return (c.task, tuple((k, v) for k, v in c.grid.items() if k != "weights"))

    if "weights" in keys:
        scratch = {others(c): c for c in cells if c.grid.get("weights") == "scratch"}
        for c in cells:
            ref = scratch.get(others(c))
            if ref is not None and ref is not c:
                c.scratch_cell = ref.cell
                c.transfer_score = stats.transfer_score(c.pooled, ref.pooled)

    comparisons: list[Comparison] = []
    loc_comparisons: list[Comparison] = []
    if "weights" in keys:
        groups: dict[tuple, list[CellSummary]] = {}
        for c in cells:
            groups.setdefault(others(c), []).append(c)
        for members in groups.values():
            if len(members) < 2:
                continue
            group = _group_description(members[0].task, members[0].grid, tasks)
            for ca, cb in itertools.combinations(members, 2):
                comparisons.append(_compare(ca, cb, by_cell[ca.cell], by_cell[cb.cell], group))
                if ca.loc is not None and cb.loc is not None:
                    loc_comparisons += _compare_loc(ca, cb, by_cell[ca.cell], by_cell[cb.cell], group)
    for family in (comparisons, loc_comparisons):  # Holm within each family
        if family:
            adjusted = stats.holm([c.p for c in family])
            for c, q in zip(family, adjusted):
                c.p_holm = float(q)
    notes = list(runs.notes)
    similarity = _similarity(runs.similarity, cells, list(keys), tasks, notes)
    return StudySummary(name=runs.name, parent_run_id=runs.parent_run_id, grid_keys=list(keys), cells=cells,
                        comparisons=comparisons, n_resamples=int(n_resamples), seed=int(seed),
                        n_runs=len(runs.runs), n_not_finished=runs.n_not_finished, n_superseded=runs.n_superseded,
                        notes=notes, created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        loc_comparisons=loc_comparisons, similarity=similarity)


# ------------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------------
def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


def _f3(x: Any) -> str:
    return f"{float(x):.3f}" if _finite(x) else "n/a"


def _mean_sd(mean: float, sd: float) -> str:
    if not _finite(mean):
        return "n/a"
    return f"{mean:.3f} ± {sd:.3f}" if _finite(sd) else f"{mean:.3f}"


def _ci(lo: float, hi: float) -> str:
    return f"[{lo:.3f}, {hi:.3f}]" if _finite(lo) and _finite(hi) else "n/a"


def _pval(p: float) -> str:
    if not _finite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3g}"


def _signed(x: float | None, digits: int = 3, suffix: str = "") -> str:
    return f"{x:+.{digits}f}{suffix}" if _finite(x) else "n/a"


def _csv_num(x: Any) -> str:
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return repr(float(x)) if _finite(x) else ""


def _metric_label(c: CellSummary) -> str:
    if c.task == "segmentation":
        return "Dice"
    return "AUC" if c.n_classes == 2 else "AUC (macro OvR)"


def _cell_label(c: CellSummary) -> str:
    return c.cell.split("/", 1)[1] if c.cell.startswith(c.task + "/") else c.cell


def _cell_table(s: StudySummary) -> tuple[list[str], list[list[str]]]:
    header = ["Task", *s.grid_keys, "Runs", "Folds", "Seeds", "Metric", "Mean ± SD (per run)", "Pooled",
              f"{int(s.level * 100)} % CI", "Cases", "Transfer score"]
    rows = []
    for c in s.cells:
        rows.append([c.task, *[c.grid.get(k, "") for k in s.grid_keys], str(c.n_runs), ",".join(c.folds),
                     ",".join(c.seeds), _metric_label(c), _mean_sd(c.mean, c.sd), _f3(c.pooled),
                     _ci(c.ci_low, c.ci_high), str(c.n_cases), _signed(c.transfer_score, 1, " %")])
    return header, rows


def _comparison_table(s: StudySummary) -> tuple[list[str], list[list[str]]]:
    header = ["Group", "Source A", "Source B", "Cases", "Metric", "A", "B", "A − B", "p", "p (Holm)", "Test"]
    rows = [[c.group, c.source_a, c.source_b, str(c.n_cases), c.metric, _f3(c.a), _f3(c.b), _signed(c.difference),
             _pval(c.p), _pval(c.p_holm), c.test] for c in s.comparisons]
    return header, rows


def _methods(s: StudySummary) -> str:
    tasks = {c.task for c in s.cells}
    multiclass = any(c.task == "classification" and c.n_classes not in (None, 2) for c in s.cells)
    pct = int(s.level * 100)
    parts = ["Each cell is one combination of grid values, trained once per cross-validation fold and seed.",
             "Mean ± SD is over the cell's runs, each scored on its own held-out test fold (sample SD)."]
    if "classification" in tasks:
        parts.append(
            "The pooled out-of-fold (OOF) AUC is the AUC of the concatenated test-fold predictions of all folds "
            "(every item is tested once per seed); its " f"{pct} % CI is a stratified percentile bootstrap "
            f"({s.n_resamples} resamples, seed {s.seed}; positives and negatives resampled separately, all seeds' "
            "predictions of an item resampled together). A pooled AUC well below the per-fold mean means "
            "the fold models rank cases well within their own test fold but their scores are not on a common "
            "scale (each fold's model is calibrated differently); the per-fold mean is the seed papers' figure, "
            "the pooled AUC the stricter one.")
    if "segmentation" in tasks:
        parts.append(
            "Pooled Dice is the mean per-case Dice over all test folds (averaged over seeds per case), with a "
            f"{pct} % percentile bootstrap CI of the mean ({s.n_resamples} resamples, seed {s.seed}).")
    parts.append("Cells that differ only in the weights source are compared pairwise on the cases both have:")
    tests = []
    if "classification" in tasks:
        tests.append("AUCs by DeLong's test for correlated ROC curves (probabilities averaged over seeds per item)")
    if "segmentation" in tasks:
        tests.append("Dice by the two-sided Wilcoxon signed-rank test on per-case Dice (averaged over seeds)")
    parts[-1] += " " + "; ".join(tests) + "."
    if s.loc_comparisons:
        parts.append("The p-values of these comparisons are adjusted together with Holm's step-down method "
                     "(p (Holm)); the lesion-localization p-values form a family of their own (see there).")
    else:
        parts.append("All p-values of this report are adjusted together with Holm's step-down method (p (Holm)).")
    parts.append("Transfer score = (source − scratch) / scratch × 100 on the pooled metric, against the scratch "
                 "cell with the same other grid values; positive means the pretrained source beat training from "
                 "scratch (van den Brandt et al. 2021).")
    if multiclass:
        parts.append("With more than two classes the AUC is the macro one-vs-rest AUC; no CI or DeLong test is "
                     "computed for it (n/a).")
    return " ".join(parts)


def _g4(x: Any) -> str:
    return f"{float(x):.4g}" if _finite(x) else "n/a"


_LOC_MEASURES = {"loc_dice": "Dice (mean)", "loc_hit": "hit rate"}


def _loc_cells(s: StudySummary) -> list[CellSummary]:
    return [c for c in s.cells if c.loc is not None]


def _loc_cell_table(s: StudySummary) -> tuple[list[str], list[list[str]]]:
    pct = f"{int(s.level * 100)} % CI"
    header = [*s.grid_keys, "Runs", "Cases", "Hit rate", f"Hit rate {pct}", "Hit rate mean ± SD (per run)", "Dice",
              f"Dice {pct}", "Dice mean ± SD (per run)", "IoU", "IoU mean ± SD (per run)"]
    rows = []
    for c in _loc_cells(s):
        L = c.loc
        rows.append([*[c.grid.get(k, "") for k in s.grid_keys], str(L.n_runs), str(L.n_cases), _f3(L.hit),
                     _ci(L.hit_ci_low, L.hit_ci_high), _mean_sd(L.hit_mean, L.hit_sd), _f3(L.dice),
                     _ci(L.dice_ci_low, L.dice_ci_high), _mean_sd(L.dice_mean, L.dice_sd), _f3(L.iou),
                     _mean_sd(L.iou_mean, L.iou_sd)])
    return header, rows


def _loc_comparison_table(s: StudySummary) -> tuple[list[str], list[list[str]]]:
    header = ["Group", "Source A", "Source B", "Cases", "Measure", "A", "B", "A − B", "p", "p (Holm)", "Test"]
    rows = [[c.group, c.source_a, c.source_b, str(c.n_cases), _LOC_MEASURES.get(c.metric, c.metric), _f3(c.a),
             _f3(c.b), _signed(c.difference), _pval(c.p), _pval(c.p_holm), c.test] for c in s.loc_comparisons]
    return header, rows


def _loc_methods(s: StudySummary) -> str:
    pct = int(s.level * 100)
    parts = [
        "Lesion localization is scored on the classification test cases with a non-empty lesion mask only: a "
        "Grad-CAM map of the positive class at the deepest encoder layer. Pointing game: a hit when the map's "
        "maximum (argmax) lies inside the lesion mask; the hit rate is the share of hits. Dice and IoU compare "
        "the map thresholded at 0.5 × its maximum with the mask.",
        "Per cell, hits, Dice and IoU are pooled over the scored cases of all folds (averaged over seeds per "
        f"case), with {pct} % percentile bootstrap CIs of the hit rate and of the mean Dice ({s.n_resamples} "
        f"resamples, seed {s.seed}); mean ± SD is over the cell's runs (each run's hit rate, mean Dice and mean "
        "IoU on its own test fold).",
    ]
    if s.loc_comparisons:
        parts.append(
            "Cells that differ only in the weights source are compared on the scored cases both have (matched by "
            "item): per-case Dice by the two-sided Wilcoxon signed-rank test, per-case hits by the exact McNemar "
            "test (two-sided binomial test of the discordant pairs; with several seeds a case's hit is the "
            "majority over seeds, cases tied over seeds are left out of it). A − B is source A minus source B "
            "(source − scratch). These p-values are Holm-adjusted as their own family, apart from the AUC "
            "comparisons.")
    return " ".join(parts)


_SIM_HEADERS = {m: label[0].upper() + label[1:] for m, label in SIM_MEASURES}


def _similarity_table(s: StudySummary) -> tuple[list[str], list[list[str]]]:
    header = ["Group", "Source", *_SIM_HEADERS.values(), "Source images", "Transfer score"]
    rows = [[r.group, r.source, _g4(r.frechet), _g4(r.mmd2), _g4(r.intensity),
             str(r.n_source) if r.n_source is not None else "n/a", _signed(r.transfer_score, 1, " %")]
            for r in s.similarity.rows]
    return header, rows


def _correlation_table(s: StudySummary) -> tuple[list[str], list[list[str]]]:
    header = ["Group", "Distance", "Sources", "Spearman ρ", "p", "p method"]
    rows = []
    for c in s.similarity.correlations:
        if c.note:
            rows.append([c.group, _SIM_HEADERS[c.measure], str(c.n), c.note, "–", "–"])
        else:
            rows.append([c.group, _SIM_HEADERS[c.measure], str(c.n), f"{c.rho:+.3f}", _pval(c.p), c.method])
    return header, rows


def _similarity_methods(s: StudySummary) -> str:
    sim = s.similarity
    tasks = {r.task for r in sim.rows}
    pooled = " / ".join(("pooled AUC" if t == "classification" else "pooled Dice") for t in sorted(tasks))
    setting = ", ".join(x for x in (f"{sim.encoder} encoder" if sim.encoder else "",
                                    f"{sim.weights} weights" if sim.weights else "",
                                    f"{sim.image_size} px" if sim.image_size else "") if x)
    target = f" ({sim.n_target} images)" if sim.n_target is not None else ""
    return (
        "Dataset similarity (van den Brandt et al. 2021, \"Cats, not CAT scans\"): the cohort of each pretraining "
        f"source is compared with this study's cohort{target} on pooled features of one fixed network"
        f"{' (' + setting + ')' if setting else ''}: the Fréchet distance between Gaussians fitted to the two "
        "feature sets, the unbiased RBF-kernel MMD², and a distance of per-image intensity statistics; for all "
        "three, smaller = more similar. A source's transfer score is its relative gain in the "
        f"{pooled} over the scratch cell of the same group (as in the Cells table). Spearman's ρ between each "
        "distance and the transfer score across the sources of a group, with a two-sided p by exact permutation "
        "(all n! orderings) for up to 9 sources and the t approximation above; not adjusted for multiplicity "
        "(exploratory, few sources). The hypothesis that a more similar source transfers better predicts a "
        "negative ρ. With fewer than 3 sources ρ is undefined (n < 3).")


def _provenance(s: StudySummary) -> list[str]:
    lines = [f"Parent run: {s.parent_run_id or 'none found'}",
             f"Runs used: {s.n_runs} finished child runs; ignored: {s.n_not_finished} not finished, "
             f"{s.n_superseded} superseded by a later run of the same configuration",
             f"Generated: {s.created}"]
    return lines + list(s.notes)


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------
@dataclass
class _Figure:
    stem: str
    alt: str
    png: bytes


def _new_figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas: no pyplot, no global backend or figure registry."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    fig.clear()
    return buf.getvalue()


def _bar_figure(cells: list[CellSummary], task: str) -> _Figure:
    n = len(cells)
    fig, ax = _new_figure(8.0, 1.2 + 0.45 * n)
    pos = np.arange(n)[::-1]
    pooled = np.array([c.pooled if _finite(c.pooled) else np.nan for c in cells])
    lo = np.array([c.pooled - c.ci_low if _finite(c.ci_low) else 0.0 for c in cells])
    hi = np.array([c.ci_high - c.pooled if _finite(c.ci_high) else 0.0 for c in cells])
    colors = ["#9e9e9e" if c.grid.get("weights") == "scratch" else "#3b73b9" for c in cells]
    ax.barh(pos, np.nan_to_num(pooled), xerr=np.vstack([np.maximum(lo, 0), np.maximum(hi, 0)]), color=colors,
            alpha=0.85, height=0.6, capsize=3, error_kw={"elinewidth": 1.2}, label="pooled (95 % CI)")
    rng = np.random.default_rng(0)
    label = "per run (fold × seed)"
    for y0, c in zip(pos, cells):
        v = np.array([x for x in c.run_values if _finite(x)])
        if v.size:
            ax.scatter(v, y0 + rng.uniform(-0.15, 0.15, v.size), s=14, color="black", zorder=3, label=label)
            label = None
    ax.set_yticks(pos)
    ax.set_yticklabels([_cell_label(c) for c in cells], fontsize=8)
    metric = "Dice" if task == "segmentation" else "AUC"
    ax.set_xlabel(f"pooled {'per-case Dice' if task == 'segmentation' else 'out-of-fold AUC'}; dots: test {metric} "
                  "of each run")
    finite = [x for c in cells for x in [c.pooled, c.ci_low, *c.run_values] if _finite(x)]
    left = min(0.5 if task == "classification" else 0.0, min(finite, default=0.0) - 0.02)
    ax.set_xlim(max(0.0, left), 1.005)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.5 / (1.2 + 0.45 * n) - 0.12), ncol=2, fontsize=8,
              frameon=False)
    ax.set_title(f"{task}: pooled {metric} per cell")
    alt = (f"Bar chart of the pooled {'per-case Dice' if task == 'segmentation' else 'out-of-fold AUC'} of each "
           f"{task} cell with 95 % bootstrap CI error bars and each run's test {metric} as dots")
    return _Figure(f"bar_{task}", alt, _png(fig))


def _roc_figure(index: int, group: str, cells: list[CellSummary], colors: dict[str, str]) -> _Figure:
    fig, ax = _new_figure(4.6, 4.6)
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#888888")
    for c in cells:
        fpr, tpr = c.roc
        source = c.grid.get("weights", _cell_label(c))
        ax.plot(fpr, tpr, lw=1.6, color=colors.get(source), label=f"{source} (AUC {c.pooled:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(group, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    alt = f"ROC curves of the pooled out-of-fold predictions per weights source for {group}"
    return _Figure(f"roc_{index}", alt, _png(fig))


def _similarity_figure(sim: SimilaritySummary) -> _Figure:
    """Distance vs transfer score, one panel per distance, points labelled with the source."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0 * len(SIM_MEASURES), 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(SIM_MEASURES), squeeze=False)[0]
    groups = list(dict.fromkeys(r.group for r in sim.rows))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
    corr = {(c.group, c.measure): c for c in sim.correlations}
    for ax, (measure, label) in zip(axes, SIM_MEASURES):
        texts = []
        for gi, g in enumerate(groups):
            rs = [r for r in sim.rows if r.group == g and _finite(getattr(r, measure)) and _finite(r.transfer_score)]
            x = [getattr(r, measure) for r in rs]
            y = [r.transfer_score for r in rs]
            ax.scatter(x, y, s=32, color=palette[gi % len(palette)], zorder=3,
                       label=g if len(groups) > 1 and measure == SIM_MEASURES[0][0] else None)
            for r, xi, yi in zip(rs, x, y):
                ax.annotate(r.source, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
            c = corr.get((g, measure))
            if c is not None:
                texts.append(c.note or f"ρ = {c.rho:+.2f}, n = {c.n}")
        ax.axhline(0.0, color="#888888", lw=0.8, ls="--")
        ax.set_xlabel(f"{label} (smaller = more similar)", fontsize=9)
        ax.set_title("; ".join(texts) if len(groups) == 1 else _SIM_HEADERS[measure], fontsize=9)
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.15)
    axes[0].set_ylabel("transfer score (%)")
    if len(groups) > 1:
        fig.legend(loc="lower center", ncol=min(len(groups), 3), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.08))
    alt = ("Scatter plots of each pretrained source's distance to the study cohort (Fréchet, MMD², intensity; "
           "smaller = more similar) against its transfer score over scratch, points labelled with the source")
    return _Figure("similarity", alt, _png(fig))


def _figures(s: StudySummary) -> list[_Figure]:
    figs: list[_Figure] = []
    for task in ("classification", "segmentation"):
        cells = [c for c in s.cells if c.task == task]
        if cells:
            figs.append(_bar_figure(cells, task))
    tasks = {c.task for c in s.cells}
    groups: dict[tuple, list[CellSummary]] = {}
    for c in s.cells:
        if c.task == "classification" and c.roc is not None:
            groups.setdefault(tuple((k, v) for k, v in c.grid.items() if k != "weights"), []).append(c)
    # one colour per weights source across all ROC figures (scratch gray, as in the bar chart)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
    sources = list(dict.fromkeys(c.grid.get("weights", "") for c in s.cells if c.grid.get("weights") != "scratch"))
    colors = {w: palette[i % len(palette)] for i, w in enumerate(sources)} | {"scratch": "#7f7f7f"}
    for i, members in enumerate(groups.values(), 1):
        figs.append(_roc_figure(i, _group_description("classification", members[0].grid, tasks), members, colors))
    if s.similarity is not None and s.similarity.rows:
        figs.append(_similarity_figure(s.similarity))
    return figs


# ------------------------------------------------------------------------------------------------
# writers
# ------------------------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.86em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;white-space:nowrap}
th{background:#f0f3f7}tr:nth-child(even) td{background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#555;font-size:.9em}.figures{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
figure{margin:0}figcaption{font-size:.8em;color:#555;max-width:460px}
img.figure{max-width:100%;height:auto;border:1px solid #eee}
"""

_NUMERIC_HEADERS = {"Runs", "Cases", "Pooled", "A", "B", "A − B", "p", "p (Holm)", "Transfer score", "Hit rate",
                    "Dice", "IoU", "Fréchet distance", "MMD²", "Intensity distance", "Source images", "Sources"}


def _html_table(table_id: str, header: list[str], rows: list[list[str]], row_ids: Sequence[str] = ()) -> str:
    e = html.escape
    out = [f'<table id="{table_id}">', "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead>",
           "<tbody>"]
    for i, row in enumerate(rows):
        attr = f' data-cell="{e(row_ids[i])}"' if i < len(row_ids) else ""
        tds = "".join(f'<td class="num">{e(v)}</td>' if h in _NUMERIC_HEADERS else f"<td>{e(v)}</td>"
                      for h, v in zip(header, row))
        out.append(f"<tr{attr}>{tds}</tr>")
    if not rows:
        out.append(f'<tr><td colspan="{len(header)}">none</td></tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


def _md_escape(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join("---:" if h in _NUMERIC_HEADERS else "---" for h in header) + "|"]
    lines += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in rows]
    if not rows:
        lines.append("| " + " | ".join(["none"] + [""] * (len(header) - 1)) + " |")
    return "\n".join(lines)


def _fig_html(f: _Figure) -> str:
    e = html.escape
    data = base64.b64encode(f.png).decode("ascii")
    return (f'<figure><img class="figure" id="fig-{e(f.stem)}" alt="{e(f.alt)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{e(f.alt)}</figcaption></figure>')


def _section_figures(figs: list[_Figure]) -> tuple[list[_Figure], list[_Figure]]:
    """(figures of the Figures section, the similarity figure shown in its own section)."""
    return [f for f in figs if f.stem != "similarity"], [f for f in figs if f.stem == "similarity"]


def _write_html(s: StudySummary, path: Path, figs: list[_Figure]) -> None:
    e = html.escape
    ch, cr = _cell_table(s)
    kh, kr = _comparison_table(s)
    main_figs, sim_figs = _section_figures(figs)
    fig_html = [_fig_html(f) for f in main_figs]
    extra: list[str] = []
    if _loc_cells(s):
        lh, lr = _loc_cell_table(s)
        extra += ['<h2 id="localization-section">Lesion localization (Grad-CAM)</h2>', f"<p>{e(_loc_methods(s))}</p>",
                  _html_table("localization", lh, lr)]
        if s.loc_comparisons:
            mh, mr = _loc_comparison_table(s)
            extra += ["<h3>Localization comparisons</h3>", _html_table("localization-comparisons", mh, mr)]
    if s.similarity is not None:
        sh, sr = _similarity_table(s)
        rh, rr = _correlation_table(s)
        extra += ['<h2 id="similarity-section">Dataset similarity and transfer</h2>',
                  f"<p>{e(_similarity_methods(s))}</p>", _html_table("similarity", sh, sr),
                  "<h3>Spearman correlation with the transfer score</h3>", _html_table("similarity-spearman", rh, rr),
                  '<div class="figures">', *[_fig_html(f) for f in sim_figs], "</div>"]
    body = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>medxfer study report: {e(s.name)}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>Study report: {e(s.name)}</h1>",
        '<p class="meta">' + "<br>".join(e(line) for line in _provenance(s)) + "</p>",
        "<h2>Methods</h2>", f"<p>{e(_methods(s))}</p>",
        "<h2>Cells</h2>", _html_table("cells", ch, cr, [c.cell for c in s.cells]),
        "<h2>Comparisons</h2>", _html_table("comparisons", kh, kr),
        *extra,
        "<h2>Figures</h2>", '<div class="figures">', *fig_html, "</div>",
        "</body></html>",
    ]
    path.write_text("\n".join(body) + "\n", encoding="utf-8")


def _write_markdown(s: StudySummary, path: Path, figs: list[_Figure], fig_dir: str) -> None:
    ch, cr = _cell_table(s)
    kh, kr = _comparison_table(s)
    main_figs, sim_figs = _section_figures(figs)
    lines = [f"# Study report: {_md_escape(s.name)}", "", *[f"- {_md_escape(x)}" for x in _provenance(s)], "",
             "## Methods", "", _methods(s), "", "## Cells", "", _md_table(ch, cr), "",
             "## Comparisons", "", _md_table(kh, kr), ""]
    if _loc_cells(s):
        lh, lr = _loc_cell_table(s)
        lines += ["## Lesion localization (Grad-CAM)", "", _loc_methods(s), "", _md_table(lh, lr), ""]
        if s.loc_comparisons:
            mh, mr = _loc_comparison_table(s)
            lines += ["### Localization comparisons", "", _md_table(mh, mr), ""]
    if s.similarity is not None:
        sh, sr = _similarity_table(s)
        rh, rr = _correlation_table(s)
        lines += ["## Dataset similarity and transfer", "", _similarity_methods(s), "", _md_table(sh, sr), "",
                  "### Spearman correlation with the transfer score", "", _md_table(rh, rr), ""]
        lines += [x for f in sim_figs for x in (f"![{_md_escape(f.alt)}]({fig_dir}/{f.stem}.png)", "")]
    lines += ["## Figures", ""]
    for f in main_figs:
        lines += [f"![{_md_escape(f.alt)}]({fig_dir}/{f.stem}.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


_LOC_COLUMNS = ["loc_runs", "loc_cases", "loc_hit", "loc_hit_ci_low", "loc_hit_ci_high", "loc_hit_mean", "loc_hit_sd",
                "loc_dice", "loc_dice_ci_low", "loc_dice_ci_high", "loc_dice_mean", "loc_dice_sd", "loc_iou",
                "loc_iou_mean", "loc_iou_sd"]


def _loc_csv(L: LocSummary | None) -> list[str]:
    if L is None:
        return [""] * len(_LOC_COLUMNS)
    return [str(L.n_runs), str(L.n_cases), *[_csv_num(x) for x in (
        L.hit, L.hit_ci_low, L.hit_ci_high, L.hit_mean, L.hit_sd, L.dice, L.dice_ci_low, L.dice_ci_high, L.dice_mean,
        L.dice_sd, L.iou, L.iou_mean, L.iou_sd)]]


def _write_csvs(s: StudySummary, results: Path, comparisons: Path) -> None:
    has_loc = bool(_loc_cells(s))  # the loc_* columns only when some cell has localization
    with open(results, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study", "cell", "task", *s.grid_keys, "n_runs", "folds", "seeds", "metric", "mean", "sd",
                    "pooled", "ci_low", "ci_high", "transfer_score", "pooled_kind", "n_cases", "scratch_cell",
                    *(_LOC_COLUMNS if has_loc else [])])
        for c in s.cells:
            w.writerow([s.name, c.cell, c.task, *[c.grid.get(k, "") for k in s.grid_keys], c.n_runs,
                        ";".join(c.folds), ";".join(c.seeds), c.metric, _csv_num(c.mean), _csv_num(c.sd),
                        _csv_num(c.pooled), _csv_num(c.ci_low), _csv_num(c.ci_high), _csv_num(c.transfer_score),
                        c.pooled_kind, c.n_cases, c.scratch_cell or "", *(_loc_csv(c.loc) if has_loc else [])])
    with open(comparisons, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study", "task", "group", "source_a", "source_b", "cell_a", "cell_b", "n_cases", "metric", "a",
                    "b", "difference", "p", "p_holm", "test"])
        for c in [*s.comparisons, *s.loc_comparisons]:  # loc rows: metric loc_dice / loc_hit, own Holm family
            w.writerow([s.name, c.task, c.group, c.source_a, c.source_b, c.cell_a, c.cell_b, c.n_cases, c.metric,
                        _csv_num(c.a), _csv_num(c.b), _csv_num(c.difference), _csv_num(c.p), _csv_num(c.p_holm),
                        c.test])


def _write_similarity_csvs(s: StudySummary, rows_path: Path, spearman_path: Path) -> None:
    sim = s.similarity
    others = [k for k in s.grid_keys if k != "weights"]
    with open(rows_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study", "task", "group", *others, "source", "cell", "scratch_cell", "frechet", "mmd2",
                    "intensity", "n_source", "n_target", "transfer_score"])
        for r in sim.rows:
            w.writerow([s.name, r.task, r.group, *[r.grid.get(k, "") for k in others], r.source, r.cell,
                        r.scratch_cell, _csv_num(r.frechet), _csv_num(r.mmd2), _csv_num(r.intensity),
                        "" if r.n_source is None else r.n_source, "" if sim.n_target is None else sim.n_target,
                        _csv_num(r.transfer_score)])
    with open(spearman_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study", "task", "group", "measure", "n", "rho", "p", "p_method", "note"])
        for c in sim.correlations:
            w.writerow([s.name, c.task, c.group, c.measure, c.n, _csv_num(c.rho), _csv_num(c.p), c.method, c.note])


_FIG_NAME = re.compile(r"^(bar_[a-z]+|roc_\d+|similarity)\.png$")
_SIMILARITY_CSVS = ("similarity.csv", "similarity_spearman.csv")


def write_report(summary: StudySummary, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.html`` (self-contained), ``report.md`` with ``figures/*.png``, ``results.csv``
    and ``comparisons.csv`` — and, with a similarity section, ``similarity.csv`` and
    ``similarity_spearman.csv`` — into ``out_dir``; returns {path relative to out_dir: path}."""
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.iterdir():  # figures of an earlier report of this folder (only our own names)
        if old.is_file() and _FIG_NAME.match(old.name):
            old.unlink()
    figs = _figures(summary)
    paths: dict[str, Path] = {}
    for name, writer in (("report.html", lambda p: _write_html(summary, p, figs)),
                         ("report.md", lambda p: _write_markdown(summary, p, figs, "figures"))):
        writer(out / name)
        paths[name] = out / name
    _write_csvs(summary, out / "results.csv", out / "comparisons.csv")
    paths["results.csv"] = out / "results.csv"
    paths["comparisons.csv"] = out / "comparisons.csv"
    if summary.similarity is not None:
        _write_similarity_csvs(summary, *(out / n for n in _SIMILARITY_CSVS))
        paths.update({n: out / n for n in _SIMILARITY_CSVS})
    else:  # of an earlier report of this folder
        for n in _SIMILARITY_CSVS:
            (out / n).unlink(missing_ok=True)
    for f in figs:
        p = fig_dir / f"{f.stem}.png"
        p.write_bytes(f.png)
        paths[f"figures/{p.name}"] = p
    return paths


def build_report(name: str, out_dir: str | os.PathLike | None = None, n_resamples: int = 2000, seed: int = 0,
                 log_to_parent: bool = True) -> dict[str, Path]:
    """Collect study ``name``, summarise, write the report (default ``reports/<name>``) and log its
    files to the study's parent run under ``report/``; returns {relative name: path}."""
    runs = collect_study(name)
    summary = summarize(runs, n_resamples=n_resamples, seed=seed)
    paths = write_report(summary, Path(out_dir) if out_dir is not None else Path("reports") / name)
    if log_to_parent and runs.parent_run_id:
        client = mlflow_client()
        for rel, path in paths.items():
            sub = "/".join(["report", *Path(rel).parent.parts])
            client.log_artifact(runs.parent_run_id, str(path), artifact_path=sub)
    return paths
