"""Running medxfer's MONAI bundles from Python (``medxfer train`` is a thin layer over this).

A bundle is named (``classification``, ``segmentation``: the folders under the repository's
``bundles/``, or ``$MEDXFER_BUNDLES``) or given as a path. Overrides are bundle config ids with
values, exactly what ``python -m monai.bundle run --config_file … --encoder resnet50`` takes.

Overrides are data, never code. MONAI's config parser interprets some strings: ``$…`` is a Python
expression it evaluates, ``@id`` a reference to another entry, ``%file::id`` a macro that copies
in another config (from any file), ``#`` is rewritten to its id separator ``::`` (as are the
relative ids ``@::``/``%::``), and a mapping with ``_target_`` is a component it instantiates.
The bundles' own configs use all of that; a value given from outside (a spec, ``medxfer train
--key value``, a library call) that MONAI would interpret is refused by :func:`check_overrides`,
with its key, before anything runs.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import MedxferError
from ..models.encoders import ARCHS
from ..models.segmenter import PLAIN_SEGMENTERS, segmenter_dims

BUNDLE_NAMES = ("classification", "segmentation")


class BundleError(MedxferError, ValueError):
    """A bundle that cannot be found or run as asked."""


def bundles_dir() -> Path:
    """``$MEDXFER_BUNDLES`` or the ``bundles/`` folder beside the ``medxfer`` package."""
    env = os.environ.get("MEDXFER_BUNDLES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "bundles"


def bundle_path(bundle: str | os.PathLike) -> Path:
    """The bundle folder for a name or path (it must hold ``configs/train.json``)."""
    path = Path(bundle)
    if not (path / "configs" / "train.json").is_file():
        path = bundles_dir() / str(bundle)
    if not (path / "configs" / "train.json").is_file():
        raise BundleError(f"no bundle {bundle!r}: give a bundle folder (with configs/train.json) or one of "
                          f"{', '.join(BUNDLE_NAMES)} (looked in {bundles_dir()})")
    return path


# What MONAI's ConfigParser (monai/bundle: utils.py, config_item.py, reference_resolver.py,
# config_parser.py) does with a string at the start of a config value.
_INTERPRETED_PREFIXES = {
    "$": "which MONAI would run as Python code",
    "@": "which MONAI would replace with another config entry (a reference)",
    "%": "which MONAI would replace with the content of another config, read from any file (a macro)",
}
_RELATIVE_ID = re.compile(r"[@%](?:::|#)")  # "@::x", "%#x": relative ids, rewritten anywhere in a string
# ConfigComponent.non_arg_keys: a mapping with `_target_` is instantiated (any importable callable)
COMPONENT_KEYS = frozenset({"_target_", "_disabled_", "_requires_", "_desc_", "_mode_"})
# A top-level config id: "::" or "#" in a key would reach into the bundle's nested components
_OVERRIDE_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _shown(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def config_data_problem(value: Any) -> tuple[str, str] | None:
    """Where in ``value`` (``""``, ``"[0]"``, ``".key[1]"``) and why MONAI's config parser would not
    take it as plain data; None when it is data (strings, numbers, lists and mappings of them)."""
    if isinstance(value, str):
        if value[:1] in _INTERPRETED_PREFIXES:
            return "", f"{_shown(value)} starts with {value[0]!r}, {_INTERPRETED_PREFIXES[value[0]]}"
        if _RELATIVE_ID.search(value):
            return "", f"{_shown(value)} holds a relative reference ('@::' or '%::'), which MONAI would rewrite"
        if "#" in value:
            return "", f"{_shown(value)} contains '#', which MONAI's config parser rewrites to '::'"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key) in COMPONENT_KEYS:
                return f".{key}", f"the key {str(key)!r} would make MONAI instantiate or control a component"
            found = config_data_problem(item)
            if found:
                return f".{key}{found[0]}", found[1]
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = config_data_problem(item)
            if found:
                return f"[{i}]{found[0]}", found[1]
    return None


def check_overrides(overrides: dict[str, Any], prefix: str = "") -> None:
    """Refuse an override that MONAI would not take as data (see the module docstring): a key that
    is not a plain config id, or a value :func:`config_data_problem` finds. The one-line
    :class:`BundleError` names the key (``prefix`` before it: ``--`` for the command line)."""
    for key, value in overrides.items():
        if not isinstance(key, str) or not _OVERRIDE_KEY.match(key):
            raise BundleError(f"override {prefix}{key}: a bundle setting is a plain config key (letters, digits, "
                              "'_'; '#' and '::' would reach into the bundle's components)")
        found = config_data_problem(value)
        if found:
            raise BundleError(f"{prefix}{key}{found[0]}: {found[1]}; settings are data, never code")


def encoder_dims_problem(encoder: Any, input: Any = "2d", task: str = "segmentation") -> str | None:
    """An encoder whose dimensions do not fit ``input``: a 3D encoder (or a plain 3D segmenter) with
    2D / 2.5D samples, a 2D encoder with ``input: 3d``. The one-line reason, else None (unknown names are
    the registry's to report). ``task`` decides which 3D names it suggests (plain segmenters segment only)."""
    mode = str(input or "2d").lower()
    if not isinstance(encoder, str) or (encoder not in ARCHS and encoder not in PLAIN_SEGMENTERS):
        return None
    dims = segmenter_dims(encoder)
    if mode == "3d" and dims == 2:
        plain = list(PLAIN_SEGMENTERS) if task == "segmentation" else []
        known = ", ".join([a for a, spec in ARCHS.items() if spec.spatial_dims == 3] + plain)
        return f"encoder {encoder!r} is a 2D encoder; input: 3d feeds whole volumes to a 3D network: use one of {known}"
    if mode != "3d" and dims == 3:
        known = ", ".join(a for a, spec in ARCHS.items() if spec.spatial_dims == 2
                          and not (task == "segmentation" and spec.classification_only))
        return (f"encoder {encoder!r} is a 3D network; input: {mode} trains a 2D network (on 2D images and on "
                f"slices of volumes): set input: 3d, or use one of {known}")
    return None


def encoder_task_problem(encoder: Any, task: str = "segmentation") -> str | None:
    """A registry encoder that cannot serve ``task``: a classification-only one (AlexNet: no stride-2 map
    for a UNet decoder, :attr:`~medxfer.models.ArchSpec.classification_only`) named for segmentation.
    The one-line reason, else None (unknown names are the registry's to report)."""
    spec = ARCHS.get(encoder) if isinstance(encoder, str) else None
    if task == "segmentation" and spec is not None and spec.classification_only:
        return f"{encoder} is classification-only: {spec.classification_only}"
    return None


def check_encoder_dims(encoder: Any, input: Any = "2d", task: str = "segmentation") -> None:
    """Refuse an encoder that cannot serve ``task`` (:func:`encoder_task_problem`) or whose dimensions do
    not fit ``input`` (:func:`encoder_dims_problem`) with a one-line :class:`BundleError`; first in the
    bundles' ``initialize``, so before any network is built."""
    problem = encoder_task_problem(encoder, task) or encoder_dims_problem(encoder, input, task)
    if problem:
        raise BundleError(problem)


def parse_override(value: str) -> Any:
    """Command-line text → JSON value when it parses (``2``, ``1e-4``, ``true``, ``["PX"]``), else the string."""
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value


def root_cause(exc: BaseException) -> BaseException:
    """The first :class:`MedxferError` (or missing file) in an exception chain (MONAI wraps config
    errors in RuntimeError); else the innermost error. A context the code suppressed (``raise …
    from None``) is not followed: ``unknown encoder 'resnet81'; known: …`` is the cause, not the
    ``KeyError`` it replaced."""
    seen, visited = exc, set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, (MedxferError, FileNotFoundError)):
            return seen
        below = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
        if below is None:
            return seen  # the innermost error says more than MONAI's "Failed to evaluate"
        seen = below
    return seen if seen is not None else exc


def error_summary(exc: BaseException) -> str:
    """One line naming the root cause: medxfer's own message as is, others with their type."""
    cause = root_cause(exc)
    text = str(cause) if type(cause).__module__.startswith("medxfer") else f"{type(cause).__name__}: {cause}"
    return text.splitlines()[0] if text else type(cause).__name__


@dataclass
class TrainResult:
    """What one bundle run produced."""

    run_id: str | None
    run_name: str
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)


def train_bundle(bundle: str | os.PathLike, config: str = "train", **overrides: Any) -> TrainResult:
    """Run ``configs/<config>.json`` of ``bundle`` with ``overrides`` (initialize, run, finalize).

    Relative ``manifest`` paths are resolved against the current directory first, so the bundle
    can run from anywhere. Overrides are bundle config ids set as plain values: one MONAI would
    interpret (a ``$`` expression, an ``@``/``%`` reference, ``#``, a ``_target_`` component) is a
    :class:`BundleError` naming its key, before anything runs (:func:`check_overrides`); so is a
    key that is not a plain config id.
    """
    from monai.bundle import ConfigWorkflow

    root = bundle_path(bundle)
    configs = [root / "configs" / "train.json"]
    if config != "train":
        extra = root / "configs" / f"{config}.json"
        if not extra.is_file():
            raise BundleError(f"{root}: no configs/{config}.json")
        configs.append(extra)
    if "manifest" in overrides:
        overrides["manifest"] = str(Path(overrides["manifest"]).resolve())
    overrides.setdefault("bundle_root", str(root))
    check_overrides(overrides)
    task = "classification" if root.name == "classification" else "segmentation"
    # before MONAI parses anything (and again in the bundle, which knows its defaults)
    check_encoder_dims(overrides.get("encoder"), overrides.get("input"), task)
    # MONAI's workflow logger announces "logging file set to False" on every run: keep stderr for
    # what matters (one-line errors from the CLI).
    logging.getLogger("monai.bundle.workflows").setLevel(logging.ERROR)
    workflow = ConfigWorkflow(config_file=[str(c) for c in configs], meta_file=str(root / "configs" / "metadata.json"),
                              logging_file=False, workflow_type="train")
    # set here, not as ConfigWorkflow keywords: those named like its own parameters (tracking,
    # run_id, init_id, final_id, properties_path) would be taken as workflow settings (``tracking``
    # as a file of settings to load), not as the bundle's config keys
    workflow.parser.update(overrides)
    try:
        workflow.initialize()
        missing = workflow.check_properties()
        if missing:
            raise BundleError(f"{root}: the bundle lacks required properties {missing}")
        workflow.run()
        metrics = workflow.finalize()
    except BaseException:
        tracker = workflow.parser.ref_resolver.resolved_content.get("tracker")
        if tracker is not None:
            tracker.finish("FAILED")  # a crashed run is marked, never left RUNNING
        raise
    metrics = next((m for m in (metrics or []) if isinstance(m, dict)), {})
    tracker = workflow.parser.get_parsed_content("tracker")
    return TrainResult(run_id=tracker.run_id, run_name=tracker.name,
                       output_dir=Path(workflow.parser.get_parsed_content("output_dir")), metrics=metrics)
