"""Running medxfer's MONAI bundles from Python (``medxfer train`` is a thin layer over this).

A bundle is named (``classification``, ``segmentation``: the folders under the repository's
``bundles/``, or ``$MEDXFER_BUNDLES``) or given as a path. Overrides are bundle config ids with
values, exactly what ``python -m monai.bundle run --config_file … --encoder resnet50`` takes.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import MedxferError

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


def parse_override(value: str) -> Any:
    """Command-line text → JSON value when it parses (``2``, ``1e-4``, ``true``, ``["PX"]``), else the string."""
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value


def root_cause(exc: BaseException) -> BaseException:
    """The first :class:`MedxferError` (or missing file) in an exception chain (MONAI wraps config
    errors in RuntimeError); else the innermost error."""
    seen = exc
    while seen is not None:
        if isinstance(seen, (MedxferError, FileNotFoundError)):
            return seen
        if seen.__cause__ is None and seen.__context__ is None:
            return seen  # the innermost error says more than MONAI's "Failed to evaluate"
        seen = seen.__cause__ or seen.__context__
    return exc


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
    can run from anywhere.
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
    # MONAI's workflow logger announces "logging file set to False" on every run: keep stderr for
    # what matters (one-line errors from the CLI).
    logging.getLogger("monai.bundle.workflows").setLevel(logging.ERROR)
    workflow = ConfigWorkflow(config_file=[str(c) for c in configs], meta_file=str(root / "configs" / "metadata.json"),
                              logging_file=False, workflow_type="train", **overrides)
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
