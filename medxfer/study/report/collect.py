"""Collect a study from MLflow: its parent run, the finished child runs and their test-set artifacts.

Reads the layout of ``docs/study-mlflow-layout.md`` (:mod:`medxfer.tracking.layout`): experiment
``medxfer/<name>``, one parent run (role ``study``) and one child run per cell × fold × seed (role
``cell``) with a ``predictions.csv`` (classification) or ``per_case.csv`` (segmentation) artifact,
optionally a ``localization.csv``; on the parent optionally ``grid.json``, ``similarity.json`` and the
``spec.yaml`` whose ``compare`` entries are the report's pooled comparisons.

``predictions.csv`` names each item's patient (the manifest's keyed pseudonym) in its ``patient``
column, empty where the manifest names none (kept empty: an unknown patient); an item without a pseudonym,
and every item of a run written before the column existed (a note says so), is its own resampling unit.
"""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from ...tracking import client as mlflow_client
from ...tracking import search_all_runs
from ...tracking.layout import (BUNDLE_CONFIGS_DIR, GRID_ARTIFACT, LOCALIZATION_ARTIFACT, METRICS_ARTIFACT,
                                PARAM_WEIGHTS_SHA256, ROLE_CELL, ROLE_PRETRAIN, ROLE_STUDY, SIMILARITY_ARTIFACT,
                                SPEC_ARTIFACT, TAG_CELL, TAG_CHAIN, TAG_CONFIG_HASH, TAG_FOLD, TAG_GRID_KEYS, TAG_ROLE,
                                TAG_RUN_NAME, TAG_SEED, TAG_STAGE, TAG_TASK, TASK_ARTIFACTS, study_experiment)
from .model import (CLASS_DICE_PREFIX, METRICS, SAMPLING_PARAMS, ChildRun, Localization, PooledSpec, PretrainRun,
                    ReportError, StudyRuns)

DEFAULT_GRID_KEYS = ("encoder", "weights", "freeze", "lr")  # runs without a grid-keys tag: these, where tagged


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_test_rows(run: ChildRun, path: Path) -> None:
    """Fill ``run`` (item ids and labels/probabilities or per-case Dice) from its predictions.csv / per_case.csv."""
    columns, rows = _read_csv(path)
    if "item_id" not in columns:
        raise ReportError(f"run {run.name}: {path.name} has no item_id column")
    run.item_id = np.array([r["item_id"] for r in rows], dtype=object)
    if run.task == "segmentation":
        if "dice" not in columns:
            raise ReportError(f"run {run.name}: per_case.csv has no dice column")
        run.dice = np.array([_float(r["dice"]) for r in rows], dtype=float)
        run.class_dice = {c[len(CLASS_DICE_PREFIX):]: np.array([_float(r[c]) for r in rows], dtype=float)
                          for c in columns if c.startswith(CLASS_DICE_PREFIX) and len(c) > len(CLASS_DICE_PREFIX)}
        return
    classes = [c for c in columns if c.startswith("p_")]
    if "y" not in columns or not classes:
        raise ReportError(f"run {run.name}: predictions.csv needs y and p_<class> columns")
    if "patient" in columns:  # kept empty where the manifest names no patient: unknown, not the item's own id
        run.patient = np.array([(r["patient"] or "").strip() for r in rows], dtype=object)
    run.y = np.array([int(float(r["y"])) for r in rows], dtype=int)
    run.prob = np.array([[_float(r[c]) for c in classes] for r in rows], dtype=float).reshape(len(rows), len(classes))
    if "p" in columns and len(classes) == 2:  # P(class 1) as written (equals p_<class 1>)
        run.prob[:, 1] = [_float(r["p"]) for r in rows]


def read_localization(run: ChildRun, path: Path) -> Localization:
    """A run's localization.csv (``item_id, fold, label, hit, dice, iou``); hits other than 0/1 read
    as unknown (nan), rows with neither a hit nor a Dice are dropped. The label is not read."""
    columns, rows = _read_csv(path)
    missing = [c for c in ("item_id", "hit", "dice") if c not in columns]
    if missing:
        raise ReportError(f"run {run.name}: {LOCALIZATION_ARTIFACT} lacks column(s) {', '.join(missing)}")
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


def parse_compare(value: Any) -> list[PooledSpec]:
    """The pooled comparisons of a spec's ``compare`` value (a list of ``{by, pool}`` mappings, or one);
    :class:`ValueError` when it has another shape (the grid keys are checked by :meth:`PooledSpec.problem`)."""
    if value is None:
        return []
    entries = [value] if isinstance(value, dict) else value
    if not isinstance(entries, list):
        raise ValueError("compare is not a list")
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("by"), str) or set(entry) - {"by", "pool"}:
            raise ValueError(f"compare entry {entry!r} is not a mapping {{by, pool}}")
        pool = entry.get("pool") or []
        pool = [pool] if isinstance(pool, str) else pool
        if not isinstance(pool, list) or not all(isinstance(k, str) for k in pool):
            raise ValueError(f"compare entry {entry!r}: pool is not a list of grid keys")
        out.append(PooledSpec(by=entry["by"], pool=tuple(pool)))
    return out


def _read_compare(client, parent_id: str | None, grid_keys: list[str], notes: list[str]) -> list[PooledSpec]:
    """The ``compare`` entries of the parent run's spec.yaml that fit the study's grid keys (a note for the others)."""
    if parent_id is None:
        return []
    with tempfile.TemporaryDirectory(prefix="medxfer-report-") as tmp:
        try:
            path = client.download_artifacts(parent_id, SPEC_ARTIFACT, tmp)
        except Exception:  # noqa: BLE001 - absent: no pooled comparisons from the spec
            return []
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            found = parse_compare(raw.get("compare") if isinstance(raw, dict) else None)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            notes.append(f"{SPEC_ARTIFACT} on the parent run: unreadable compare ({type(exc).__name__}); no pooled "
                         "comparisons from the spec")
            return []
    kept = []
    for spec in found:
        problem = spec.problem(grid_keys)
        if problem:
            notes.append(f"{SPEC_ARTIFACT} on the parent run: {problem}; that pooled comparison is left out")
        else:
            kept.append(spec)
    return kept


def _grid_keys(tag_lists: Iterable[str]) -> list[str]:
    keys: list[str] = []
    for text in tag_lists:
        for k in (text or "").split(","):
            k = k.strip()
            if k and k not in keys:
                keys.append(k)
    return keys


def _current_grid(client, parent_id: str | None) -> tuple[set[str] | None, list[str]]:
    """The config hashes of the study's grid as ``study run`` last expanded it (its ``grid.json``
    on the parent run), or None when the parent has none (a study made by other means); and the
    lines naming the cells it left out (combinations that cannot run)."""
    if parent_id is None:
        return None, []
    with tempfile.TemporaryDirectory(prefix="medxfer-report-") as tmp:
        try:
            path = client.download_artifacts(parent_id, GRID_ARTIFACT, tmp)
            record = json.loads(Path(path).read_text())
            hashes = set(record["config_hashes"])
        except Exception:  # noqa: BLE001 - absent or unreadable: use every child run
            return None, []
    left_out = record.get("left_out") if isinstance(record, dict) else None
    return hashes, [str(line) for line in left_out] if isinstance(left_out, list) else []


def _role_query(role: str) -> str:
    return f"tags.`{TAG_ROLE}` = '{role}'"


def collect_study(name: str) -> StudyRuns:
    """The finished child runs of study ``name`` with their test-set predictions / per-case Dice.

    Children with a status other than FINISHED are ignored; of several FINISHED children with
    one ``config_hash`` the latest (end time) wins. :class:`ReportError` when the experiment
    ``medxfer/<name>`` does not exist or holds no finished child run.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = mlflow_client()
    experiment_name = study_experiment(name)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise ReportError(f"study {name!r}: no MLflow experiment '{experiment_name}' in the tracking store "
                          "(run `medxfer study run SPEC.yaml` first, or check MLFLOW_TRACKING_URI)")
    exp_id = experiment.experiment_id
    # the earliest parent, as the runner chooses it when shards race to create one
    parents = search_all_runs(client, exp_id, _role_query(ROLE_STUDY), order_by=["attributes.start_time ASC"])
    parent_id = parents[0].info.run_id if parents else None

    children = search_all_runs(client, exp_id, _role_query(ROLE_CELL))
    grid, left_out = _current_grid(client, parent_id)
    notes: list[str] = list(left_out)
    if grid is not None:  # only runs of the spec as last run (not of an earlier version of it)
        outside = [r for r in children if r.data.tags.get(TAG_CONFIG_HASH) not in grid]
        children = [r for r in children if r.data.tags.get(TAG_CONFIG_HASH) in grid]
        if outside:
            notes.append(f"{len(outside)} run(s) of other configurations (an earlier version of the spec, "
                         "another cohort) are not part of the current grid and left out")
    finished = [r for r in children if r.info.status == "FINISHED"]
    n_not_finished = len(children) - len(finished)
    chosen = _latest(finished)
    n_superseded = len(finished) - len(chosen)
    if not chosen:
        raise ReportError(f"study {name!r}: experiment '{experiment_name}' holds no finished run "
                          f"({n_not_finished} unfinished/failed child run(s))")

    grid_keys = _grid_keys(r.data.tags.get(TAG_GRID_KEYS, "") for r in chosen)
    if not grid_keys:
        grid_keys = [k for k in DEFAULT_GRID_KEYS if any(k in r.data.tags for r in chosen)]

    runs: list[ChildRun] = []
    with tempfile.TemporaryDirectory(prefix="medxfer-report-") as tmp:
        for r in sorted(chosen, key=lambda r: (r.data.tags.get(TAG_CELL, ""), r.info.start_time or 0)):
            run = _read_child(client, r, grid_keys, Path(tmp), notes)
            if run is not None:
                runs.append(run)
    n_cls = sum(r.task == "classification" for r in runs)
    n_loc = sum(r.loc is not None for r in runs)
    if n_loc and n_loc < n_cls:
        notes.append(f"{n_cls - n_loc} of {n_cls} classification run(s) have no (readable) {LOCALIZATION_ARTIFACT}; "
                     "they are left out of the localization section")
    if not runs:
        raise ReportError(f"study {name!r}: no finished run has its {' / '.join(TASK_ARTIFACTS.values())} artifact")
    no_patient = sum(r.task == "classification" and r.patient is None for r in runs)
    if no_patient:
        notes.append(f"{no_patient} of {n_cls} classification run(s) have no patient column in their predictions.csv "
                     "(written by an earlier medxfer): their items count as their own patients in the bootstrap CIs "
                     "and tests")
    similarity = _read_similarity(client, parent_id, notes)
    compare = _read_compare(client, parent_id, grid_keys, notes)
    return StudyRuns(name=name, experiment_id=exp_id, parent_run_id=parent_id, grid_keys=grid_keys, runs=runs,
                     n_not_finished=n_not_finished, n_superseded=n_superseded, notes=notes, similarity=similarity,
                     compare=compare, pretrain=_read_pretrain(client, exp_id),
                     optimizer=_read_optimizer(client, runs))


def _latest(runs: list) -> list:
    """Of FINISHED runs sharing a config hash, the latest (end time)."""
    latest: dict[str, Any] = {}
    for r in runs:
        if r.info.status != "FINISHED":
            continue
        key = r.data.tags.get(TAG_CONFIG_HASH) or r.info.run_id
        rank = (r.info.end_time or 0, r.info.start_time or 0, r.info.run_id)
        if key not in latest or rank > latest[key][0]:
            latest[key] = (rank, r)
    return [v[1] for v in latest.values()]


def _read_pretrain(client, exp_id: str) -> list[PretrainRun]:
    """The study's finished pretraining stage runs (latest per configuration), by stage and encoder."""
    out = []
    for r in _latest(search_all_runs(client, exp_id, _role_query(ROLE_PRETRAIN))):
        tags, params = r.data.tags, r.data.params
        n_test = params.get("data.n_test", "")
        out.append(PretrainRun(stage=tags.get(TAG_STAGE, ""), chain=tags.get(TAG_CHAIN, ""),
                               encoder=tags.get("encoder", params.get("encoder", "")),
                               start=params.get("weights", ""),
                               test_auc=float(r.data.metrics.get(METRICS["classification"], math.nan)),
                               n_test=int(n_test) if n_test.isdigit() else None, epochs=params.get("epochs", "")))
    return sorted(out, key=lambda p: (p.chain, p.stage, p.encoder))


def _read_optimizer(client, runs: list[ChildRun]) -> str:
    """The optimiser class (``torch.optim.AdamW``) of the bundle config the first run logged; "" when unknown."""
    if not runs:
        return ""
    with tempfile.TemporaryDirectory(prefix="medxfer-report-") as tmp:
        try:
            path = client.download_artifacts(runs[0].run_id, f"{BUNDLE_CONFIGS_DIR}/train.json", tmp)
            target = json.loads(Path(path).read_text(encoding="utf-8"))["optimizer"]["_target_"]
        except Exception:  # noqa: BLE001 - absent or another layout: the methods say it is not recorded
            return ""
    return str(target) if isinstance(target, str) else ""


def read_metrics_json(run: ChildRun, path: Path) -> None:
    """Fill the run's validation operating point and bundle settings from its metrics.json (a file that is not
    valid JSON — the NaN literals of an earlier medxfer are accepted — leaves them unset)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(data, dict):
        return
    run.threshold_source = str(data.get("youden_threshold_source") or "")
    found = data.get("youden_thresholds")
    if isinstance(found, list) and found and all(isinstance(t, (int, float)) and math.isfinite(t) for t in found):
        run.thresholds = [float(t) for t in found]
    if isinstance(data.get("config"), dict):
        run.config = data["config"]


def _read_child(client, r, grid_keys: list[str], tmp: Path, notes: list[str]) -> ChildRun | None:
    """One finished child run with its test rows (and localization), or None (with a note) when it lacks them."""
    tags = r.data.tags
    task = tags.get(TAG_TASK) or ("segmentation" if METRICS["segmentation"] in r.data.metrics else "classification")
    name = tags.get(TAG_RUN_NAME) or r.info.run_name or r.info.run_id
    cell = tags.get(TAG_CELL) or name.rsplit("/fold", 1)[0]
    run = ChildRun(run_id=r.info.run_id, name=name, cell=cell, task=task,
                   grid={k: tags.get(k, "") for k in grid_keys}, fold=tags.get(TAG_FOLD, ""),
                   seed=tags.get(TAG_SEED, ""), metric=float(r.data.metrics.get(METRICS.get(task, ""), math.nan)),
                   item_id=np.array([], dtype=object), config_hash=tags.get(TAG_CONFIG_HASH, ""),
                   end_time=r.info.end_time or 0, weights_sha256=r.data.params.get(PARAM_WEIGHTS_SHA256, ""),
                   sampling={k: r.data.params[k] for k in SAMPLING_PARAMS if k in r.data.params},
                   params=dict(r.data.params))
    artifact = TASK_ARTIFACTS.get(task)
    if artifact is None:
        notes.append(f"run {name}: unknown task {task!r}, left out")
        return None
    dst = tmp / r.info.run_id
    dst.mkdir()
    try:
        path = Path(client.download_artifacts(r.info.run_id, artifact, str(dst)))
    except Exception:  # noqa: BLE001 - MlflowException or OSError: the artifact is absent
        notes.append(f"run {name}: finished without {artifact}, left out")
        return None
    read_test_rows(run, path)
    if task == "classification":  # optional: without it the run has no validation operating point
        try:
            read_metrics_json(run, Path(client.download_artifacts(r.info.run_id, METRICS_ARTIFACT, str(dst))))
        except Exception:  # noqa: BLE001 - absent
            pass
    if task == "classification":  # optional: its absence keeps the run in the AUC part
        try:
            loc_path = Path(client.download_artifacts(r.info.run_id, LOCALIZATION_ARTIFACT, str(dst)))
        except Exception:  # noqa: BLE001 - absent
            pass
        else:
            try:
                run.loc = read_localization(run, loc_path)
            except (ReportError, OSError, KeyError, csv.Error) as exc:
                notes.append(f"run {name}: unreadable {LOCALIZATION_ARTIFACT} ({exc}), left out of the "
                             "localization section")
    return run
