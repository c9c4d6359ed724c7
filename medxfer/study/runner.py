"""Running a study: a parent MLflow run per study, one child bundle run per cell × fold × seed.

Resuming is by ``config_hash``: a FINISHED child with the hash is never run again; a child left RUNNING
by a runner that died is marked FAILED and run again; two runners never train one configuration
(claims, orphans and heartbeats: :mod:`.claims`). Each run is trained by
:func:`~medxfer.study.execute.run_planned`, under the executor asked for (:mod:`.executors`: this process,
a local process pool, Ray). This module plans and records: the parent run, its grid and spec artifacts,
the shard's runs not yet done, the outcome.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from mlflow.entities import Param

from ..core.files import atomic_write, atomic_write_json
from ..core.signals import terminate_raises
from ..engine.progress import StudyProgress, check_progress_mode
from ..models.weights import source_label
from ..tracking.layout import (GRID_ARTIFACT, ROLE_CELL, ROLE_STUDY, SPEC_ARTIFACT, TAG_CONFIG_HASH, TAG_NOTE,
                               TAG_PROGRESS, TAG_RESET, TAG_ROLE, TAG_SPEC_HASH, TAG_STUDY, role_filter)
from ..tracking.store import client as mlflow_client
from ..tracking.store import experiment_id, retry_on_conflict, search_all_runs, use_tracking
from ..tracking.ui import REPORT_PAGE, run_page, set_study_view, study_metrics, study_view_link
from .execute import RunReport, StudyContext, quiet_engines, stage_filter  # noqa: F401 - quiet_engines re-exported
from .executors import run_local_pool, run_sequential, settings_for
from .grid import PlannedRun, expand, shard, weights_identity
from .pretrain import chain
from .ray_executor import run_ray
from .similarity import log_study_similarity
from .spec import NAME_KEYS, SpecError, StudySpec

log = logging.getLogger(__name__)


@dataclass
class StudyOutcome:
    """What one ``study run`` invocation did."""

    total: int  # runs in the whole grid
    selected: int  # runs in this shard
    already_done: list[str] = field(default_factory=list)
    ran: list[tuple[str, str | None, dict]] = field(default_factory=list)  # (name, run id, test metrics)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, one-line reason)
    reset: list[str] = field(default_factory=list)  # orphaned RUNNING children marked FAILED
    running_elsewhere: list[str] = field(default_factory=list)  # RUNNING with a fresh heartbeat: left alone
    parent_run_id: str | None = None
    done_in_grid: int = 0
    left_out: list[str] = field(default_factory=list)  # cells that cannot run, left out of the grid (one line)

    @property
    def complete(self) -> bool:
        return self.done_in_grid == self.total


def _stage_runs(client, exp_id: str | None, spec: StudySpec, name: str, encoder: str) -> list:
    """The runs in the store of pretraining stage ``name`` for ``encoder``."""
    _, query = stage_filter(spec, name, encoder)
    return search_all_runs(client, exp_id, query) if exp_id else []


def study_state(spec: StudySpec, runs: list[PlannedRun], client=None) -> tuple[str | None, dict[str, list]]:
    """(experiment id, {config_hash: child runs}) as the tracking store has them now."""
    client = client or mlflow_client()
    exp_id = experiment_id(client, spec.experiment, create=False)
    by_hash: dict[str, list] = {}
    if exp_id is None:
        return None, by_hash
    wanted = {r.config_hash for r in runs}
    for run in search_all_runs(client, exp_id, role_filter(spec.name, ROLE_CELL)):
        h = run.data.tags.get(TAG_CONFIG_HASH)
        if h in wanted:
            by_hash.setdefault(h, []).append(run)
    return exp_id, by_hash


def _status(children: list) -> str:
    statuses = {c.info.status for c in children}
    for s in ("FINISHED", "RUNNING", "FAILED", "KILLED"):
        if s in statuses:
            return s
    return "todo"


def dry_run(spec: StudySpec, shard_index: tuple[int, int] = (1, 1)) -> list[tuple[PlannedRun, str]]:
    """Each run of the shard with its state: ``done``, ``running``, ``failed`` (re-run) or ``todo``."""
    runs = expand(spec)
    _, by_hash = study_state(spec, runs)
    labels = {"FINISHED": "done", "RUNNING": "running", "FAILED": "failed", "KILLED": "failed", "todo": "todo"}
    return [(r, labels[_status(by_hash.get(r.config_hash, []))]) for r in shard(runs, *shard_index)]


def stage_states(spec: StudySpec) -> list[tuple[str, str]]:
    """(``pretrain/<stage>/<encoder>``, ``done``/``running``/``todo``) for the stages the grid uses."""
    needed = sorted({(r.stage, str(r.overrides["encoder"])) for r in expand(spec) if r.stage})
    client = mlflow_client()
    exp_id = experiment_id(client, spec.experiment, create=False)
    rows = []
    for name, encoder in needed:
        runs = _stage_runs(client, exp_id, spec, name, encoder)
        labels = {"FINISHED": "done", "RUNNING": "running"}
        rows.append((f"pretrain/{name}/{encoder}", labels.get(_status(runs), "todo")))
    return rows


def _labelled(value):
    """``value`` with every ``file:PATH`` weights source in it reduced to its base name (a folder
    path can carry a person's name), in strings, lists and mappings."""
    if isinstance(value, str):
        return source_label(value)
    if isinstance(value, list):
        return [_labelled(v) for v in value]
    if isinstance(value, dict):
        return {k: _labelled(v) for k, v in value.items()}
    return value


def spec_text_for_log(spec: StudySpec) -> str:
    """The spec as written, with each ``file:PATH`` weights source reduced to ``file:<base name>``
    (as the child runs name it); comments and layout kept where the paths can be replaced in place,
    else the spec re-written from its parsed YAML."""
    text = spec.text or ""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    sources: set[str] = set()

    def collect(value) -> None:
        if isinstance(value, str) and value.startswith("file:"):
            sources.add(value)
        elif isinstance(value, list):
            for v in value:
                collect(v)
        elif isinstance(value, dict):
            for v in value.values():
                collect(v)

    collect(raw)
    for source in sorted(sources, key=len, reverse=True):  # a path that is the prefix of another goes last
        if source != source_label(source):
            text = text.replace(source, source_label(source))
    try:
        if yaml.safe_load(text) == _labelled(raw):
            return text
    except yaml.YAMLError:
        pass
    return yaml.safe_dump(_labelled(raw), sort_keys=False, allow_unicode=True)


def parent_note(spec: StudySpec, exp_id: str, run_id: str) -> str:
    """The parent run's description (Markdown, the MLflow UI's run page): where the comparison and the report are."""
    metric = ", ".join(study_metrics(spec.task)) or "test metric"
    return (f"Study **{spec.name}** ({spec.task}): one child run per cell × fold × seed, named by the grid values "
            f"that differ.\n\n"
            f"Comparison: [the child runs by {metric}, with the grid keys as columns]({study_view_link(exp_id)})"
            f" (the runs table sorted on {metric} lists them flat).\n\n"
            f"Report: [{REPORT_PAGE}]({run_page(exp_id, run_id, REPORT_PAGE)}) — written by "
            f"`medxfer study report {spec.name}`, with the statistics a comparison needs.")


def child_run_names(spec: StudySpec, runs: list[PlannedRun]) -> dict[str, str]:
    """{config hash: MLflow run name} of the cell runs: the grid values that differ between the cells, then
    ``fold<k>`` and ``seed<s>`` when the spec has more than one of them (``resnet18/imagenet/fold0``), so the
    UI's run-name column shows what tells the runs apart; the full name stays in tag ``cell``."""
    varying = [k for k in _grid_keys_named_first(spec) if len({str(r.cell_values.get(k)) for r in runs}) > 1]
    names = {}
    for r in runs:
        parts = [_name_part(k, r.cell_values.get(k)) for k in varying] or [r.cell.split("/", 1)[-1]]
        parts += [f"fold{r.fold}"] if len(spec.folds) > 1 or not varying else []
        parts += [f"seed{r.seed}"] if len(spec.seeds) > 1 else []
        names[r.config_hash] = "/".join(parts)
    return names


def _grid_keys_named_first(spec: StudySpec) -> list[str]:
    """The grid keys, those of the run name first in its order (encoder, weights, freeze, lr)."""
    return [k for k in NAME_KEYS if k in spec.grid] + [k for k in spec.grid if k not in NAME_KEYS]


def _name_part(key: str, value) -> str:
    if key in ("encoder", "weights", "freeze"):
        return source_label(str(value)) if key == "weights" else str(value)
    if key == "lr":
        try:
            return f"lr{float(value):g}"
        except (TypeError, ValueError):
            return f"lr{value}"
    return f"{key}={_labelled(value)}"


def _parent_run(client, spec: StudySpec, exp_id: str) -> str:
    """The study's parent run (created once; concurrent shards converge on the earliest)."""
    query = role_filter(spec.name, ROLE_STUDY)
    found = sorted(search_all_runs(client, exp_id, query), key=lambda r: (r.info.start_time, r.info.run_id))
    if found:
        run_id = found[0].info.run_id
        if found[0].info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        if TAG_NOTE not in found[0].data.tags:  # a study begun before parents carried their description
            retry_on_conflict(client.set_tag, run_id, TAG_NOTE, parent_note(spec, exp_id, run_id))
        return run_id
    run = client.create_run(exp_id, run_name=f"study/{spec.name}",
                            tags={TAG_STUDY: spec.name, TAG_ROLE: ROLE_STUDY, TAG_SPEC_HASH: spec.spec_hash()})
    client.set_tag(run.info.run_id, TAG_NOTE, parent_note(spec, exp_id, run.info.run_id))
    params = {"bundle": Path(spec.bundle).name, "label": spec.label, "folds": spec.folds, "seeds": spec.seeds,
              **{f"grid.{k}": _labelled(v) for k, v in spec.grid.items()},
              **{f"train.{k}": _labelled(v) for k, v in spec.train.items()}}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    found = sorted(search_all_runs(client, exp_id, query), key=lambda r: (r.info.start_time, r.info.run_id))
    if found and found[0].info.run_id != run.info.run_id:  # another shard won the race
        client.delete_run(run.info.run_id)
        return found[0].info.run_id
    return run.info.run_id


def weights_pins(spec: StudySpec, runs: list[PlannedRun]) -> dict[tuple[str, str], str]:
    """{(weights source, encoder): sha256} of the ``file:`` and imported sources the plan names (the
    grid's and the pretraining stages' starts), as :func:`weights_identity` — and so the config hash —
    sees them now. Each run passes its pin to the bundle (``weights_sha256``), which refuses other bytes."""
    wanted = {(str(r.overrides.get("weights")), str(r.overrides.get("encoder"))) for r in runs if not r.stage}
    stage_encoders = {str(r.overrides.get("encoder")) for r in runs if r.stage}
    wanted |= {(s.start, encoder) for s in spec.pretrain if s.start not in spec.stages for encoder in stage_encoders}
    pins = {}
    for source, encoder in wanted:
        identity = weights_identity(source, encoder)
        if identity.startswith("sha256:"):
            pins[(source, encoder)] = identity[len("sha256:"):]
    return pins


def _log_grid(client, parent_run_id: str, spec: StudySpec, runs: list[PlannedRun], left_out: list[str]) -> None:
    """The parent run's ``grid.json``: the config hashes of the spec as last run, so the report
    shows this grid and not runs of an earlier version of the spec (other epochs, cohort, …), and
    (``left_out``) the lines naming the cells that cannot run, which the report repeats; and its
    ``spec.yaml``, the spec as last run (the report reads its ``compare`` sections there)."""
    record = {"spec_hash": spec.spec_hash(), "config_hashes": [r.config_hash for r in runs]}
    if left_out:
        record["left_out"] = list(left_out)
    with tempfile.TemporaryDirectory() as tmp:
        path = atomic_write_json(Path(tmp) / GRID_ARTIFACT, record, indent=None)
        client.log_artifact(parent_run_id, str(path))
        path = atomic_write(Path(tmp) / SPEC_ARTIFACT, spec_text_for_log(spec))
        client.log_artifact(parent_run_id, str(path))


def _epochs(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def planned_epochs(client, exp_id: str, spec: StudySpec, selected: list[PlannedRun],
                   by_hash: dict[str, list]) -> dict[str, int | None]:
    """{run name: epochs} of what this ``study run`` expects to train: the shard's runs not FINISHED
    in the store, and the pretraining stages (with the stages they start from) those runs need and
    the store has no FINISHED run of; None where the spec leaves the bundle's default epochs."""
    todo = [r for r in selected if not any(c.info.status == "FINISHED" for c in by_hash.get(r.config_hash, []))]
    planned: dict[str, int | None] = {}
    needed = {(name, str(r.overrides.get("encoder"))) for r in todo if r.stage
              for name in chain(spec.stages, r.stage) if name in spec.stages}
    for name, encoder in sorted(needed):
        runs = _stage_runs(client, exp_id, spec, name, encoder)
        if not any(run.info.status == "FINISHED" for run in runs):
            planned[f"pretrain/{name}/{encoder}"] = _epochs(spec.stages[name].train.get("epochs"))
    planned.update({r.name: _epochs(r.overrides.get("epochs")) for r in todo})
    return planned


def run_study(spec: StudySpec, shard_index: tuple[int, int] = (1, 1),
              echo: Callable[[str], None] = lambda s: None, runs_dir: str | os.PathLike = "runs",
              quiet: bool = True, progress: str | None = None, executor: str = "local",
              gpus: tuple[int, ...] | None = None, max_parallel: int | None = None,
              address: str | None = None) -> StudyOutcome:
    """Run every not-yet-finished run of the shard; failures are recorded and the rest go on.

    ``executor``: ``local`` runs them in this process one after the other, or on a pool of worker
    processes with ``max_parallel`` > 1 or ``gpus`` (one run per GPU); ``ray`` as Ray tasks (a local Ray
    instance, or the cluster at ``address``). The spec's ``resources`` size each run; its ``tracking``
    names the shared store. ``quiet`` silences the per-epoch engine logs (the metrics are in MLflow).
    ``progress`` (this process's runs only): ``"lines"`` echoes one line per epoch (epochs done / total,
    elapsed, run and study ETA; see :mod:`medxfer.engine.progress`), ``"bars"`` shows tqdm bars on stderr
    instead, None shows nothing."""
    check_progress_mode(progress)
    settings = settings_for(executor, gpus, max_parallel, address, spec.resources)
    if spec.unimported_weights:  # before anything runs, not when the cells that need them are reached
        raise SpecError(spec.unimported_weights)
    use_tracking(spec.tracking.get("uri"), spec.tracking.get("artifact_root"))
    quiet_engines(quiet)

    client = mlflow_client()
    runs = expand(spec)
    pins = weights_pins(spec, runs)  # as the config hashes saw the weights, now
    selected = shard(runs, *shard_index)
    outcome = StudyOutcome(total=len(runs), selected=len(selected), left_out=spec.sparse_grid().notes())
    exp_id = experiment_id(client, spec.experiment, create=True)
    set_study_view(client, exp_id, _grid_keys_named_first(spec), study_metrics(spec.task))
    outcome.parent_run_id = _parent_run(client, spec, exp_id)
    _log_grid(client, outcome.parent_run_id, spec, runs, outcome.left_out)
    if spec.similarity and shard_index[0] == 1:  # one shard measures it; the report reads it
        log_study_similarity(spec, client, outcome.parent_run_id, echo)
    _, by_hash = study_state(spec, runs, client)
    done = {r.name for r in selected if any(c.info.status == "FINISHED" for c in by_hash.get(r.config_hash, []))}
    outcome.already_done.extend(r.name for r in selected if r.name in done)
    todo = [r for r in selected if r.name not in done]
    context = StudyContext(spec=spec, experiment_id=exp_id, parent_run_id=outcome.parent_run_id,
                           runs_dir=str(Path(runs_dir).absolute()), pins=pins, run_names=child_run_names(spec, runs),
                           total=len(runs), num_workers=spec.resources.get("num_workers"), quiet=quiet)
    in_process = settings.executor == "local" and settings.parallel() == 1 and not settings.gpus
    planned_runs = planned_epochs(client, exp_id, spec, todo, by_hash) if progress and in_process else {}
    display = StudyProgress(planned_runs, echo=echo, mode=progress if in_process else None)
    try:
        with terminate_raises():  # SIGTERM unwinds: the runs in progress and the parent are marked FAILED
            if settings.executor == "ray":
                reports = run_ray(context, todo, settings, echo)
            elif in_process:
                reports = run_sequential(context, todo, echo, display)
            else:
                reports = run_local_pool(context, todo, settings, echo)
    except BaseException as exc:  # Ctrl-C, SIGTERM (a SLURM time limit, a preemption): nothing stays RUNNING
        retry_on_conflict(client.set_tag, outcome.parent_run_id, TAG_RESET,
                          f"runner stopped ({type(exc).__name__}); marked FAILED")
        client.set_terminated(outcome.parent_run_id, status="FAILED")
        raise
    display.close()
    _record(outcome, reports)
    _, by_hash = study_state(spec, runs, client)
    outcome.done_in_grid = sum(any(c.info.status == "FINISHED" for c in by_hash.get(r.config_hash, []))
                               for r in runs)
    retry_on_conflict(client.set_tag, outcome.parent_run_id, TAG_PROGRESS, f"{outcome.done_in_grid}/{outcome.total}")
    if outcome.complete:
        client.set_terminated(outcome.parent_run_id, status="FINISHED")
    elif outcome.failed:
        client.set_terminated(outcome.parent_run_id, status="FAILED")
    return outcome


def _record(outcome: StudyOutcome, reports: list[RunReport]) -> None:
    """The executors' :class:`~medxfer.study.execute.RunReport` s in ``outcome``."""
    for report in reports:
        outcome.reset.extend(report.name for _ in range(report.reset))
        if report.state == "ran":
            outcome.ran.append((report.name, report.run_id, report.metrics))
        elif report.state == "failed":
            outcome.failed.append((report.name, report.reason))
        elif report.state == "done":
            outcome.already_done.append(report.name)
        else:
            outcome.running_elsewhere.append(report.name)
