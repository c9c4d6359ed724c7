"""Plan-time checks of a study spec's values: what every run of the grid would otherwise find out
one by one, after the study's parent run exists.

Each check returns the problem as text (None when the value is fine); :mod:`.spec` raises it as
one :class:`~medxfer.study.spec.SpecError` line that names the key. Nothing here loads weights or
opens the tracking store:

- an encoder is a name of the encoder registry; a freeze policy parses (``none``, ``all``, ``top:K``);
- a weights source is ``scratch``, a pretraining stage, ``SCHEME:REF`` with a registered scheme
  (``file:PATH`` must be a readable file; ``run:RUN_ID`` is looked up when its run starts, where
  the store is), or an imported name. An imported name the registry lacks for some encoders is a
  warning (:func:`registry_notes`), not an error: those cells fail with the reason and the rest of
  the grid runs (weights may exist for some encoders only, and a plan may be made before importing);
- the label column is a column of its manifest; ``epochs`` and ``batch_size`` are whole numbers ≥ 1;
- the volume / cine settings ``input``, ``slices`` and ``aggregate`` parse (:mod:`medxfer.engine.slices`)
  wherever the spec sets them (``train``, each ``grid`` value, each pretraining stage's ``train``),
  and no cell combines ``input: 2.5d`` with an ``in_channels`` other than 3
  (:func:`slice_settings_problem`).
"""
from __future__ import annotations

import csv
import difflib
import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Iterable

from ..engine import run_weights  # noqa: F401 - registers the run: weights scheme
from ..engine.bundles import encoder_dims_problem
from ..engine.slices import SliceSettingError, check_aggregate, check_channels, check_input, check_slices
from ..models.encoders import ARCHS
from ..models.freeze import parse_policy
from ..models.weights import imported_record, is_weights_name, list_weights, source_schemes
from ..models.weights.sources import known_sources

# Settings that count something: a whole number >= 1
COUNT_KEYS = ("epochs", "batch_size")
# Settings of volumes / cines as 2D samples (medxfer.engine.slices), in the order they are checked
SLICE_KEYS = ("input", "slices", "aggregate")
WEIGHTS_FORMS = "scratch, an imported NAME, file:PATH, run:RUN_ID or a pretrain stage"


def _did_you_mean(value: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(value, sorted(known), n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def encoder_problem(value: Any) -> str | None:
    """An encoder that is not in the registry (``unknown encoder 'resnet81'; known: …``), or a 3D encoder,
    which the 2D bundles cannot use."""
    known_2d = [a for a, spec in ARCHS.items() if spec.spatial_dims == 2]
    if isinstance(value, str) and value in ARCHS:
        return encoder_dims_problem(value)
    return f"unknown encoder {value!r}; known: {', '.join(known_2d)}" + _did_you_mean(str(value), known_2d)


def freeze_problem(value: Any) -> str | None:
    """A freeze policy that does not parse (``none``, ``all``, ``top:K`` with K >= 1)."""
    try:
        parse_policy(str(value))
    except ValueError as exc:
        return str(exc)
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
            + _did_you_mean(label, columns))


def _imported_names() -> set[str]:
    try:
        return {r.name for r in list_weights()}
    except (OSError, ValueError, TypeError):  # an unreadable record: the run that needs it says so
        return set()


def registry_notes(names: Iterable[str], encoders: Iterable[str]) -> list[str]:
    """Warnings for the imported weights ``names`` the grid uses with ``encoders`` that the registry
    has no record of (records only, no weights are read): the cells that need them will fail with
    the reason and the rest of the grid runs, as a grid whose weights exist for some encoders only
    (RadImageNet has no ResNet18) is meant to."""
    warnings = []
    encoders = list(dict.fromkeys(encoders))
    imported = None
    for name in dict.fromkeys(names):
        missing = [arch for arch in encoders if imported_record(name, arch) is None]
        if not missing:
            continue
        if imported is None:
            imported = _imported_names()
        hint = _did_you_mean(name, imported - {name}) if name not in imported else ""
        warnings.append(f"weights {name!r} are not imported for {', '.join(missing)}: those runs will fail; "
                        f"import them first (medxfer weights import) or leave them out of the grid{hint}")
    return warnings


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


SLICE_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "input": input_problem, "slices": slices_problem, "aggregate": aggregate_problem}


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
