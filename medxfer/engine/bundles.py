"""Running medxfer's MONAI bundles from Python (``medxfer train`` is a thin layer over this).

A bundle is named (``classification``, ``segmentation``: the folders of ``medxfer/bundles/``, shipped
as package data, or of ``$MEDXFER_BUNDLES``) or given as a path. Overrides are bundle config ids with
values, exactly what ``python -m monai.bundle run --config_file … --encoder resnet50`` takes.

Overrides are data, never code. MONAI's config parser interprets some strings: ``$…`` is a Python
expression it evaluates, ``@id`` a reference to another entry, ``%file::id`` a macro that copies
in another config (from any file), ``#`` is rewritten to its id separator ``::`` (as are the
relative ids ``@::``/``%::``), and a mapping with ``_target_`` is a component it instantiates.
The bundles' own configs use all of that; a value given from outside (a spec, ``medxfer train
--key value``, a library call) that MONAI would interpret is refused by :func:`check_overrides`,
with its key, before anything runs. Finding bundles and checking settings is
:mod:`medxfer.core.bundle_files` (torch-free, for the CLI), whose names are re-exported here.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.bundle_files import (BUNDLE_NAMES, COMPONENT_KEYS, BundleError, bundle_config,  # noqa: F401 - re-exported
                                  bundle_path, bundles_dir, check_bundle_keys, check_overrides, closest_hint,
                                  config_data_problem, parse_override)
from ..core.errors import MedxferError
from ..models.encoders import ARCHS
from ..models.segmenter import PLAIN_SEGMENTERS, segmenter_dims
from .progress import EpochProgressHandler, ProgressCallback


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


def encoder_problem(value: Any, task: str = "segmentation") -> str | None:
    """An encoder that is not in the registry (``unknown encoder 'resnet81'; known: …; did you mean …``), a
    plain 3D segmenter (``unet_3d``) named for classification, or a classification-only encoder (``alexnet``)
    named for segmentation. Whether its dimensions fit the input is :func:`encoder_dims_problem`'s question."""
    refused = encoder_task_problem(value, task)
    if refused:
        return refused
    known = ([a for a in ARCHS if not encoder_task_problem(a, task)]
             + (list(PLAIN_SEGMENTERS) if task == "segmentation" else []))
    if isinstance(value, str) and value in known:
        return None
    if isinstance(value, str) and value in PLAIN_SEGMENTERS:
        return (f"encoder {value!r} is a plain 3D segmentation network (a scratch baseline of the segmentation "
                f"bundle); classification needs a registry encoder: {', '.join(ARCHS)}")
    return f"unknown encoder {value!r}; known: {', '.join(known)}" + closest_hint([str(value)], known)


def check_encoder_dims(encoder: Any, input: Any = "2d", task: str = "segmentation") -> None:
    """Refuse an encoder that is unknown or cannot serve ``task`` (:func:`encoder_problem`) or whose
    dimensions do not fit ``input`` (:func:`encoder_dims_problem`) with a one-line :class:`BundleError`;
    first in the bundles' ``initialize``, so before any network is built."""
    if encoder is None:  # not set by the caller: the bundle's initialize checks its own default
        return
    problem = encoder_problem(encoder, task) or encoder_dims_problem(encoder, input, task)
    if problem:
        raise BundleError(problem)


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


def train_bundle(bundle: str | os.PathLike, config: str = "train", *, progress: ProgressCallback | None = None,
                 **overrides: Any) -> TrainResult:
    """Run ``configs/<config>.json`` of ``bundle`` with ``overrides`` (initialize, run, finalize).

    Relative ``manifest`` paths are resolved against the current directory first, so the bundle
    can run from anywhere. Overrides are bundle config ids set as plain values: one MONAI would
    interpret (a ``$`` expression, an ``@``/``%`` reference, ``#``, a ``_target_`` component) is a
    :class:`BundleError` naming its key, before anything runs (:func:`check_overrides`); so is a
    key that is not a plain config id.

    ``progress`` (a callable) gets an :class:`~medxfer.engine.progress.EpochProgress` when the
    bundle's trainer (``train#trainer``) starts and after each epoch; None: nothing is reported. A
    value that is not callable is a bundle setting named ``progress``, as before.
    """
    from monai.bundle import ConfigWorkflow

    if progress is not None and not callable(progress):  # `medxfer train --progress …`: a bundle key
        overrides["progress"], progress = progress, None

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
        if progress is not None and "train#trainer" in workflow.parser:
            EpochProgressHandler(progress).attach(workflow.parser.get_parsed_content("train#trainer"))
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
