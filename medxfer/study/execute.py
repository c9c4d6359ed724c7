"""Running one planned run of a study, the same way under every executor.

:func:`run_planned` is the one function that runs a cell × fold × seed: it claims the configuration
(:func:`~medxfer.study.claims.claim_run`: skips it when FINISHED or live elsewhere, resets orphans),
trains the bundle into the claimed MLflow run with a heartbeat, and reports a :class:`RunReport`. A
pretraining stage is :func:`run_stage`. The sequential runner, the local process pool and Ray tasks
(:mod:`medxfer.study.executors`, :mod:`medxfer.study.ray_executor`) all call these two and nothing
else trains: no executor copies the loop. What they share about the study invocation (the parent run,
pinned weights, run names) travels as one picklable :class:`StudyContext`.

Weights are pinned when the study is planned: the runner passes the sha256 of each ``file:`` and
imported source (what the config hash holds) to the bundle as ``weights_sha256``, and a run that loads
other bytes (the file replaced, the name re-imported meanwhile) fails instead of mixing two sets of
weights in one cell. ``freeze: all`` classification cells train their heads from the frozen encoder's
cached features (bundle config ``train_features.json``) unless the spec sets ``feature_cache: false``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.errors import MedxferError
from ..core.files import run_folder_name
from ..engine.bundles import error_summary, train_bundle
from ..engine.progress import StudyProgress
from ..tracking.layout import (ROLE_CELL, ROLE_PRETRAIN, TAG_CHAIN, TAG_CONFIG_HASH, TAG_ROLE, TAG_STAGE,
                               TAG_STUDY, role_filter)
from ..tracking.store import client as mlflow_client
from .claims import HEARTBEAT_SECONDS, Heartbeat, claim_run
from .grid import PlannedRun, weights_identity
from .pretrain import chain, stage_hash
from .spec import StudySpec


@dataclass(frozen=True)
class StudyContext:
    """What every run of one ``study run`` invocation shares, picklable for worker processes and Ray
    tasks: the spec, the experiment and parent run, where run folders go (absolute), the pinned weights
    (``{(source, encoder): sha256}``), the MLflow run names by config hash and the grid's size."""

    spec: StudySpec
    experiment_id: str
    parent_run_id: str
    runs_dir: str
    pins: dict[tuple[str, str], str] = field(default_factory=dict)
    run_names: dict[str, str] = field(default_factory=dict)
    total: int = 0
    num_workers: int | str | None = None  # the spec's resources.num_workers, passed to every bundle run
    quiet: bool = True  # per-epoch engine logs off (:func:`quiet_engines`), in worker processes too


def quiet_engines(quiet: bool) -> None:
    """Per-epoch engine logs (MONAI's StatsHandler) off: a study prints one line per run instead."""
    for name in ("monai.handlers.StatsHandler", "ignite.engine.engine.SupervisedTrainer",
                 "ignite.engine.engine.SupervisedEvaluator"):
        logging.getLogger(name).disabled = quiet


@dataclass
class RunReport:
    """What :func:`run_planned` did with one run: ``state`` is ``ran`` (``run_id``, test ``metrics``),
    ``failed`` (``reason``, one line), ``done`` (FINISHED before: skipped) or ``elsewhere`` (another live
    runner has it); ``reset``: orphaned runs of its configuration marked FAILED on the way."""

    name: str
    state: str
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    reset: int = 0


class StudyBundleError(MedxferError, RuntimeError):
    """A bundle that cannot serve a study (it does not fill the run the study claimed)."""


class StageFailed(MedxferError, RuntimeError):
    """A pretraining stage that could not produce its checkpoint (the runs that need it fail)."""


def _close_if_running(client, run_id: str) -> None:
    """Mark a claimed run FAILED unless the bundle closed it (a failure before its tracker started)."""
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status="FAILED")


def _train_claimed(client, run_id: str, bundle: str, config: str, on_epoch, overrides: dict):
    """Train ``bundle`` into the claimed run ``run_id`` with a heartbeat; the run is never left RUNNING."""
    with Heartbeat(client) as beat:
        beat.run_id = run_id
        try:
            result = train_bundle(bundle, config=config, progress=on_epoch, claimed_run_id=run_id, **overrides)
            if result.run_id != run_id:  # a bundle of the user's own whose tracker creates its own run
                raise StudyBundleError(f"bundle {bundle}: its tracker ignores claimed_run_id (the run the study "
                                       "claimed); a study bundle's RunTracker takes run_id=@claimed_run_id")
            return result
        except BaseException:
            _close_if_running(client, run_id)
            raise


def run_planned(context: StudyContext, planned: PlannedRun, stage_run_id: str | None = None, *,
                echo: Callable[[str], None] = lambda s: None, progress: StudyProgress | None = None) -> RunReport:
    """Run one planned run of the study (see the module's docstring); ``stage_run_id``: the FINISHED run of
    the pretraining stage it starts from (required when ``planned.stage``). A failure is a ``failed`` report,
    never an exception (a signal's is: the run is marked FAILED first)."""
    spec, display = context.spec, progress or StudyProgress({}, mode=None)
    quiet_engines(context.quiet)
    client = mlflow_client()
    overrides = dict(planned.overrides)
    if planned.stage:
        if not stage_run_id:
            display.drop(planned.name)
            return RunReport(planned.name, "failed", reason=f"pretraining stage {planned.stage} has no run")
        overrides["weights"] = f"run:{stage_run_id}"
    else:
        pin = context.pins.get((str(overrides.get("weights")), str(overrides.get("encoder"))))
        if pin:
            overrides["weights_sha256"] = pin
    tags = planned.tags(spec.name, list(spec.grid))
    claim = claim_run(client, context.experiment_id,
                      role_filter(spec.name, ROLE_CELL, **{TAG_CONFIG_HASH: planned.config_hash}),
                      context.run_names.get(planned.config_hash, planned.name), tags, context.parent_run_id)
    if claim.state != "claimed":
        display.drop(planned.name)
        if claim.state == "elsewhere":
            echo(f"skip {planned.name}: running elsewhere (heartbeat fresh)")
        return RunReport(planned.name, claim.state, claim.run_id, reset=claim.reset)
    if context.num_workers is not None:
        overrides.setdefault("num_workers", context.num_workers)
    overrides.update(experiment=spec.experiment, parent_run_id=context.parent_run_id, tags=tags,
                     run_name=context.run_names.get(planned.config_hash, planned.name),
                     output_dir=str(Path(context.runs_dir) / spec.name / run_folder_name(planned.name)))
    echo(f"[{planned.index + 1}/{context.total}] {planned.name}")
    config = "train_features" if planned.feature_cache else "train"
    on_epoch = display.start(planned.name)
    try:
        result = _train_claimed(client, claim.run_id, spec.bundle, config, on_epoch, overrides)
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the study
        display.end(finished=False)
        reason = error_summary(exc)
        echo(f"  FAILED: {reason}")
        return RunReport(planned.name, "failed", claim.run_id, reason=reason, reset=claim.reset)
    display.end()
    metric = next((f"{k} {v:.3f}" for k, v in result.metrics.items() if k in ("test_auc", "test_dice")), "")
    echo(f"  done {metric}".rstrip())
    return RunReport(planned.name, "ran", result.run_id, result.metrics, reset=claim.reset)


def stage_filter(spec: StudySpec, name: str, encoder: str) -> tuple[str, str]:
    """(config hash, MLflow filter) of pretraining stage ``name`` for ``encoder``."""
    config_hash = stage_hash(spec.stages, name, encoder, weights_identity)
    return config_hash, role_filter(spec.name, ROLE_PRETRAIN, **{TAG_CONFIG_HASH: config_hash})


def run_stage(context: StudyContext, name: str, encoder: str, start_run_id: str | None = None, *,
              echo: Callable[[str], None] = lambda s: None, progress: StudyProgress | None = None) -> str:
    """The MLflow run id of pretraining stage ``name`` for ``encoder``: FINISHED in the store, waited for
    while another runner trains it, or trained here from ``start_run_id`` (the stage it starts from, when
    that is a stage) or the stage's own ``start`` weights. :class:`StageFailed` when it cannot be had."""
    spec, display = context.spec, progress or StudyProgress({}, mode=None)
    quiet_engines(context.quiet)
    stage = spec.stages[name]
    if stage.start in spec.stages and not start_run_id:
        raise StageFailed(f"pretraining stage {name} needs {stage.start}, which has no run")
    start = f"run:{start_run_id}" if stage.start in spec.stages else stage.start
    client = mlflow_client()
    config_hash, query = stage_filter(spec, name, encoder)
    run_name = f"pretrain/{name}/{encoder}"
    tags = {TAG_STUDY: spec.name, TAG_ROLE: ROLE_PRETRAIN, TAG_CONFIG_HASH: config_hash, TAG_STAGE: name,
            TAG_CHAIN: " → ".join(chain(spec.stages, name)), "encoder": encoder}
    announced = False
    while True:
        claim = claim_run(client, context.experiment_id, query, run_name, tags, context.parent_run_id)
        if claim.state == "done":
            display.drop(run_name)
            return str(claim.run_id)
        if claim.state == "claimed":
            break
        if not announced:
            echo(f"waiting for {run_name}: another runner is training it")
            announced = True
        time.sleep(HEARTBEAT_SECONDS / 2)
    pin = {"weights_sha256": context.pins[(start, encoder)]} if (start, encoder) in context.pins else {}
    echo(f"[pretrain] {run_name} (from {stage.start})")
    on_epoch = display.start(run_name)
    overrides = dict(manifest=str(stage.manifest), label=stage.label, fold=stage.fold, encoder=encoder, weights=start,
                     experiment=spec.experiment, parent_run_id=context.parent_run_id, run_name=run_name, tags=tags,
                     output_dir=str(Path(context.runs_dir) / spec.name / run_folder_name(run_name)),
                     **stage.data, **stage.train, **pin)
    if context.num_workers is not None:
        overrides.setdefault("num_workers", context.num_workers)
    try:
        result = _train_claimed(client, str(claim.run_id), "classification", "train", on_epoch, overrides)
    except Exception as exc:  # noqa: BLE001 - reported on every run that needs the stage
        display.end(finished=False)
        raise StageFailed(f"pretraining stage {name} for {encoder} failed: {error_summary(exc)}") from None
    display.end()
    echo(f"  done test_auc {result.metrics.get('test_auc', float('nan')):.3f} (source task)")
    return str(result.run_id)


class StageResolver:
    """Pretraining stage runs of one process, each (stage, encoder) resolved once: a chain's earlier
    stages first (:func:`run_stage` for each); a failure is remembered and raised again for every run
    that needs the stage."""

    def __init__(self, context: StudyContext, echo: Callable[[str], None] = lambda s: None,
                 progress: StudyProgress | None = None):
        self.context, self.echo, self.progress = context, echo, progress
        self.done: dict[tuple[str, str], str | StageFailed] = {}

    def run_id(self, name: str, encoder: str) -> str:
        """The FINISHED run of stage ``name`` for ``encoder`` (trained here if needed); :class:`StageFailed`."""
        key = (name, encoder)
        if key not in self.done:
            try:
                self.done[key] = self._resolve(name, encoder)
            except StageFailed as exc:
                self.done[key] = exc
        result = self.done[key]
        if isinstance(result, StageFailed):
            raise result
        return result

    def _resolve(self, name: str, encoder: str) -> str:
        stages = self.context.spec.stages
        start = stages[name].start
        start_run_id = None
        if start in stages:
            try:
                start_run_id = self.run_id(start, encoder)
            except StageFailed as exc:
                raise StageFailed(f"pretraining stage {name} needs {start}: {exc}") from None
        return run_stage(self.context, name, encoder, start_run_id, echo=self.echo, progress=self.progress)


def run_with_stages(context: StudyContext, planned: PlannedRun, stages: StageResolver, *,
                    echo: Callable[[str], None] = lambda s: None, progress: StudyProgress | None = None) -> RunReport:
    """:func:`run_planned` with its pretraining stage resolved first by ``stages`` (a failed stage is a
    ``failed`` report of the run)."""
    stage_run_id = None
    if planned.stage:
        try:
            stage_run_id = stages.run_id(planned.stage, str(planned.overrides.get("encoder")))
        except StageFailed as exc:
            echo(f"  FAILED {planned.name}: {exc}")
            if progress is not None:
                progress.drop(planned.name)
            return RunReport(planned.name, "failed", reason=str(exc))
    return run_planned(context, planned, stage_run_id, echo=echo, progress=progress)
