"""The study spec: a YAML file naming a cohort, a bundle and the grid to compare.

```yaml
name: dental-ceph-sex
data: {manifest: out/manifest.csv, label: sex, folds: 5}
bundle: classification
grid:
  encoder: [resnet50, densenet121]
  weights: [imagenet, radimagenet, scratch]
  freeze: [none, all, top:10]
  lr: [1e-3, 1e-4]
seeds: [0]
train: {epochs: 30, image_size: 256, batch_size: 32}
```

``grid`` keys are bundle config keys (any of them: ``dropout``, ``image_size``, …) with a list
of values each; ``train`` holds fixed bundle overrides. ``data.folds`` is the manifest's number
of folds (checked) or a list of the folds to run; ``data`` may also name ``modalities``,
``classes`` and (segmentation) ``mask_root``. A relative ``manifest`` is read from the spec's
folder first, then from the working directory.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..engine.bundles import BundleError, bundle_path
from .pretrain import PretrainStage, parse_stages

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Keys the study owns: set per run, never by the spec's grid or train sections.
RESERVED = {"manifest", "label", "fold", "seed", "experiment", "parent_run_id", "tags", "tracking", "run_name",
            "output_dir", "bundle_root", "task", "mlflow_run_id"}
# Keys that identify a run in its name: always present in a cell (bundle default when not in the grid).
NAME_KEYS = ("encoder", "weights", "freeze", "lr")
# Settings that change where or how fast a run computes, not what it computes: left out of config_hash,
# so a study can be sharded over a CPU machine and a GPU machine and still be one grid.
NOT_HASHED = {"num_workers", "cache_rate", "cuda", "amp", "amp_dtype", "device", "feature_cache_dir"}


class SpecError(ValueError):
    """A study spec that cannot be run, with the reason."""


@dataclass
class StudySpec:
    """A parsed, validated study spec."""

    name: str
    bundle: str
    manifest: Path
    label: str
    folds: list[int]
    grid: dict[str, list[Any]]
    seeds: list[int] = field(default_factory=lambda: [0])
    train: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # modalities, classes, mask_root
    pretrain: list[PretrainStage] = field(default_factory=list)
    similarity: dict[str, Any] | None = None  # dataset similarity of source cohorts to this one
    source: Path | None = None
    text: str = ""

    @property
    def experiment(self) -> str:
        """The MLflow experiment of the study (``medxfer/<name>``)."""
        return f"medxfer/{self.name}"

    @property
    def stages(self) -> dict[str, PretrainStage]:
        """Pretraining stages by name (each a weights source of the grid)."""
        return {s.name: s for s in self.pretrain}

    @property
    def task(self) -> str:
        return "segmentation" if "segmentation" in Path(self.bundle).name else "classification"

    def bundle_defaults(self) -> dict[str, Any]:
        """The bundle's own values of the run-name keys (used when the grid does not set them)."""
        config = json.loads((bundle_path(self.bundle) / "configs" / "train.json").read_text())
        return {k: config.get(k) for k in NAME_KEYS}

    def spec_hash(self) -> str:
        """A hash of what the spec asks for (recorded on the parent run)."""
        blob = json.dumps({"bundle": self.bundle, "label": self.label, "folds": self.folds, "grid": self.grid,
                           "seeds": self.seeds, "train": self.train, "data": self.data,
                           "pretrain": [vars(s) for s in self.pretrain]}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _as_list(key: str, value: Any) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SpecError(f"grid.{key} is empty: give at least one value")
    if len(set(json.dumps(v, sort_keys=True) for v in values)) != len(values):
        raise SpecError(f"grid.{key} lists a value twice: {values}")
    return values


def yaml_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string: numbers written like numbers become numbers."""
    if isinstance(value, str):
        try:
            return int(value) if re.fullmatch(r"[+-]?\d+", value) else float(value)
        except ValueError:
            return value
    return value


def _manifest_folds(manifest: Path) -> list[int]:
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        if "fold" not in (reader.fieldnames or []):
            raise SpecError(f"{manifest}: no `fold` column; run `medxfer split {manifest.parent} --folds K` first")
        return sorted({int(r["fold"]) for r in reader if r.get("fold") not in (None, "")})


def _resolve_manifest(value: str, source: Path | None) -> Path:
    path = Path(os.path.expanduser(str(value)))
    if not path.is_absolute():
        candidates = ([source.parent / path] if source else []) + [Path.cwd() / path]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        raise SpecError(f"data.manifest: no such file {path}")
    return path.resolve()


def parse_spec(raw: dict[str, Any], source: Path | None = None, text: str = "") -> StudySpec:
    """Validate a spec mapping (what ``yaml.safe_load`` returns) into a :class:`StudySpec`."""
    if not isinstance(raw, dict):
        raise SpecError("a study spec is a mapping with name, data, bundle, grid")
    unknown = set(raw) - {"name", "data", "bundle", "grid", "seeds", "train", "pretrain", "similarity"}
    if unknown:
        raise SpecError(f"unknown top-level keys {sorted(unknown)} (allowed: name, data, bundle, grid, seeds, "
                        "train, pretrain, similarity)")
    name = str(raw.get("name") or "")
    if not NAME_PATTERN.match(name):
        raise SpecError(f"name {name!r}: letters, digits, '.', '_' and '-' only (it names the MLflow experiment)")
    bundle = str(raw.get("bundle") or "classification")
    try:
        root = bundle_path(bundle)
    except BundleError as exc:
        raise SpecError(str(exc)) from None
    config_keys = set(json.loads((root / "configs" / "train.json").read_text())) | {"feature_cache", "feature_cache_dir"}

    data = dict(raw.get("data") or {})
    for key in ("manifest", "label"):
        if not data.get(key):
            raise SpecError(f"data.{key} is required")
    unknown = set(data) - {"manifest", "label", "folds", "modalities", "classes", "mask_root"}
    if unknown:
        raise SpecError(f"unknown data keys {sorted(unknown)} (allowed: manifest, label, folds, modalities, "
                        "classes, mask_root)")
    manifest = _resolve_manifest(data.pop("manifest"), source)
    label = str(data.pop("label"))
    available = _manifest_folds(manifest)
    requested = data.pop("folds", None)
    if requested is None:
        folds = available
    elif isinstance(requested, int):
        if requested != len(available):
            raise SpecError(f"data.folds is {requested} but {manifest} is split into {len(available)} folds "
                            f"{available}: re-split or correct the spec")
        folds = available
    else:
        folds = sorted({int(f) for f in requested})
        missing = sorted(set(folds) - set(available))
        if missing:
            raise SpecError(f"data.folds {missing} not in the manifest's folds {available}")
    if len(available) < 3:
        raise SpecError(f"{manifest} has {len(available)} folds; a study needs >= 3 (test, validation, training)")
    if "mask_root" in data:
        data["mask_root"] = str(Path(data["mask_root"]).expanduser().resolve())

    grid_raw = raw.get("grid") or {}
    if not isinstance(grid_raw, dict) or not grid_raw:
        raise SpecError("grid is required: a mapping of bundle keys to lists of values")
    train = {k: yaml_number(v) for k, v in dict(raw.get("train") or {}).items()}
    grid = {str(k): [yaml_number(v) for v in _as_list(str(k), v)] for k, v in grid_raw.items()}
    for section, keys in (("grid", grid), ("train", train)):
        bad = sorted(set(keys) & RESERVED)
        if bad:
            raise SpecError(f"{section} may not set {bad}: the study sets them per run (folds and seeds have "
                            "their own keys)")
        unknown = sorted(set(keys) - config_keys)
        if unknown:
            raise SpecError(f"{section}: {unknown} are not keys of the {bundle} bundle")
    both = sorted(set(grid) & set(train))
    if both:
        raise SpecError(f"{both} are in both grid and train: put each key in one place")
    stages = parse_stages(raw.get("pretrain"), lambda m: _resolve_manifest(m, source), train, SpecError)
    seeds = raw.get("seeds", [0])
    seeds = [int(s) for s in (seeds if isinstance(seeds, list) else [seeds])]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SpecError(f"seeds must be a non-empty list of distinct integers, not {seeds}")
    similarity = _parse_similarity(raw.get("similarity"), stages, source)
    return StudySpec(name=name, bundle=bundle, manifest=manifest, label=label, folds=folds, grid=grid,
                     seeds=seeds, train=train, data=data, pretrain=stages, similarity=similarity, source=source,
                     text=text)


SIMILARITY_KEYS = {"encoder", "weights", "image_size", "in_channels", "sources"}


def _parse_similarity(raw: Any, stages: list[PretrainStage], source: Path | None) -> dict[str, Any] | None:
    """The ``similarity`` section: which fixed encoder measures how close each source cohort is to
    the study's cohort. Sources are the pretraining stages' cohorts, plus ``sources`` (weights
    name → manifest of the data those weights were trained on, for imported weights)."""
    if raw in (None, False):
        return None
    raw = {} if raw is True else raw
    if not isinstance(raw, dict):
        raise SpecError("similarity is a mapping: {encoder, weights, image_size, in_channels, sources}")
    unknown = set(raw) - SIMILARITY_KEYS
    if unknown:
        raise SpecError(f"unknown similarity keys {sorted(unknown)} (allowed: {', '.join(sorted(SIMILARITY_KEYS))})")
    out = {"encoder": str(raw.get("encoder", "resnet18")), "weights": str(raw.get("weights", "scratch")),
           "image_size": int(raw.get("image_size", 128)), "in_channels": int(raw.get("in_channels", 1))}
    sources = {s.name: {"manifest": str(s.manifest), "modalities": s.data.get("modalities")} for s in stages}
    extra = raw.get("sources") or {}
    if not isinstance(extra, dict):
        raise SpecError("similarity.sources maps a weights name to the manifest of its training data")
    for name, manifest in extra.items():
        sources[str(name)] = {"manifest": str(_resolve_manifest(str(manifest), source)), "modalities": None}
    if not sources:
        raise SpecError("similarity: no source cohort (declare pretrain stages or similarity.sources)")
    out["sources"] = sources
    return out


def load_spec(path: str | os.PathLike) -> StudySpec:
    """Read and validate a study spec YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
        raw = yaml.safe_load(text)
    except OSError as exc:
        raise SpecError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return parse_spec(raw, source=path.resolve(), text=text)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
