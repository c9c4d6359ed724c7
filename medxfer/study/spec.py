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
pretrain:
  - name: density              # a weights source name the grid can use
    data: {manifest: density/manifest.csv, label: density, fold: 0, modalities: [MG]}
    from: imagenet             # start: scratch, an imported name, file:PATH, run:ID or an earlier stage
    train: {epochs: 20}        # bundle overrides (image_size, in_channels, batch_size, input, roi_size,
                               # spacing default to the study's)
similarity: {encoder: resnet18, weights: scratch, image_size: 128}
```

Native 3D (``input: 3d``, :mod:`medxfer.engine.segmentation3d`): 3D encoders (``resnet18_3d``, …) and,
for segmentation, MONAI's plain ``unet_3d`` / ``segresnet_3d`` trained from scratch as baselines:

```yaml
bundle: segmentation
grid:
  encoder: [resnet18_3d, unet_3d]
  weights: [scratch, organs]       # unet_3d × organs cannot exist: left out, and `study run` says so
train: {input: 3d, roi_size: [96, 96, 96], segments: [anterior, posterior], epochs: 100}
pretrain:
  - name: organs                   # a 3D classification run per 3D encoder (input and roi_size from train)
    data: {manifest: organs/manifest.csv, label: organ}
```

A cell whose encoder does not fit its input (a 3D network with ``input: 2d`` / ``2.5d``, a 2D one with
``input: 3d``), a plain baseline with pretrained weights or a freeze, ``slices`` / ``aggregate`` with
``input: 3d`` or ``segments`` without it cannot run: when two grid keys make the clash, the cell is left
out (a sparse grid; the plan and the report list what was left out); when the spec fixes it (in
``train``, or a grid value against ``train``) it is an error naming both places.

A pretraining stage takes ``input``, ``roi_size`` and ``spacing`` (and ``image_size``, ``in_channels``,
``batch_size``) from the study's ``train`` unless its own ``train`` sets them: the weights it makes must
fit the target's network (3D weights cannot start a 2D target), and a stage's input must fit every
encoder it trains for (checked up front). A stage runs only for the encoders of the cells that use it.

``grid`` keys are bundle config keys (any of them: ``dropout``, ``image_size``, …) with a list
of values each; ``train`` holds fixed bundle overrides. ``data.folds`` is the manifest's number
of folds (checked) or a list of the folds to run; ``data`` may also name ``modalities``,
``classes`` and (segmentation) ``mask_root``. A relative ``manifest`` is read from the spec's
folder first, then from the working directory. ``pretrain`` stages are weights sources the grid
can name (:mod:`.pretrain` runs them); ``similarity`` measures how close each source cohort is
to the study's.

A grid that does not cross every value with every other is a list of blocks, each a mapping as above
(a product) and every one naming the same keys: the grid is the union of their products, in block
order, a cell two blocks name running once (with a note). Or a product less ``exclude``: partial
cells, each matching at least one cell (an entry that matches nothing, or names a key or value the
grid lacks, is an error). Both compose with the cells left out because they cannot run. RadImageNet's
learning rate goes with the freezing:

```yaml
grid:
  - {encoder: [resnet50_keras, densenet121], weights: [radimagenet, imagenet], freeze: [none], lr: [1e-3, 1e-4]}
  - {encoder: [resnet50_keras, densenet121], weights: [radimagenet, imagenet], freeze: [all, top_layers:10],
     lr: [1e-2, 1e-3]}
# the same cells: grid: {…, freeze: [none, all, top_layers:10], lr: [1e-2, 1e-3, 1e-4]}
#                 exclude: [{freeze: none, lr: 1e-2}, {freeze: all, lr: 1e-4}, {freeze: top_layers:10, lr: 1e-4}]
```

A cell's run name and config hash depend on its settings only, not on how the grid is written: a grid
rewritten as blocks or with ``exclude`` resumes every run it still has.

The YAML is validated by typed models of its sections (:class:`SpecDocument` and the sections
below it); :func:`parse_spec` resolves a valid document into the :class:`StudySpec` the grid and
the runner read. Every problem is one :class:`SpecError` line that says what is wrong and where.

A spec is data, as safe to run as a CSV is to open: no string in it may be one MONAI's config
parser would evaluate or resolve (``$…``, ``@…``, ``%…``, ``#``; see
:func:`medxfer.engine.bundles.config_data_problem`), a YAML mapping may not repeat a key, and
what the grid names is checked before any run starts (:mod:`.checks`): encoders, freeze
policies, weights sources, label columns, ``epochs``/``batch_size``/``seeds`` ranges, folds, and the
volume settings ``input``/``slices``/``aggregate`` (with ``in_channels`` for 2.5D), ``roi_size`` and
``spacing`` in ``train``, the grid and each pretraining stage, and each cell's encoder against its input.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from ..core.errors import MedxferError
from ..core.hashing import stable_digest
from ..engine.bundles import BundleError, bundle_config, bundle_path, closest_hint, config_data_problem
from ..models.segmenter import PLAIN_SEGMENTERS
from ..models.weights import is_weights_name  # one rule for what a weights name may be
from ..tracking.layout import study_experiment
from .checks import (COUNT_KEYS, SparseGrid, count_problem, encoder_problem, freeze_problem, label_problem,
                     registry_problem, similarity_encoder_problem, slice_settings_problem, sparse_grid, stage_encoders,
                     stage_problem, weights_problem)
from .leakage import StageCohort, TargetCohort, pretraining_leaks

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Keys the study owns: set per run, never by the spec's grid or train sections.
RESERVED = {"manifest", "label", "fold", "seed", "experiment", "parent_run_id", "tags", "tracking", "run_name",
            "output_dir", "bundle_root", "task", "mlflow_run_id", "weights_sha256", "claimed_run_id"}
# Keys that identify a run in its name: always present in a cell (bundle default when not in the grid).
NAME_KEYS = ("encoder", "weights", "freeze", "lr")
# Settings that change where or how fast a run computes, not what it computes: left out of config_hash,
# so a study can be sharded over a CPU machine and a GPU machine and still be one grid.
NOT_HASHED = {"num_workers", "cache_rate", "cuda", "amp", "amp_dtype", "device", "feature_cache_dir", "item_cache",
              "item_cache_dir", "augment_on_device", "loader_workers", "device_side"}
# Keys a pretraining stage's train may not set: the stage's data and the grid's encoder decide them.
STAGE_RESERVED = {"manifest", "label", "fold", "weights", "encoder", "experiment", "run_name"}
# Settings a stage takes from the study's `train` unless it sets them: the input must match (3D weights
# cannot start a 2D target, nor 2D weights a 3D one).
SHARED_SETTINGS = ("image_size", "in_channels", "batch_size", "input", "roi_size", "spacing")
# Settings a cell's feasibility depends on that have a bundle default (checks.cell_problems)
CELL_DEFAULT_KEYS = (*("encoder", "weights", "freeze"), "input")
SPEC_HASH_LENGTH = 16  # the parent run's medxfer.spec_hash, as stored


class SpecError(MedxferError, ValueError):
    """A study spec that cannot be run, with the reason."""


class _Misplaced(ValueError):
    """A section's error whose message names the section's place in the spec (``{where}``),
    which only the caller knows: ``pretrain[2] is not a mapping``."""

    def __init__(self, template: str):
        super().__init__(template)
        self.template = template

    def at(self, where: str) -> str:
        return self.template.replace("{where}", where)


# ---- values


def yaml_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string: numbers written like numbers become numbers."""
    if isinstance(value, str):
        try:
            return int(value) if re.fullmatch(r"[+-]?\d+", value) else float(value)
        except ValueError:
            return value
    return value


def _grid_values(value: Any) -> list[Any]:
    """A grid key's values: a list (a single value is a list of one), non-empty, each value once."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise _Misplaced("{where} is empty: give at least one value")
    if len(set(json.dumps(v, sort_keys=True) for v in values)) != len(values):
        raise _Misplaced(f"{{where}} lists a value twice: {values}")
    return values


def _grid_blocks(grid: list[Any]) -> list[dict[str, list[Any]]]:
    """``grid`` written as a list of blocks (each a mapping of keys to values, a product), validated: every
    block names the same keys, so that every cell has a value for each (a key that does not vary in a block
    is a list of one there)."""
    if not grid:
        raise SpecError("grid is an empty list: give a mapping of bundle keys to lists of values, or a list of them")
    blocks: list[dict[str, list[Any]]] = []
    for i, block in enumerate(grid):
        if not isinstance(block, dict) or not block:
            raise SpecError(f"grid[{i}] is not a mapping of bundle keys to lists of values (a block of the grid)")
        try:
            blocks.append(_GRID_BLOCK.validate_python(block))
        except ValidationError as exc:
            raise SpecError(_one_line(exc, ("grid", i))) from None
        if set(blocks[i]) != set(blocks[0]):
            raise SpecError(f"grid[{i}] names the keys {sorted(blocks[i])} and grid[0] {sorted(blocks[0])}: every "
                            "block names the same keys (a key that does not vary in a block is a list of one there)")
    return blocks


def _grid_union(blocks: list[dict[str, list[Any]]]) -> dict[str, list[Any]]:
    """Each key's values over every block, in the order they first appear (a grid of one block: that block)."""
    union: dict[str, list[Any]] = {key: [] for key in blocks[0]}
    for block in blocks:
        for key, values in union.items():
            values += [v for v in block[key] if not any(v == u for u in values)]
    return union


def _resolve_manifest(value: str, source: Path | None) -> Path:
    """A manifest of the spec: a relative path from the spec's folder first, then from the working directory."""
    path = Path(os.path.expanduser(str(value)))
    if not path.is_absolute():
        candidates = ([source.parent / path] if source else []) + [Path.cwd() / path]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        raise SpecError(f"data.manifest: no such file {path}")
    return path.resolve()


def _manifest(value: Any, info: ValidationInfo) -> Path:
    return _resolve_manifest(str(value), (info.context or {}).get("source"))


def _classes(value: Any) -> Any:
    if value is not None and not isinstance(value, (list, dict)):
        raise _Misplaced(f"{{where}} is a list of class names or a mapping class -> values, not {value!r}")
    return value


def _manifest_folds(manifest: Path) -> list[int]:
    """The folds a manifest is split into (its ``fold`` column)."""
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        if "fold" not in (reader.fieldnames or []):
            raise SpecError(f"{manifest}: no `fold` column; run `medxfer split {manifest.parent} --folds K` first")
        return sorted({int(r["fold"]) for r in reader if r.get("fold") not in (None, "")})


def _bundle_keys(bundle: str) -> set[str]:
    """The keys a spec may set for ``bundle``: its train config's, and the study's feature cache."""
    return set(bundle_config(bundle)) | {"feature_cache", "feature_cache_dir"}


def bundle_task(bundle: str) -> str:
    """``segmentation`` for a segmentation bundle, else ``classification``."""
    return "segmentation" if "segmentation" in Path(bundle).name else "classification"


def cell_defaults(bundle: str) -> dict[str, Any]:
    """The bundle's own values of the settings a cell's feasibility depends on (encoder, weights, freeze, input)."""
    config = bundle_config(bundle)
    return {k: config[k] for k in CELL_DEFAULT_KEYS if k in config}


YamlValue = Annotated[Any, BeforeValidator(yaml_number)]
GridValues = Annotated[list[YamlValue], BeforeValidator(_grid_values)]
_GRID_BLOCK = TypeAdapter(dict[str, GridValues], config=ConfigDict(coerce_numbers_to_str=True))  # one block
ManifestPath = Annotated[Path, BeforeValidator(_manifest)]
Classes = Annotated[list[Any] | dict[Any, Any], BeforeValidator(_classes)]  # medxfer.engine.data checks the values


# ---- the sections of the YAML


class _Section(BaseModel):
    """A mapping of the spec: typed keys, and an unknown key reported with the allowed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)
    not_mapping: ClassVar[str] = "{where} is not a mapping"
    unknown_keys: ClassVar[str] = "unknown {where} keys {keys} (allowed: {allowed})"
    sort_allowed: ClassVar[bool] = False  # list the allowed keys sorted, not in declaration order
    EXTRAS: ClassVar[tuple[str, ...]] = ()  # keys passed on to the bundle as given (see `extras`)

    @classmethod
    def allowed_keys(cls) -> list[str]:
        """The keys the section may hold, as the YAML spells them."""
        keys = [f.alias or name for name, f in cls.model_fields.items()]
        return sorted(keys) if cls.sort_allowed else keys

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            raise _Misplaced(cls.not_mapping)
        allowed = cls.allowed_keys()
        unknown = sorted(set(raw) - set(allowed), key=str)
        if unknown:
            message = cls.unknown_keys.format(where="{where}", keys=unknown, allowed=", ".join(allowed))
            raise _Misplaced(message + closest_hint(unknown, allowed))
        return cls._prepare(dict(raw))

    @classmethod
    def _prepare(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """The section's keys before field validation (defaults for empty values)."""
        return raw

    def extras(self) -> dict[str, Any]:
        """The section's ``EXTRAS`` the spec gives (an empty value included): settings passed on to the bundle."""
        return {k: getattr(self, k) for k in self.EXTRAS if k in self.model_fields_set}


class DataSection(_Section):
    """``data``: the study's cohort, its label column and the test folds to run."""

    manifest: ManifestPath
    label: str
    folds: list[int] = Field(default=None, validate_default=True)  # resolved: the test folds to run
    modalities: list[str] | None = None
    classes: Classes | None = None
    mask_root: str | None = None

    EXTRAS = ("modalities", "classes", "mask_root")

    @classmethod
    def _prepare(cls, raw: dict[str, Any]) -> dict[str, Any]:
        for key in ("manifest", "label"):
            if not raw.get(key):
                raise SpecError(f"data.{key} is required")
        return raw

    @field_validator("folds", mode="before")
    @classmethod
    def _test_folds(cls, requested: Any, info: ValidationInfo) -> list[int]:
        if "manifest" not in info.data:
            return []  # the manifest's own error is the one reported
        manifest = info.data["manifest"]
        available = _manifest_folds(manifest)
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
        return folds

    @field_validator("mask_root")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return None if value is None else str(Path(value).expanduser().resolve())

    @model_validator(mode="after")
    def _label_column(self) -> DataSection:
        problem = label_problem(self.manifest, self.label)
        if problem:
            raise SpecError(f"data.label: {problem}")
        return self


class StageData(_Section):
    """A pretraining stage's ``data``: its cohort, label column and test fold."""

    sort_allowed = True
    EXTRAS = ("modalities", "classes")

    manifest: ManifestPath
    label: str
    fold: int = 0
    modalities: list[str] | None = None
    classes: Classes | None = None

    def problem(self) -> str | None:
        """The label column or test fold that is not in the manifest (checked once the stage chain is)."""
        problem = label_problem(self.manifest, self.label)
        if problem:
            return f"data.label: {problem}"
        folds = _manifest_folds(self.manifest)
        if self.fold not in folds:
            return f"data.fold {self.fold} is not one of the manifest's folds {folds}"
        return None


class PretrainStage(BaseModel):
    """One pretraining stage, resolved: a weights source the grid can name."""

    model_config = ConfigDict(frozen=True)

    name: str
    manifest: Path
    label: str
    fold: int = 0
    start: str = "scratch"
    train: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)  # modalities, classes


class StageSection(_Section):
    """One entry of ``pretrain``: name, data and optionally from (the start) and train."""

    unknown_keys = "{where}: unknown keys {keys} (allowed: {allowed})"
    sort_allowed = True

    name: str = ""
    data: StageData
    start: str = Field(default="scratch", alias="from")
    train: dict[str, YamlValue] = Field(default_factory=dict)  # lr: 1e-3 as in the study

    @classmethod
    def _prepare(cls, raw: dict[str, Any]) -> dict[str, Any]:
        raw = {k: v for k, v in raw.items() if v not in (None, "")}
        data = raw.get("data")
        if (not isinstance(data, dict) or set(data) - set(StageData.allowed_keys())
                or not data.get("manifest") or not data.get("label")):
            raise SpecError(f"pretrain {raw.get('name', '')}: data needs manifest and label "
                            f"(allowed: {', '.join(StageData.allowed_keys())})")
        return raw

    @model_validator(mode="after")
    def _start_and_settings(self) -> StageSection:
        if not (self.start == "scratch" or ":" in self.start or is_weights_name(self.start)):
            raise SpecError(f"pretrain {self.name}: from {self.start!r} is not a weights source")
        problem = weights_problem(self.start)
        if problem:
            raise SpecError(f"pretrain {self.name}: from: {problem}")
        bad = sorted(set(self.train) & STAGE_RESERVED)
        if bad:
            raise SpecError(f"pretrain {self.name}: train may not set {bad}")
        for key in COUNT_KEYS:
            problem = count_problem(self.train[key]) if key in self.train else None
            if problem:
                raise SpecError(f"pretrain {self.name}: train.{key}: {problem}")
        return self

    def resolve(self, study_train: dict[str, Any]) -> PretrainStage:
        """The stage, with the input settings it does not set taken from the study's ``train``."""
        train = dict(self.train)
        for key in SHARED_SETTINGS:
            if key in study_train:
                train.setdefault(key, study_train[key])
        return PretrainStage(name=self.name, manifest=self.data.manifest, label=self.data.label, fold=self.data.fold,
                             start=self.start, train=train, data=self.data.extras())


class Task2VecSection(_Section):
    """``similarity.task2vec``: the Task2Vec distance of each labelled source task to the study's
    (:mod:`.similarity`); ``false`` turns it off. ``max_items``: images per cohort the Fisher is
    estimated on; ``epochs``: full-batch steps fitting the probe's head; ``labels``: the label
    column of a ``similarity.sources`` cohort (pretraining stages use their own ``data.label``)."""

    not_mapping = "similarity.task2vec is true, false or a mapping: {max_items, epochs, labels}"
    sort_allowed = True

    max_items: int = Field(default=64, ge=2)
    epochs: int = Field(default=100, ge=1)
    labels: dict[str, str] = Field(default_factory=dict)


class SimilaritySection(_Section):
    """``similarity``: the fixed encoder that measures how close each source cohort is to the
    study's. Sources are the pretraining stages' cohorts, plus ``sources`` (weights name →
    manifest of the data those weights were trained on, for imported weights)."""

    not_mapping = "similarity is a mapping: {encoder, weights, image_size, in_channels, sources, task2vec}"
    sort_allowed = True

    encoder: str = "resnet18"
    weights: str = "scratch"
    image_size: int = 128
    in_channels: int = 1
    sources: dict[str, ManifestPath] = Field(default_factory=dict)
    task2vec: Task2VecSection | None = Field(default_factory=Task2VecSection)  # None: off (task2vec: false)

    @classmethod
    def _prepare(cls, raw: dict[str, Any]) -> dict[str, Any]:
        raw = {k: v for k, v in raw.items() if v is not None}
        if raw.get("task2vec") is True:
            raw["task2vec"] = {}
        elif raw.get("task2vec") is False:
            raw["task2vec"] = None
        return raw

    @field_validator("sources", mode="before")
    @classmethod
    def _sources_mapping(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise SpecError("similarity.sources maps a weights name to the manifest of its training data")
        return value

    @model_validator(mode="after")
    def _task2vec_labels(self) -> SimilaritySection:
        labels = self.task2vec.labels if self.task2vec else {}
        unknown = sorted(set(labels) - set(self.sources))
        if unknown:
            raise SpecError(f"similarity.task2vec.labels: {unknown} not among similarity.sources "
                            f"{sorted(self.sources)} (pretraining stages use their own data.label)")
        for name, column in labels.items():
            problem = label_problem(self.sources[name], column)
            if problem:
                raise SpecError(f"similarity.task2vec.labels.{name}: {problem}")
        return self

    def settings(self, stages: list[PretrainStage]) -> dict[str, Any]:
        """The record :mod:`.similarity` reads: encoder and Task2Vec settings, every source cohort
        (with its label column and classes where it has one, for Task2Vec)."""
        labels = self.task2vec.labels if self.task2vec else {}
        sources = {s.name: {"manifest": str(s.manifest), "modalities": s.data.get("modalities"), "label": s.label,
                            "classes": s.data.get("classes")} for s in stages}
        sources.update({name: {"manifest": str(path), "modalities": None, "label": labels.get(name), "classes": None}
                        for name, path in self.sources.items()})
        task2vec = None if self.task2vec is None else {"max_items": self.task2vec.max_items,
                                                       "epochs": self.task2vec.epochs}
        return {"encoder": self.encoder, "weights": self.weights, "image_size": self.image_size,
                "in_channels": self.in_channels, "task2vec": task2vec, "sources": sources}


class ResourcesSection(_Section):
    """``resources``: what each run of the study takes from a machine or cluster — ``gpus_per_run``
    (default 1 when the executor is given GPUs, else 0), ``cpus_per_run`` (default: the cores divided
    among the runs in parallel), ``num_workers`` (data loader processes per run; ``auto`` or a number;
    default the bundle's), ``retries`` (re-runs of a run whose worker was lost; default 2). Where and how
    fast runs compute, not what: left out of the config hash."""

    not_mapping = "resources is a mapping: {gpus_per_run, cpus_per_run, num_workers, retries}"

    gpus_per_run: float | None = Field(default=None, ge=0)
    cpus_per_run: int | None = Field(default=None, ge=1)
    num_workers: int | Literal["auto"] | None = None
    retries: int = Field(default=2, ge=0)

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise _Misplaced(f"{{where}} is 'auto' or a number of loader processes (0 or more), not {value!r}")


class TrackingSection(_Section):
    """``tracking``: the MLflow store the study's runners share (``uri``: a tracking server, a database)
    and where its artifacts go (``artifact_root``: shared by every runner; never the current folder of
    whichever process created the experiment). Each overrides ``MLFLOW_TRACKING_URI`` /
    ``MEDXFER_ARTIFACT_ROOT``; left out of the config hash."""

    not_mapping = "tracking is a mapping: {uri, artifact_root}"

    uri: str | None = None
    artifact_root: str | None = None


class CompareSection(_Section):
    """One entry of ``compare``: a report section comparing the values of grid key ``by`` on the runs'
    test metric, pooled over the grid keys ``pool`` (and folds and seeds), per combination of the other
    grid keys; e.g. ``{by: weights, pool: [encoder, freeze]}`` (:mod:`.report` reads it from the parent run)."""

    unknown_keys = "{where}: unknown keys {keys} (allowed: {allowed})"

    by: str
    pool: list[str] = Field(default_factory=list)

    @field_validator("pool", mode="before")
    @classmethod
    def _key_list(cls, value: Any) -> Any:
        return [] if value is None else [value] if isinstance(value, str) else value


class SpecDocument(_Section):
    """A study spec as written (the YAML mapping), validated. Needs ``context={"source": path}``
    for manifests relative to the spec's folder; :meth:`resolve` gives the :class:`StudySpec`."""

    not_mapping = "a study spec is a mapping with name, data, bundle, grid"
    unknown_keys = "unknown top-level keys {keys} (allowed: {allowed})"

    name: str = Field(default="", validate_default=True)
    data: DataSection = Field(default_factory=dict, validate_default=True)
    bundle: str = Field(default="classification", validate_default=True)
    grid: dict[str, GridValues] = Field(default_factory=dict, validate_default=True)  # each key's values
    exclude: list[dict[str, YamlValue]] = Field(default_factory=list)  # partial cells removed from the grid
    blocks: list[dict[str, list[Any]]] = Field(default_factory=list)  # `grid` as a list (not a key: _prepare)
    seeds: list[int] = Field(default_factory=lambda: [0])
    train: dict[str, YamlValue] = Field(default_factory=dict)
    pretrain: list[StageSection] = Field(default_factory=list)
    similarity: SimilaritySection | None = None
    compare: list[CompareSection] = Field(default_factory=list)  # pooled comparisons of the report
    resources: ResourcesSection = Field(default_factory=dict, validate_default=True)  # not hashed
    tracking: TrackingSection = Field(default_factory=dict, validate_default=True)  # not hashed

    @field_validator("compare", mode="before")
    @classmethod
    def _compare_list(cls, value: Any) -> Any:
        if not isinstance(value, (dict, list)):
            raise SpecError("compare is a list of mappings {by: grid key, pool: [grid keys]}")
        return [value] if isinstance(value, dict) else value

    @field_validator("compare")
    @classmethod
    def _compare_grid_keys(cls, entries: list[CompareSection], info: ValidationInfo) -> list[CompareSection]:
        grid = info.data.get("grid") or {}
        for i, entry in enumerate(entries):
            if entry.by not in grid or len(grid[entry.by]) < 2:
                raise SpecError(f"compare[{i}].by: {entry.by!r} is not a grid key with two or more values "
                                f"(grid keys: {', '.join(grid)})")
            bad = [k for k in entry.pool if k not in grid or k == entry.by]
            if bad or len(set(entry.pool)) != len(entry.pool):
                raise SpecError(f"compare[{i}].pool: {bad or entry.pool} must be distinct grid keys other than by "
                                f"(grid keys: {', '.join(grid)})")
        return entries

    @classmethod
    def allowed_keys(cls) -> list[str]:
        """The top-level keys of a spec (``blocks`` is ``grid`` written as a list, not a key of its own)."""
        return [k for k in super().allowed_keys() if k != "blocks"]

    @classmethod
    def _prepare(cls, raw: dict[str, Any]) -> dict[str, Any]:
        raw = {k: v for k, v in raw.items() if v is not None}  # `key:` with no value is the default
        if isinstance(raw.get("grid"), list):  # blocks: `grid` holds each key's values over all of them
            blocks = _grid_blocks(raw["grid"])
            raw["grid"] = _grid_union(blocks)
            raw["blocks"] = blocks if len(blocks) > 1 else []  # one block is the grid as a mapping
        if raw.get("similarity") is False:
            del raw["similarity"]
        elif raw.get("similarity") is True:
            raw["similarity"] = {}
        return raw

    @field_validator("name")
    @classmethod
    def _experiment_name(cls, name: str) -> str:
        if not NAME_PATTERN.match(name):
            raise SpecError(f"name {name!r}: letters, digits, '.', '_' and '-' only (it names the MLflow experiment)")
        return name

    @field_validator("bundle")
    @classmethod
    def _bundle_exists(cls, bundle: str) -> str:
        bundle = bundle or "classification"
        try:
            bundle_path(bundle)
        except BundleError as exc:
            raise SpecError(str(exc)) from None
        return bundle

    @field_validator("grid", mode="before")
    @classmethod
    def _grid_mapping(cls, grid: Any) -> Any:
        if not isinstance(grid, dict) or not grid:
            raise SpecError("grid is required: a mapping of bundle keys to lists of values (or a list of such "
                            "mappings, blocks whose products together are the grid)")
        return grid

    @field_validator("exclude", mode="before")
    @classmethod
    def _partial_cells(cls, entries: Any) -> Any:
        """A list of non-empty mappings; their keys and values are checked against the grid (:func:`sparse_grid`)."""
        if not isinstance(entries, list):
            raise SpecError("exclude is a list of partial cells, each a mapping of grid keys to one value each "
                            "(e.g. [{freeze: none, lr: 1e-2}])")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not entry:
                raise SpecError(f"exclude[{i}] is not a mapping of grid keys to one value each "
                                "(e.g. {freeze: none, lr: 1e-2})")
        return entries

    @field_validator("grid", "train")
    @classmethod
    def _bundle_settings(cls, keys: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        section = info.field_name
        bad = sorted(set(keys) & RESERVED)
        if bad:
            raise SpecError(f"{section} may not set {bad}: the study sets them per run (folds and seeds have "
                            "their own keys)")
        if "bundle" in info.data:  # else the bundle's own error is the one reported
            config_keys = _bundle_keys(info.data["bundle"])
            unknown = sorted(set(keys) - config_keys)
            if unknown:
                raise SpecError(f"{section}: {unknown} are not keys of the {info.data['bundle']} bundle"
                                + closest_hint(unknown, config_keys))
        return keys

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_list(cls, seeds: Any) -> Any:
        return seeds if isinstance(seeds, list) else [seeds]

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise SpecError(f"seeds must be a non-empty list of distinct integers >= 0, not {seeds}")
        return seeds

    @field_validator("pretrain", mode="before")
    @classmethod
    def _stage_list(cls, stages: Any) -> Any:
        if not isinstance(stages, list):
            raise SpecError("pretrain is a list of stages, each with name, data and optionally from and train")
        return stages

    @field_validator("pretrain")
    @classmethod
    def _stage_chain(cls, stages: list[StageSection]) -> list[StageSection]:
        names = [s.name for s in stages]
        for i, stage in enumerate(stages):
            if not is_weights_name(stage.name) or stage.name == "scratch" or stage.name in names[:i]:
                raise SpecError(f"pretrain[{i}]: name {stage.name!r} must be a new weights name "
                                "(letters, digits, . _ -)")
            if stage.start in names[i + 1:] or stage.start == stage.name:
                raise SpecError(f"pretrain {stage.name}: from {stage.start!r} must be an earlier stage (no cycles)")
        return stages

    @model_validator(mode="after")
    def _one_place_each(self) -> SpecDocument:
        both = sorted(set(self.grid) & set(self.train))
        if both:
            raise SpecError(f"{both} are in both grid and train: put each key in one place")
        if self.similarity is not None and not self.pretrain and not self.similarity.sources:
            raise SpecError("similarity: no source cohort (declare pretrain stages or similarity.sources)")
        return self

    @model_validator(mode="after")
    def _grid_values_exist(self) -> SpecDocument:
        """What every run would otherwise find out on its own, after the parent run exists: encoders,
        freeze policies, weights sources, epochs and batch sizes of the whole grid (:mod:`.checks`)."""
        stages = [s.name for s in self.pretrain]
        task = bundle_task(self.bundle)
        checks = {"encoder": lambda v: encoder_problem(v, task), "freeze": freeze_problem,
                  "weights": lambda v: weights_problem(v, stages), **{k: count_problem for k in COUNT_KEYS}}
        grids = [(f"grid[{b}]", block) for b, block in enumerate(self.blocks)] or [("grid", self.grid)]
        for section, values in (*grids, ("train", {k: [v] for k, v in self.train.items()})):
            for key, check in checks.items():
                for i, value in enumerate(values.get(key, [])):
                    problem = check(value)
                    if problem:
                        raise SpecError(f"{section}.{key}{f'[{i}]' if section != 'train' else ''}: {problem}")
        resolved = {s.name: s.resolve(self.train) for s in self.pretrain}
        for section, block in grids:  # each block: input and in_channels cross within a block only
            problem = slice_settings_problem(block, self.train, {name: s.train for name, s in resolved.items()})
            if problem:
                raise SpecError(re.sub(r"(?<![\w.\]])grid\.", f"{section}.", problem))
        sparse = self.sparse_grid()
        if sparse.problem:
            raise SpecError(sparse.problem)
        defaults = cell_defaults(self.bundle)
        users = stage_encoders({s.name: s.start for s in self.pretrain},
                               [{**self.train, **cell} for cell in sparse.kept], defaults)
        for stage in self.pretrain:
            inherited = [k for k in resolved[stage.name].train if k not in stage.train]
            problem = stage_problem(stage.name, resolved[stage.name].train, users[stage.name], inherited)
            if problem:
                raise SpecError(problem)
        for note in sparse.notes():
            log.warning(note)
        if self.similarity is not None:
            for key, check in (("encoder", similarity_encoder_problem), ("weights", weights_problem)):
                problem = check(getattr(self.similarity, key))
                if problem:
                    raise SpecError(f"similarity.{key}: {problem}")
        for stage in self.pretrain:
            problem = stage.data.problem()
            if problem:
                raise SpecError(f"pretrain {stage.name}: {problem}")
        problem = self.unimported_weights(stages, sparse.kept)  # last: the cells that run are known
        if problem:  # listed now (a dry run plans before the weights are imported); a real run refuses it
            log.warning(problem)
        return self

    @model_validator(mode="after")
    def _no_test_patients_in_stages(self) -> SpecDocument:
        """No stage a weights source uses (its chain included) may train on the target's test patients
        (:mod:`.leakage`); runs after the stages' data are checked."""
        target = TargetCohort.of(self.data.manifest, self.data.label, self.data.folds, bundle_task(self.bundle),
                                 self.data.extras(), self.train, self.grid)
        stages = [StageCohort.of(s.name, s.start, s.data.manifest, s.data.label, s.data.fold, s.data.extras(),
                                 s.train) for s in self.pretrain]
        check = pretraining_leaks(target, stages, [*self.grid.get("weights", []), self.train.get("weights")])
        for note in check.notes:
            log.warning(note)
        if check.problem:
            raise SpecError(check.problem)
        return self

    def sparse_grid(self) -> SparseGrid:
        """The grid's cells that run, and those left out (:func:`.checks.sparse_grid`)."""
        return sparse_grid(bundle_task(self.bundle), self.blocks or self.grid, self.train, cell_defaults(self.bundle),
                           self.exclude)

    def unimported_weights(self, stages: list[str], kept: list[dict[str, Any]]) -> str | None:
        """Imported weights names against the registry, before anything runs: every cell that runs (``kept``:
        :meth:`sparse_grid`'s) needs its name imported for its encoder, and every pretraining stage its start
        for each encoder it trains (:func:`.checks.registry_problem`: one line listing them all, None when
        every name is imported). A warning when the spec is read; ``study run`` refuses to start with it."""
        fixed = {**cell_defaults(self.bundle), **self.train}
        cells = [{**fixed, **cell} for cell in kept]
        starts = {s.name: s.start for s in self.pretrain}
        pairs = [(str(c.get("encoder")), str(c.get("weights"))) for c in cells]
        pairs += [(encoder, starts[stage]) for stage, encoders in stage_encoders(starts, cells, fixed).items()
                  for encoder in encoders]
        return registry_problem((encoder, name) for encoder, name in pairs
                                if encoder not in PLAIN_SEGMENTERS  # scratch only: never load imported weights
                                and name != "scratch" and ":" not in name and name not in stages)

    def resolve(self, source: Path | None = None, text: str = "") -> StudySpec:
        """The :class:`StudySpec` of this document (read from ``source``, whose YAML is ``text``)."""
        stages = [stage.resolve(self.train) for stage in self.pretrain]
        stage_names = [s.name for s in self.pretrain]
        unimported = self.unimported_weights(stage_names, self.sparse_grid().kept)
        return StudySpec(name=self.name, bundle=self.bundle, manifest=self.data.manifest, label=self.data.label,
                         unimported_weights=unimported or "",
                         folds=self.data.folds, grid=self.grid, blocks=self.blocks, exclude=self.exclude,
                         seeds=self.seeds, train=self.train, data=self.data.extras(), pretrain=stages,
                         similarity=self.similarity.settings(stages) if self.similarity else None,
                         compare=[c.model_dump() for c in self.compare], resources=self.resources.model_dump(),
                         tracking=self.tracking.model_dump(), source=source, text=text)


# ---- the resolved spec


class StudySpec(BaseModel):
    """A parsed, validated study spec: what the grid expands and the runner runs."""

    name: str
    bundle: str
    manifest: Path
    label: str
    folds: list[int]
    grid: dict[str, list[Any]]  # each grid key's values (over every block)
    blocks: list[dict[str, list[Any]]] = Field(default_factory=list)  # the products of a grid of blocks; [] for one
    exclude: list[dict[str, Any]] = Field(default_factory=list)  # partial cells removed from the grid
    seeds: list[int] = Field(default_factory=lambda: [0])
    train: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)  # modalities, classes, mask_root
    pretrain: list[PretrainStage] = Field(default_factory=list)
    similarity: dict[str, Any] | None = None  # dataset similarity of source cohorts to this one
    compare: list[dict[str, Any]] = Field(default_factory=list)  # [{by, pool}]: the report's pooled comparisons
    # {gpus_per_run, cpus_per_run, num_workers, retries} and {uri, artifact_root}: where runs compute and are
    # tracked, not what they compute (neither is in the config hash nor the spec hash)
    resources: dict[str, Any] = Field(default_factory=lambda: ResourcesSection().model_dump())
    tracking: dict[str, Any] = Field(default_factory=lambda: TrackingSection().model_dump())
    # the (encoder, weights name) pairs of cells that run whose weights are not imported, as one line ("" when
    # all are): study run refuses to start with it, a dry run lists it
    unimported_weights: str = ""
    source: Path | None = None
    text: str = ""

    @property
    def experiment(self) -> str:
        """The MLflow experiment of the study (``medxfer/<name>``)."""
        return study_experiment(self.name)

    @property
    def stages(self) -> dict[str, PretrainStage]:
        """Pretraining stages by name (each a weights source of the grid)."""
        return {s.name: s for s in self.pretrain}

    @property
    def task(self) -> str:
        """``segmentation`` for a segmentation bundle, else ``classification``."""
        return bundle_task(self.bundle)

    def sparse_grid(self) -> SparseGrid:
        """The grid's cells that run and those left out: combinations that cannot run (:func:`.checks.sparse_grid`)."""
        return sparse_grid(self.task, self.blocks or self.grid, self.train, cell_defaults(self.bundle), self.exclude)

    def bundle_defaults(self) -> dict[str, Any]:
        """The bundle's own values of the run-name keys (used when the grid does not set them)."""
        config = bundle_config(self.bundle)
        return {k: config.get(k) for k in NAME_KEYS}

    def spec_hash(self) -> str:
        """A hash of what the spec asks for (recorded on the parent run); a grid of one product hashes as before
        blocks and ``exclude`` existed."""
        shape = {k: v for k, v in (("blocks", self.blocks), ("exclude", self.exclude)) if v}
        return stable_digest({"bundle": self.bundle, "label": self.label, "folds": self.folds, "grid": self.grid,
                              **shape, "seeds": self.seeds, "train": self.train, "data": self.data,
                              "pretrain": [dict(s) for s in self.pretrain]}, SPEC_HASH_LENGTH)


# ---- reading


def _where(loc: tuple[int | str, ...]) -> str:
    """``("pretrain", 0, "data")`` → ``pretrain[0].data``."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _one_line(exc: ValidationError, within: tuple[int | str, ...] = ()) -> str:
    """The first problem of a validation, as one line: the validators' own message, or pydantic's with where
    (``within``: where the validated value lies in the spec, e.g. ``("grid", 1)`` for a block)."""
    error = exc.errors(include_url=False)[0]
    where = _where((*within, *error["loc"])) or "spec"
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _Misplaced):
        return cause.at(where)
    if isinstance(cause, SpecError):
        return str(cause)
    if error["type"] == "missing":
        return f"{where} is required"
    return f"{where}: {cause if isinstance(cause, Exception) else error['msg']}"


def _data_only(value: Any, where: str = "") -> None:
    """A spec is data: the first string MONAI's config parser would evaluate or resolve (``$…``,
    ``@…``, ``%…``, ``#``) or a ``_target_`` key is a :class:`SpecError` naming where it is."""
    found = config_data_problem(value)
    if found:
        place = f"{where}{found[0]}".lstrip(".") or "spec"
        raise SpecError(f"{place}: {found[1]}; a spec holds data, never code")


def parse_spec(raw: Any, source: Path | None = None, text: str = "") -> StudySpec:
    """Validate a spec mapping (what ``yaml.safe_load`` returns) into a :class:`StudySpec`.

    Nothing in ``raw`` is evaluated, and a value MONAI would evaluate is refused (:func:`_data_only`)."""
    _data_only(raw)
    try:
        document = SpecDocument.model_validate(raw, context={"source": source})
    except ValidationError as exc:
        raise SpecError(_one_line(exc)) from None
    spec = document.resolve(source, text)
    # paths resolved from the spec's folder reach the bundles too ("#" in a folder name)
    _data_only(str(spec.manifest), "data.manifest")
    _data_only(spec.data, "data")
    for i, stage in enumerate(spec.pretrain):
        _data_only(str(stage.manifest), f"pretrain[{i}].data.manifest")
    return spec


class _DuplicateKey(yaml.YAMLError):
    """A key given twice in one YAML mapping (YAML itself keeps the last one silently)."""


class _SpecLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key repeated in one mapping (``grid:`` twice)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` then a key overriding one of them is YAML's own rule
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the constructor's own error is the one reported
                break
            if duplicate:
                raise _DuplicateKey(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice in one "
                                    "mapping (YAML would keep only the last); remove one")
        return super().construct_mapping(node, deep=deep)


def load_spec(path: str | os.PathLike) -> StudySpec:
    """Read and validate a study spec YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
        raw = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader that also refuses repeated keys
    except OSError as exc:
        raise SpecError(f"{path}: {exc.strerror or exc}") from None
    except _DuplicateKey as exc:
        raise SpecError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return parse_spec(raw, source=path.resolve(), text=text)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
