"""Plan-time checks of a study spec's values: what every run of the grid would otherwise find out
one by one, after the study's parent run exists.

Each check returns the problem as text (None when the value is fine); :mod:`.spec` raises it as
one :class:`~medxfer.study.spec.SpecError` line that names the key. Nothing here loads weights or
opens the tracking store:

- an encoder is a name of the encoder registry; a freeze policy parses (``none``, ``all``, ``top:K``,
  ``top_layers:K``; a ``top_layers`` cell of an encoder without Keras layers cannot exist);
- a weights source is ``scratch``, a pretraining stage, ``SCHEME:REF`` with a registered scheme
  (``file:PATH`` must be a readable file; ``run:RUN_ID`` is looked up when its run starts, where
  the store is), or an imported name; every cell that runs (and every pretraining stage, for the encoders it
  trains) finds its imported name in the registry for its encoder (:func:`registry_problem`: weights that exist
  for some encoders only, RadImageNet has no ResNet18, need those cells left out with ``exclude`` or blocks);
- the label column is a column of its manifest; ``epochs`` and ``batch_size`` are whole numbers ≥ 1;
- the volume / cine settings ``input``, ``slices`` and ``aggregate`` parse (:mod:`medxfer.engine.slices`)
  wherever the spec sets them (``train``, each ``grid`` value, each pretraining stage's ``train``),
  and no cell combines ``input: 2.5d`` with an ``in_channels`` other than 3
  (:func:`slice_settings_problem`); ``roi_size`` is three multiples of 32 and ``spacing`` three
  positive numbers (native 3D, ``input: 3d``);
- every cell's encoder fits its input (:func:`cell_problems`: a 3D network needs ``input: 3d``, a 2D
  one refuses it — :func:`medxfer.engine.bundles.encoder_dims_problem`), a plain 3D segmenter
  (``unet_3d``, ``segresnet_3d``) trains from scratch with ``freeze: none``, and ``slices`` /
  ``aggregate`` (2D samples of volumes) and ``segments`` (label values of 3D masks) go with the input
  they belong to. A combination that the spec fixes (a grid value with a ``train`` setting) is an error
  naming both places; one that only a crossing of two grid keys makes (``encoder: [resnet18_3d,
  unet_3d]`` × ``weights: [scratch, imagenet]``) is a cell that cannot exist and is left out of the grid,
  as in a sparse grid (:func:`sparse_grid`; ``study run`` says which), unless a grid value is left with
  no cell at all;
- each ``exclude`` entry (a partial cell removed from the grid) names grid keys and values the grid lists,
  and matches at least one cell (:func:`exclude_problem`): a typo would otherwise run what it meant to remove.
"""
from __future__ import annotations

import csv
import json
import itertools
import math
import os
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Iterable

from ..core.bundle_files import closest_hint
from ..core.hashing import canonical_numbers
from ..engine import run_weights  # noqa: F401 - registers the run: weights scheme
from ..engine.bundles import encoder_dims_problem, encoder_problem, encoder_task_problem  # noqa: F401 - encoder_problem: the study's too
from ..engine.slices import SliceSettingError, check_aggregate, check_channels, check_input, check_slices
from ..models.encoders import ARCHS
from ..models.segmenter import PLAIN_SEGMENTERS, segmenter_dims
from ..models.freeze import parse_policy, top_layers_problem
from ..models.weights import imported_record, is_weights_name, list_weights, source_schemes
from ..models.weights.sources import known_sources
from ..transforms.pipelines3d import check_roi_size

# Settings that count something: a whole number >= 1
COUNT_KEYS = ("epochs", "batch_size")
# Settings of volumes / cines as 2D samples (medxfer.engine.slices), in the order they are checked
SLICE_KEYS = ("input", "slices", "aggregate")
WEIGHTS_FORMS = "scratch, an imported NAME, file:PATH, run:RUN_ID or a pretrain stage"


def similarity_encoder_problem(value: Any) -> str | None:
    """The dataset-similarity network: a registry encoder of 2D images (it pools features of 2D samples)."""
    return encoder_problem(value, "classification") or encoder_dims_problem(value, "2d")


def freeze_problem(value: Any, encoder: str | None = None) -> str | None:
    """A freeze policy that does not parse (``none``, ``all``, ``top:K``, ``top_layers:K`` with K >= 1),
    or, given the ``encoder``, ``top_layers:K`` for one without a Keras layer list (``resnet50``)."""
    try:
        kind, _ = parse_policy(str(value))
    except ValueError as exc:
        return str(exc)
    if kind == "top_layers" and encoder is not None and encoder in ARCHS:
        return top_layers_problem(encoder)
    return None


def weights_problem(value: Any, stages: Iterable[str] = ()) -> str | None:
    """A weights source that cannot be valid whatever the registry holds: an unregistered scheme,
    a ``file:`` that is not a readable file, a string that is no weights source at all."""
    if not isinstance(value, str):
        return f"{value!r} is not a weights source ({WEIGHTS_FORMS})"
    if value == "scratch" or value in set(stages):
        return None
    scheme, colon, reference = value.partition(":")
    if colon:
        if scheme not in source_schemes():
            return f"weights {value!r}: unknown scheme {scheme + ':'!r}; known sources: {known_sources()}"
        if not reference:
            return f"weights {value!r} names no {scheme} reference"
        if scheme == "file":
            path = Path(reference).expanduser()
            if not path.is_file():
                return f"weights {value!r}: no such file {path}"
            if not os.access(path, os.R_OK):
                return f"weights {value!r}: {path} is not readable"
        return None
    if not is_weights_name(value):
        return f"{value!r} is not a weights source ({WEIGHTS_FORMS})"
    return None


def count_problem(value: Any) -> str | None:
    """``epochs`` / ``batch_size``: a whole number >= 1 (``30.0`` is 30, as in the config hash)."""
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or value < 1:
        return f"{value!r} is not a whole number >= 1"
    return None


def manifest_columns(manifest: Path) -> list[str]:
    """The header of a manifest CSV."""
    with open(manifest, newline="") as f:
        return next(csv.reader(f), [])


def label_problem(manifest: Path, label: str) -> str | None:
    """A label column that is not a column of ``manifest``."""
    columns = manifest_columns(manifest)
    if label in columns:
        return None
    return (f"{label!r} is not a column of {manifest} (columns: {', '.join(columns)})"
            + closest_hint([label], columns))


def _imported_archs() -> dict[str, list[str]]:
    """{imported name: the encoders it is imported for}, from the registry's records."""
    try:
        records = list_weights()
    except (OSError, ValueError, TypeError):  # an unreadable record: the run that needs it says so
        return {}
    out: dict[str, list[str]] = {}
    for record in records:
        out.setdefault(record.name, []).append(record.arch)
    return out


def registry_problem(pairs: Iterable[tuple[str, str]]) -> str | None:
    """The (encoder, imported weights name) pairs that the registry has no record of, as one line: every
    missing pair, what each name is imported for instead (or that it is imported for none, with the closest
    imported name), and the ``medxfer weights import`` command that fixes the first. Records only, no weights
    are read. ``pairs`` are those of the cells that run (a cell left out or excluded needs nothing); None when
    every pair is imported."""
    missing: dict[str, list[str]] = {}  # name → encoders it lacks, in the order the cells name them
    for encoder, name in dict.fromkeys(pairs):
        if imported_record(name, encoder) is None:
            missing.setdefault(name, []).append(encoder)
    if not missing:
        return None
    imported = _imported_archs()
    parts = []
    for name, encoders in missing.items():
        elsewhere = imported.get(name)
        why = (f"imported for {', '.join(elsewhere)} only" if elsewhere
               else f"imported for no encoder{closest_hint([name], imported)}")
        parts.append(f"{name!r} for {', '.join(encoders)} ({why})")
    name, encoders = next(iter(missing.items()))
    return (f"weights not imported: {'; '.join(parts)}; import each before the study runs (medxfer weights import "
            f"FILE --name {name} --arch {encoders[0]}), or leave those cells out of the grid (exclude)")


def _slice_problem(key: str, check: Callable[[Any], Any], value: Any) -> str | None:
    """``check(value)``'s error without its leading ``key: `` (the caller names the key and its place)."""
    try:
        check(value)
    except SliceSettingError as exc:
        return str(exc).removeprefix(f"{key}: ")
    return None


def input_problem(value: Any) -> str | None:
    """An ``input`` that is not ``2d`` / ``2.5d`` (``3d`` belongs to the native 3D bundles)."""
    return _slice_problem("input", check_input, value)


def slices_problem(value: Any) -> str | None:
    """A ``slices`` that does not parse: ``all``, ``center``, ``every:K``, ``range:LO-HI``, ``labelled`` or null."""
    return _slice_problem("slices", check_slices, value)


def aggregate_problem(value: Any) -> str | None:
    """An ``aggregate`` that is not ``mean``, ``max`` or ``top:K``."""
    return _slice_problem("aggregate", check_aggregate, value)


def roi_size_problem(value: Any) -> str | None:
    """A ``roi_size`` that is not three sizes, each a multiple of 32 (null: the weights' ROI, else 96³)."""
    if value is None:
        return None
    try:
        check_roi_size(value)
    except (TypeError, ValueError) as exc:
        return str(exc).removeprefix("roi_size ") if isinstance(exc, ValueError) else f"{value!r}: three sizes"
    return None


def spacing_problem(value: Any) -> str | None:
    """A ``spacing`` that is not three positive voxel sizes in mm (null: the weights' spacing, else the volume's)."""
    if value is None:
        return None
    try:
        sizes = [float(v) for v in value]
    except (TypeError, ValueError):
        sizes = []
    if len(sizes) != 3 or isinstance(value, str) or not all(math.isfinite(v) and v > 0 for v in sizes):
        return f"{value!r} is not three positive voxel sizes in mm (e.g. [1.0, 1.0, 1.5])"
    return None


SLICE_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "input": input_problem, "slices": slices_problem, "aggregate": aggregate_problem,
    "roi_size": roi_size_problem, "spacing": spacing_problem}


def channels_problem(input_value: Any, in_channels: Any) -> str | None:
    """``in_channels`` a cell with ``input_value`` cannot run with: 2.5D samples are three channels."""
    problem = count_problem(in_channels)
    if problem:
        return problem
    try:
        check_channels(input_value, int(in_channels))
    except SliceSettingError as exc:
        return str(exc)
    return None


def _places(section: str, key: str, values: Sequence[Any], listed: bool) -> list[tuple[str, Any]]:
    """(where, value) of each value of ``section.key``: ``grid.slices[1]`` or ``train.slices``."""
    return [(f"{section}.{key}[{i}]" if listed else f"{section}.{key}", v) for i, v in enumerate(values)]


def _settings_problem(prefix: str, grid: Mapping[str, Sequence[Any]], train: Mapping[str, Any]) -> str | None:
    """The first problem of the slice settings of one grid and its fixed ``train`` settings."""
    for key, check in SLICE_CHECKS.items():
        for where, value in [*_places("grid", key, grid.get(key, []), True),
                             *_places("train", key, [train[key]] if key in train else [], False)]:
            problem = check(value)
            if problem:
                return f"{prefix}{where}: {problem}"
    inputs = (_places("grid", "input", grid["input"], True) if "input" in grid
              else [("train.input", train.get("input"))])
    channels = (_places("grid", "in_channels", grid["in_channels"], True) if "in_channels" in grid
                else _places("train", "in_channels", [train["in_channels"]] if "in_channels" in train else [], False))
    for (input_where, input_value), (where, value) in itertools.product(inputs, channels):
        problem = channels_problem(input_value, value)
        if problem:
            with_input = f" with {input_where}" if input_where.startswith("grid.") else ""
            return f"{prefix}{where}{with_input}: {problem}"
    return None


def slice_settings_problem(grid: Mapping[str, Sequence[Any]], train: Mapping[str, Any],
                           stages: Mapping[str, Mapping[str, Any]] | None = None) -> str | None:
    """The first ``input`` / ``slices`` / ``aggregate`` value of a study that no run could use, as
    one line naming its place (``grid.slices[1]: 'range:0.8-0.2': range:LO-HI needs …``), or None.

    ``grid`` maps keys to their lists of values, ``train`` holds the fixed settings, ``stages`` maps
    each pretraining stage's name to its ``train`` settings as the stage runs with them (the study's
    shared settings included). Every cell's ``input`` is checked against its ``in_channels`` where
    the spec sets one (unset, the bundle takes 3 for 2.5D)."""
    problem = _settings_problem("", grid, train)
    if problem:
        return problem
    for name, settings in (stages or {}).items():
        problem = _settings_problem(f"pretrain {name}: ", {}, settings)
        if problem:
            return problem
    return None


# ---- cells: settings that cannot go together (native 3D)


@dataclass(frozen=True)
class CellProblem:
    """Why one cell (its settings: bundle defaults, ``train``, grid values) cannot run: ``reason`` (one line),
    ``keys`` (the settings that clash, the one to change first) and ``note`` (the clash without the values,
    for the plan's list of cells left out)."""

    reason: str
    keys: tuple[str, ...]
    note: str


def _mode(value: Any) -> str | None:
    try:
        return check_input(value)
    except SliceSettingError:
        return None  # the value's own check reports it


def cell_problems(task: str, settings: Mapping[str, Any]) -> list[CellProblem]:
    """Why a cell with ``settings`` (all of them: bundle defaults, ``train``, the cell's grid values) cannot
    run, first to last; empty when it can."""
    encoder, mode = settings.get("encoder"), _mode(settings.get("input"))
    problems: list[CellProblem] = []
    if mode is None or not isinstance(encoder, str):
        return problems
    dims = encoder_dims_problem(encoder, mode, task)
    if dims:
        needs = "input: 3d" if segmenter_dims(encoder) == 3 else "input: 2d or 2.5d"
        problems.append(CellProblem(dims, ("encoder", "input"), f"a {segmenter_dims(encoder)}D network needs {needs}"))
    if encoder in PLAIN_SEGMENTERS:
        for key, allowed in (("weights", "scratch"), ("freeze", "none")):
            value = settings.get(key, allowed)
            if str(value) != allowed:
                problems.append(CellProblem(
                    f"{encoder} is a plain MONAI baseline trained from scratch: weights scratch and freeze none only "
                    f"(not {key} {value!r}); pretrained sources and freezing go with a registry encoder "
                    "(e.g. resnet18_3d)", ("encoder", key),
                    f"{encoder} is a plain MONAI baseline: weights scratch and freeze none only"))
    freeze = settings.get("freeze")
    if isinstance(freeze, str) and freeze.strip().lower().startswith("top_layers:"):
        problem = top_layers_problem(encoder)
        if problem:
            problems.append(CellProblem(problem, ("encoder", "freeze"),
                                        "top_layers:K counts Keras layers: encoders with a Keras network only"))
    if mode == "3d":
        for key in ("slices", "aggregate"):
            if settings.get(key) is not None:
                problems.append(CellProblem(
                    f"{key} {settings[key]!r} cuts volumes into 2D samples; input: 3d feeds whole volumes to a 3D "
                    f"network: leave {key} unset", (key, "input"), f"{key} does not apply with input: 3d"))
    elif settings.get("segments") is not None:
        problems.append(CellProblem(
            f"segments name the label values of mask volumes for input: 3d; input: {mode} segments one "
            "foreground: leave segments unset", ("segments", "input"), "segments are for input: 3d"))
    return problems


def _place(key: str, cell: Mapping[str, Any], grid: Mapping[str, Sequence[Any]], train: Mapping[str, Any],
           section: str = "grid") -> str | None:
    """Where the spec sets ``key`` for ``cell``: ``grid.encoder[1]`` (``grid[2].encoder[1]`` in the third
    block of a grid of blocks: ``section``), ``train.input``, or None (bundle default)."""
    if key in grid:
        return f"{section}.{key}[{list(grid[key]).index(cell[key])}]"
    return f"train.{key}" if key in train else None


def _where(problem: CellProblem, cell: Mapping[str, Any], grid: Mapping[str, Sequence[Any]],
           train: Mapping[str, Any], section: str = "grid") -> str:
    """``grid.encoder[1] with train.weights``: the places of the clash's keys that the spec sets (a key left
    to the bundle's default has none), the key to change first first."""
    named = [p for p in (_place(k, cell, grid, train, section) for k in problem.keys) if p]
    return " with ".join(named) if named else problem.keys[0]


@dataclass
class SparseGrid:
    """A grid's cells as :func:`sparse_grid` sorts them: those that run, those left out (with why), those an
    ``exclude`` entry removes, those a later block repeats (``(cell, first block, repeating block)``: run once),
    and the first clash or ``exclude`` entry the spec itself gets wrong (an error)."""

    kept: list[dict[str, Any]]
    left_out: list[tuple[dict[str, Any], CellProblem]]
    problem: str | None = None
    excluded: list[dict[str, Any]] = field(default_factory=list)
    repeated: list[tuple[dict[str, Any], int, int]] = field(default_factory=list)

    def notes(self) -> list[str]:
        """Lines for the plan and the report: how many cells are left out, and which clashes they are; which
        cells more than one block names (each runs once)."""
        lines = []
        if self.left_out:
            groups: dict[tuple, list[str]] = {}
            for cell, problem in self.left_out:
                subject, *others = problem.keys
                key = (subject, _text(cell[subject]), tuple(others), problem.note)
                for other in others:
                    groups.setdefault(key, [])
                    if _text(cell[other]) not in groups[key]:
                        groups[key].append(_text(cell[other]))
            parts = [f"{subject}={value} with {'/'.join(others)}={', '.join(values)} ({note})"
                     for (subject, value, others, note), values in groups.items()]
            total = len(self.kept) + len(self.left_out)
            lines.append(f"grid: {len(self.left_out)} of {total} cells left out, combinations that cannot run "
                         "(a sparse grid): " + "; ".join(parts))
        if self.repeated:
            shown = [f"{_cell_text(cell)} (grid[{first}], grid[{again}])" for cell, first, again in self.repeated[:3]]
            more = f"; and {len(self.repeated) - 3} more" if len(self.repeated) > 3 else ""
            lines.append(f"grid: {len(self.repeated)} cells are in more than one block and run once: "
                         + "; ".join(shown) + more)
        return lines


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _cell_text(cell: Mapping[str, Any]) -> str:
    """``encoder=resnet50, lr=0.001``."""
    return ", ".join(f"{k}={_text(v)}" for k, v in cell.items())


def _same_cell_key(cell: Mapping[str, Any]) -> str:
    """One text per cell whatever its key order and however a number is spelled (``30`` and ``30.0`` are one
    setting, as in the config hash): how cells of different blocks are found to be the same cell."""
    return json.dumps(canonical_numbers(dict(cell)), sort_keys=True, default=str)


def _matches(cell: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    """Whether ``cell`` has every value of the partial cell ``entry``."""
    return all(cell[k] == v for k, v in entry.items())


def _block_cells(keys: Sequence[str], block: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The product of one block, keys in ``keys``' order, values in list order."""
    return [dict(zip(keys, values)) for values in itertools.product(*(block[k] for k in keys))]


def exclude_problem(blocks: Sequence[Mapping[str, Sequence[Any]]], exclude: Sequence[Mapping[str, Any]]) -> str | None:
    """The first ``exclude`` entry that names a key the grid does not have, a value the grid does not list for
    its key, or a combination no cell of the grid has (a typo would otherwise silently run what it meant to
    remove): ``exclude[1].freeze: 'nnone' is not a value of grid.freeze (none, all); did you mean 'none'?``."""
    keys = list(blocks[0])
    values = {k: [v for block in blocks for v in block[k]] for k in keys}
    cells = [c for block in blocks for c in _block_cells(keys, block)]
    for i, entry in enumerate(exclude):
        for key, value in entry.items():
            if key not in values:
                return (f"exclude[{i}]: {key!r} is not a grid key (grid keys: {', '.join(keys)})"
                        + closest_hint([str(key)], keys))
            if not any(value == v for v in values[key]):
                known = list(dict.fromkeys(_text(v) for v in values[key]))
                return (f"exclude[{i}].{key}: {value!r} is not a value of grid.{key} ({', '.join(known)})"
                        + closest_hint([_text(value)], known))
        if not any(_matches(c, entry) for c in cells):
            written = ", ".join(f"{k}: {_text(v)}" for k, v in entry.items())
            return f"exclude[{i}] {{{written}}} matches no cell of the grid (no block has that combination)"
    return None


def sparse_grid(task: str, grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]],
                train: Mapping[str, Any], defaults: Mapping[str, Any],
                exclude: Sequence[Mapping[str, Any]] = ()) -> SparseGrid:
    """The cells of ``grid`` with ``train`` and the bundle's ``defaults``. ``grid`` is one product (a mapping of
    keys to values: keys in order, values in order) or a list of them (blocks, each naming the same keys: the
    union of their products, block by block; a cell a later block repeats is one cell, ``repeated``). A cell
    matching an ``exclude`` entry (a partial cell) is not part of the grid (``excluded``).

    A clash (:func:`cell_problems`) between two grid keys leaves the cell out; one the spec fixes (a grid
    value with a ``train`` setting or a default, or ``train`` alone) is ``problem``, naming its places, as
    is a grid value that no cell of its block is left to run with and an ``exclude`` entry that matches
    nothing (:func:`exclude_problem`)."""
    blocks = [grid] if isinstance(grid, Mapping) else list(grid)
    keys = list(blocks[0])
    sections = ["grid"] if len(blocks) == 1 else [f"grid[{b}]" for b in range(len(blocks))]
    out = SparseGrid(kept=[], left_out=[], problem=exclude_problem(blocks, exclude))
    if out.problem:
        return out
    fixed = {**defaults, **train}
    fate: dict[str, tuple[int, CellProblem | str | None]] = {}  # cell → (its first block, why it does not run)
    for b, block in enumerate(blocks):
        for cell in _block_cells(keys, block):
            same = _same_cell_key(cell)
            if same in fate:
                if fate[same][1] != "excluded":
                    out.repeated.append((cell, fate[same][0], b))
                continue
            if any(_matches(cell, entry) for entry in exclude):
                out.excluded.append(cell)
                fate[same] = (b, "excluded")
                continue
            settings = {**fixed, **cell}
            problems = cell_problems(task, settings)
            for problem in problems:
                if sum(k in block for k in problem.keys) < 2 and out.problem is None:
                    out.problem = f"{_where(problem, settings, block, train, sections[b])}: {problem.reason}"
            if problems:
                out.left_out.append((cell, problems[0]))
            else:
                out.kept.append(cell)
            fate[same] = (b, problems[0] if problems else None)
    if out.problem is None:
        for b, block in enumerate(blocks):
            for key in keys:
                for i, value in enumerate(block[key]):
                    why = [fate[_same_cell_key(c)][1] for c in _block_cells(keys, block) if c[key] == value]
                    if None in why:
                        continue
                    problem = next((p for p in why if isinstance(p, CellProblem)), None)
                    reason = (f"no cell of the grid can run with it: {problem.reason}" if problem else
                              "exclude removes every cell with it: remove the value instead")
                    out.problem = f"{sections[b]}.{key}[{i}]: {reason}"
                    return out
    return out


def stage_encoders(stages: Mapping[str, str], cells: Iterable[Mapping[str, Any]],
                   defaults: Mapping[str, Any]) -> dict[str, list[str]]:
    """{stage: encoders it trains for}: the encoders of the cells whose weights are the stage, and of the
    stages that start from it (``stages`` maps each stage's name to its start)."""
    out: dict[str, list[str]] = {name: [] for name in stages}
    for cell in cells:
        source, encoder = cell.get("weights", defaults.get("weights")), cell.get("encoder", defaults.get("encoder"))
        while source in stages:
            if encoder not in out[source]:
                out[source].append(encoder)
            source = stages[source]
    return out


def stage_problem(name: str, settings: Mapping[str, Any], encoders: Iterable[str],
                  inherited: Iterable[str] = ()) -> str | None:
    """A pretraining stage (a classification run per encoder) whose settings do not fit an encoder it trains
    for: ``pretrain NAME: train.input: …``; ``inherited`` are the keys it took from the study's ``train``."""
    for encoder in encoders:
        for problem in cell_problems("classification", {**settings, "encoder": encoder}):
            key = next((k for k in problem.keys if k != "encoder"), problem.keys[0])
            origin = " (taken from the study's train)" if key in set(inherited) else ""
            origin = origin if key in settings else " (unset: the bundle's 2d)"
            return f"pretrain {name}: train.{key}{origin} for encoder {encoder}: {problem.reason}"
    return None
