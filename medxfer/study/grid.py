"""Expanding a study spec into runs: cells × folds × seeds, each with a deterministic name, the
bundle overrides it runs with, and a ``config_hash`` that decides whether it is already done.

Order is fixed (grid keys in spec order, values in list order, then fold, then seed; a grid of blocks
block by block, a cell an earlier block has skipped; ``exclude``'s cells skipped), so ``--shard I/N`` —
every N-th run starting at the I-th — gives the same disjoint slices on every machine, and the union of
the N shards is the grid.

A cell's name, tags, ``cell_hash`` and ``config_hash`` are functions of its own settings (and the cohort,
folds, seeds), never of the grid's shape: the same cell written in a plain product, a block or a product
less ``exclude`` is the same run, so rewriting a grid resumes every run it still has.

Cells that cannot run — a crossing of two grid keys such as ``unet_3d`` (a scratch baseline) with a
pretrained source, or a 3D encoder with ``input: 2d`` (:func:`.checks.sparse_grid`) — are left out, as
in a sparse grid; :meth:`~.spec.StudySpec.sparse_grid` says which. ``freeze: all`` classification cells
of native 3D (``input: 3d``) train whole networks: the feature cache holds 2D samples' features only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..core.hashing import canonical_numbers, sha256_file, stable_digest
from ..engine.mlflow_run import run_name
from ..models.weights import imported_record, source_label
from ..tracking.layout import (ROLE_CELL, TAG_CELL, TAG_CELL_HASH, TAG_CONFIG_HASH, TAG_FOLD, TAG_GRID_KEYS, TAG_ROLE,
                               TAG_SEED, TAG_STUDY, TAG_TASK)
from .pretrain import stage_hash
from .spec import NAME_KEYS, NOT_HASHED, SpecError, StudySpec

CONFIG_HASH_LENGTH = 20  # hex characters of the config_hash and cell_hash tags, as stored


@dataclass(frozen=True)
class PlannedRun:
    """One cell × fold × seed of a study."""

    index: int
    name: str
    cell: str
    cell_values: dict[str, Any]
    fold: int
    seed: int
    overrides: dict[str, Any] = field(hash=False)
    config_hash: str
    cell_hash: str
    feature_cache: bool = False  # a freeze: all classification run whose head trains from cached features
    stage: str | None = None  # the pretraining stage whose checkpoint is this run's weights

    def tags(self, study: str, grid_keys: list[str]) -> dict[str, str]:
        """The child run's MLflow tags (see ``docs/study-mlflow-layout.md``)."""
        tags = {TAG_STUDY: study, TAG_ROLE: ROLE_CELL, TAG_CONFIG_HASH: self.config_hash,
                TAG_CELL_HASH: self.cell_hash, TAG_CELL: self.cell, TAG_FOLD: str(self.fold), TAG_SEED: str(self.seed),
                TAG_GRID_KEYS: ",".join(grid_keys), TAG_TASK: self.name.split("/", 1)[0]}
        tags.update({k: _tag_value(k, v) for k, v in self.cell_values.items() if k in grid_keys})
        return tags


def _tag_value(key: str, value: Any) -> str:
    if key == "weights":
        return source_label(str(value))
    return value if isinstance(value, str) else json.dumps(value)


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() not in ("false", "0", "no", "off", "none", "")


def _digest(obj: Any) -> str:
    """A cell's or run's config hash: 20 hex characters, as stored in the ``config_hash`` tags."""
    return stable_digest(obj, CONFIG_HASH_LENGTH)


@lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256, once per (path, size, mtime): an unchanged file is not read again."""
    return sha256_file(path)


def weights_identity(source: str, arch: str) -> str:
    """What a weights source *is*, for the hash: the file's sha256 for imported names and ``file:``
    (re-importing other weights under the same name is a new configuration), the source otherwise
    (``scratch``; ``run:<id>`` names one immutable checkpoint)."""
    if source == "scratch" or source.startswith("run:"):
        return source
    if source.startswith("file:"):
        path = Path(source[5:]).expanduser()
        if path.is_file():
            st = path.stat()
            return "sha256:" + _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)
        return source
    record = imported_record(source, arch)
    return f"sha256:{record.sha256}" if record is not None and record.sha256 else source


def expand(spec: StudySpec) -> list[PlannedRun]:
    """Every run of the study in its fixed order."""
    defaults = spec.bundle_defaults()
    manifest_sha = _file_sha256(str(spec.manifest), spec.manifest.stat().st_size, spec.manifest.stat().st_mtime_ns)
    runs: list[PlannedRun] = []
    for cell_values in spec.sparse_grid().kept:  # in grid order, less the combinations that cannot run
        settings = {**spec.train, **cell_values}
        named = {k: settings.get(k, spec.train.get(k, defaults.get(k))) for k in NAME_KEYS}
        try:
            lr = float(named["lr"])
        except (TypeError, ValueError):
            raise SpecError(f"lr {named['lr']!r} is not a number") from None
        cell_name = run_name(spec.task, str(named["encoder"]), source_label(str(named["weights"])),
                             str(named["freeze"]), lr, 0, 0).rsplit("/fold", 1)[0]
        extra = {k: v for k, v in cell_values.items() if k not in NAME_KEYS}
        if extra:  # grid keys outside the run name still make cells distinct
            cell_name += "/" + ",".join(f"{k}={_tag_value(k, v)}" for k, v in extra.items())
        feature_cache = (spec.task == "classification" and str(named["freeze"]) == "all"
                         and _truthy(settings.get("feature_cache", True))
                         and str(settings.get("input") or "2d").lower() != "3d")  # features of 2D samples only
        run_settings = {**named, **{k: v for k, v in settings.items() if k != "feature_cache"}}
        if feature_cache:
            run_settings["augment"] = False  # heads on cached features see the images as they are
        hashed = canonical_numbers({k: v for k, v in run_settings.items() if k not in NOT_HASHED})
        hashed["feature_cache"] = feature_cache
        weights, encoder = str(named["weights"]), str(named["encoder"])
        stage = weights if weights in spec.stages else None
        hashed["weights_identity"] = (f"stage:{stage_hash(spec.stages, stage, encoder, weights_identity)}" if stage
                                      else weights_identity(weights, encoder))
        if str(named["weights"]).startswith("file:"):
            hashed["weights"] = "file:"  # the file's sha256 is its identity, not where it lies
        # where the cohort lives is not what it is: paths stay out (the manifest's content goes in), so
        # machines with the data at different paths share one study through one tracking server
        data = {k: v for k, v in spec.data.items() if k != "mask_root"}
        cell_identity = {"bundle": Path(spec.bundle).name, "label": spec.label, "manifest_sha256": manifest_sha,
                         "data": data, "settings": hashed}
        cell_hash = _digest(cell_identity)
        for fold in spec.folds:
            for seed in spec.seeds:
                overrides = {**run_settings, "manifest": str(spec.manifest), "label": spec.label, "fold": fold,
                             "seed": seed, **spec.data}
                runs.append(PlannedRun(
                    index=len(runs), name=f"{cell_name}/fold{fold}/seed{seed}", cell=cell_name,
                    cell_values=cell_values, fold=fold, seed=seed, overrides=overrides,
                    config_hash=_digest({**cell_identity, "fold": fold, "seed": seed}), cell_hash=cell_hash,
                    feature_cache=feature_cache, stage=stage))
    return runs


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` (1 ≤ I ≤ N) → (I, N); None → (1, 1)."""
    if not text:
        return 1, 1
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise SpecError(f"--shard {text!r}: write I/N, e.g. 2/4 (the second of four shards)") from None
    if not 1 <= i <= n:
        raise SpecError(f"--shard {text!r}: I must be between 1 and N")
    return i, n


def shard(runs: list[PlannedRun], i: int, n: int) -> list[PlannedRun]:
    """The I-th of N disjoint slices: runs whose index ≡ I−1 (mod N)."""
    return [r for r in runs if r.index % n == i - 1]
