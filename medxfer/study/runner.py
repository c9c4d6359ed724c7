"""Running a study: a parent MLflow run per study, one child bundle run per cell × fold × seed.

Resuming is by ``config_hash``: a FINISHED child with the hash is never run again. A child left
RUNNING by a runner that died (``kill -9``, a lost node) is marked FAILED and run again. A child
is known to be orphaned when its runner's process is gone on this machine, or when its heartbeat
(a tag the runner refreshes every 30 s) is older than ``MEDXFER_STALE_SECONDS`` (default 600) —
the rule for runners on other machines sharing one tracking server. A runner is identified by a
random id per process start and its machine by the kernel's boot id and pid namespace (hostnames
repeat across containers and nodes): a process id is only checked on the machine it belongs to.

Weights are pinned when the study is planned: the runner passes the sha256 of each ``file:`` and
imported source (what the config hash holds) to the bundle as ``weights_sha256``, and a run that
loads other bytes (the file replaced, the name re-imported meanwhile) fails instead of mixing two
sets of weights in one cell.

``freeze: all`` classification cells train their heads from the frozen encoder's cached features
(:mod:`medxfer.engine.features`, bundle config ``train_features.json``) unless the spec sets
``feature_cache: false``.
"""
from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from mlflow.entities import Param

from ..core.errors import MedxferError
from ..core.files import atomic_write, atomic_write_json, run_folder_name
from ..core.signals import terminate_raises
from ..engine.bundles import error_summary, train_bundle
from ..engine.progress import StudyProgress, check_progress_mode
from ..models.weights import source_label
from ..tracking.layout import (GRID_ARTIFACT, ROLE_CELL, ROLE_PRETRAIN, ROLE_STUDY, SPEC_ARTIFACT, TAG_CHAIN,
                               TAG_CONFIG_HASH, TAG_HEARTBEAT, TAG_HOST, TAG_MACHINE, TAG_PID, TAG_PROGRESS, TAG_RESET,
                               TAG_ROLE, TAG_RUNNER, TAG_SPEC_HASH, TAG_STAGE, TAG_STUDY, role_filter)
from ..tracking.layout import TAG_NOTE
from ..tracking.store import client as mlflow_client
from ..tracking.store import experiment_id, search_all_runs
from ..tracking.ui import REPORT_PAGE, run_page, set_study_view, study_metrics, study_view_link
from .grid import PlannedRun, expand, shard, weights_identity
from .pretrain import chain, stage_hash
from .similarity import log_study_similarity
from .spec import NAME_KEYS, SpecError, StudySpec

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 30.0


def stale_seconds() -> float:
    return float(os.environ.get("MEDXFER_STALE_SECONDS", "600"))


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def machine_id() -> str:
    """This machine, as far as process ids go: the kernel's boot id and this process's pid namespace
    (``boot:<uuid>/pid:[<inode>]``; two containers of one host differ) where ``/proc`` has them, else
    ``host:<hostname>``."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    if not boot:
        return f"host:{socket.gethostname()}"
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"boot:{boot}/{namespace}"


@dataclass(frozen=True)
class RunnerIdentity:
    """Who runs a run: host (for people), machine (:func:`machine_id`), process id and a random id
    of the process start (a restarted container may reuse both the hostname and the pid)."""

    host: str
    machine: str
    pid: int
    runner: str

    def tags(self) -> dict[str, str]:
        """The MLflow tags of a run this runner starts."""
        return {TAG_HOST: self.host, TAG_MACHINE: self.machine, TAG_PID: str(self.pid), TAG_RUNNER: self.runner}


_identity: RunnerIdentity | None = None


def runner_identity() -> RunnerIdentity:
    """This process's :class:`RunnerIdentity` (a new runner id in a forked child)."""
    global _identity
    if _identity is None or _identity.pid != os.getpid():
        _identity = RunnerIdentity(host=socket.gethostname(), machine=machine_id(), pid=os.getpid(),
                                   runner=uuid.uuid4().hex)
    return _identity


def _orphaned(run, me: RunnerIdentity, now: float) -> bool:
    """A RUNNING child whose runner is gone: started by this very runner (which runs one child at a
    time and has not started this one), or on this machine by a process that is dead or whose pid
    is now this process's (a restarted container); on another machine — a different machine id,
    whatever the hostname — its heartbeat is older than ``stale_seconds()``, never judged by pid.
    Runs of an older medxfer (no runner tag) are on this machine when their hostname is this one."""
    tags = run.data.tags
    if tags.get(TAG_RUNNER):
        if tags[TAG_RUNNER] == me.runner:
            return True
        local = tags.get(TAG_MACHINE) == me.machine
    else:
        local = tags.get(TAG_HOST) == me.host
    if local and tags.get(TAG_PID, "").isdigit():
        pid = int(tags[TAG_PID])
        if pid == me.pid or not _pid_alive(pid):
            return True
    beat = float(tags.get(TAG_HEARTBEAT) or run.info.start_time / 1000.0)
    return now - beat > stale_seconds()


def _reset_orphans(client, runs: list) -> list:
    """Mark the orphaned RUNNING runs among ``runs`` FAILED; returns the orphans (the other RUNNING
    runs are alive somewhere)."""
    me = runner_identity()
    orphans = [r for r in runs if r.info.status == "RUNNING" and _orphaned(r, me, time.time())]
    for r in orphans:
        client.set_terminated(r.info.run_id, status="FAILED")
        client.set_tag(r.info.run_id, TAG_RESET, "runner gone; marked FAILED and re-run")
    return orphans


def _stage_runs(client, exp_id: str | None, spec: StudySpec, name: str, encoder: str) -> tuple[str, list]:
    """(config hash, runs in the store) of pretraining stage ``name`` for ``encoder``."""
    config_hash = stage_hash(spec.stages, name, encoder, weights_identity)
    query = role_filter(spec.name, ROLE_PRETRAIN, **{TAG_CONFIG_HASH: config_hash})
    return config_hash, (search_all_runs(client, exp_id, query) if exp_id else [])


def _children_with_hash(client, exp_id: str, spec: StudySpec, config_hash: str) -> list:
    """The study's child runs of one configuration, as the store has them now (another runner on
    the same shard may have finished it since this one started)."""
    return search_all_runs(client, exp_id, role_filter(spec.name, ROLE_CELL, **{TAG_CONFIG_HASH: config_hash}))


class _Heartbeat:
    """Refresh the heartbeat tag on the RUNNING child of this process with a given hash."""

    def __init__(self, client, experiment_id: str):
        self.client, self.experiment_id = client, experiment_id
        self.config_hash: str | None = None
        self.runner = runner_identity().runner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="medxfer-heartbeat")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            h = self.config_hash
            if not h:
                continue
            try:
                for run in self.client.search_runs(
                        [self.experiment_id], filter_string=f"tags.`{TAG_CONFIG_HASH}` = '{h}' and "
                        f"tags.`{TAG_RUNNER}` = '{self.runner}' and attributes.status = 'RUNNING'"):
                    self.client.set_tag(run.info.run_id, TAG_HEARTBEAT, f"{time.time():.0f}")
            except Exception as exc:  # noqa: BLE001 - a missed beat is not an error
                log.debug("heartbeat failed: %s", exc)


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
        _, runs = _stage_runs(client, exp_id, spec, name, encoder)
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
            client.set_tag(run_id, TAG_NOTE, parent_note(spec, exp_id, run_id))
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


class StageFailed(MedxferError, RuntimeError):
    """A pretraining stage that could not produce its checkpoint (the runs that need it fail)."""


class _Stages:
    """Pretraining stage runs of one ``study run``: found FINISHED in the store, waited for while
    another runner trains them, or trained here; each (stage, encoder) once."""

    def __init__(self, client, exp_id: str, spec: StudySpec, parent_run_id: str, beat: "_Heartbeat",
                 echo: Callable[[str], None], runs_dir: Path, pins: dict[tuple[str, str], str] | None = None,
                 progress: StudyProgress | None = None):
        self.client, self.exp_id, self.spec, self.parent = client, exp_id, spec, parent_run_id
        self.beat, self.echo, self.runs_dir = beat, echo, runs_dir
        self.pins = pins or {}
        self.progress = progress or StudyProgress({}, mode=None)
        self.done: dict[tuple[str, str], str | StageFailed] = {}

    def run_id(self, name: str, encoder: str) -> str:
        """The MLflow run id of stage ``name`` for ``encoder`` (trained first if needed)."""
        key = (name, encoder)
        if key not in self.done:
            try:
                self.done[key] = self._ensure(name, encoder)
            except StageFailed as exc:
                self.done[key] = exc
        result = self.done[key]
        if isinstance(result, StageFailed):
            raise result
        return result

    def _ensure(self, name: str, encoder: str) -> str:
        stages = self.spec.stages
        stage = stages[name]
        start = stage.start
        if start in stages:
            try:
                start = f"run:{self.run_id(start, encoder)}"
            except StageFailed as exc:
                raise StageFailed(f"pretraining stage {name} needs {stage.start}: {exc}") from None
        announced = False
        while True:
            config_hash, runs = _stage_runs(self.client, self.exp_id, self.spec, name, encoder)
            finished = sorted((r for r in runs if r.info.status == "FINISHED"), key=lambda r: r.info.end_time or 0)
            if finished:
                self.progress.drop(f"pretrain/{name}/{encoder}")
                return finished[-1].info.run_id
            live = [r for r in runs if r.info.status == "RUNNING"]
            if len(_reset_orphans(self.client, live)) == len(live):
                break
            if not announced:
                self.echo(f"waiting for pretrain/{name}/{encoder}: another runner is training it")
                announced = True
            time.sleep(HEARTBEAT_SECONDS / 2)
        tags = {TAG_STUDY: self.spec.name, TAG_ROLE: ROLE_PRETRAIN, TAG_CONFIG_HASH: config_hash,
                TAG_STAGE: name, TAG_CHAIN: " → ".join(chain(stages, name)), "encoder": encoder,
                **runner_identity().tags(), TAG_HEARTBEAT: f"{time.time():.0f}"}
        pin = {"weights_sha256": self.pins[(start, encoder)]} if (start, encoder) in self.pins else {}
        run_name = f"pretrain/{name}/{encoder}"
        self.echo(f"[pretrain] {run_name} (from {stage.start})")
        self.beat.config_hash = config_hash
        on_epoch = self.progress.start(run_name)
        try:
            result = train_bundle("classification", manifest=str(stage.manifest), label=stage.label, fold=stage.fold,
                                  encoder=encoder, weights=start, experiment=self.spec.experiment,
                                  parent_run_id=self.parent, run_name=run_name, tags=tags,
                                  output_dir=str(self.runs_dir / self.spec.name / run_folder_name(run_name)),
                                  progress=on_epoch, **stage.data, **stage.train, **pin)
        except Exception as exc:  # noqa: BLE001 - reported on every run that needs the stage
            self.progress.end(finished=False)
            raise StageFailed(f"pretraining stage {name} for {encoder} failed: {error_summary(exc)}") from None
        finally:
            self.beat.config_hash = None
        self.progress.end()
        self.echo(f"  done test_auc {result.metrics.get('test_auc', float('nan')):.3f} (source task)")
        return str(result.run_id)


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


def quiet_engines(quiet: bool) -> None:
    """Per-epoch engine logs (MONAI's StatsHandler) off: a study prints one line per run instead."""
    for name in ("monai.handlers.StatsHandler", "ignite.engine.engine.SupervisedTrainer",
                 "ignite.engine.engine.SupervisedEvaluator"):
        logging.getLogger(name).disabled = quiet


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
        _, runs = _stage_runs(client, exp_id, spec, name, encoder)
        if not any(run.info.status == "FINISHED" for run in runs):
            planned[f"pretrain/{name}/{encoder}"] = _epochs(spec.stages[name].train.get("epochs"))
    planned.update({r.name: _epochs(r.overrides.get("epochs")) for r in todo})
    return planned


def run_study(spec: StudySpec, shard_index: tuple[int, int] = (1, 1),
              echo: Callable[[str], None] = lambda s: None, runs_dir: str | os.PathLike = "runs",
              quiet: bool = True, progress: str | None = None) -> StudyOutcome:
    """Run every not-yet-finished run of the shard; failures are recorded and the rest go on.
    ``quiet`` silences the per-epoch engine logs (the metrics are in MLflow). ``progress``: ``"lines"``
    echoes one line per epoch (epochs done / total, elapsed, run and study ETA; see
    :mod:`medxfer.engine.progress`), ``"bars"`` shows tqdm bars on stderr instead, None shows nothing."""
    check_progress_mode(progress)
    if spec.unimported_weights:  # before anything runs, not when the cells that need them are reached
        raise SpecError(spec.unimported_weights)
    quiet_engines(quiet)

    client = mlflow_client()
    runs = expand(spec)
    pins = weights_pins(spec, runs)  # as the config hashes saw the weights, now
    selected = shard(runs, *shard_index)
    outcome = StudyOutcome(total=len(runs), selected=len(selected), left_out=spec.sparse_grid().notes())
    exp_id = experiment_id(client, spec.experiment, create=True)
    set_study_view(client, exp_id, _grid_keys_named_first(spec), study_metrics(spec.task))
    outcome.parent_run_id = _parent_run(client, spec, exp_id)
    display_names = child_run_names(spec, runs)
    _log_grid(client, outcome.parent_run_id, spec, runs, outcome.left_out)
    if spec.similarity and shard_index[0] == 1:  # one shard measures it; the report reads it
        log_study_similarity(spec, client, outcome.parent_run_id, echo)
    _, by_hash = study_state(spec, runs, client)
    me = runner_identity()
    grid_keys = list(spec.grid)
    planned_runs = planned_epochs(client, exp_id, spec, selected, by_hash) if progress else {}
    display = StudyProgress(planned_runs, echo=echo, mode=progress)
    try:
        with terminate_raises():  # SIGTERM unwinds: the run in progress and the parent are marked FAILED
            _run_selected(client, exp_id, spec, selected, by_hash, outcome, runs_dir, pins, display, display_names,
                          grid_keys, me, echo)
    except BaseException as exc:  # Ctrl-C, SIGTERM (a SLURM time limit, a preemption): nothing stays RUNNING
        client.set_tag(outcome.parent_run_id, TAG_RESET, f"runner stopped ({type(exc).__name__}); marked FAILED")
        client.set_terminated(outcome.parent_run_id, status="FAILED")
        raise
    display.close()
    _, by_hash = study_state(spec, runs, client)
    outcome.done_in_grid = sum(any(c.info.status == "FINISHED" for c in by_hash.get(r.config_hash, []))
                               for r in runs)
    client.set_tag(outcome.parent_run_id, TAG_PROGRESS, f"{outcome.done_in_grid}/{outcome.total}")
    if outcome.complete:
        client.set_terminated(outcome.parent_run_id, status="FINISHED")
    elif outcome.failed:
        client.set_terminated(outcome.parent_run_id, status="FAILED")
    return outcome


def _run_selected(client, exp_id: str, spec: StudySpec, selected: list[PlannedRun], by_hash: dict[str, list],
                  outcome: StudyOutcome, runs_dir: str | os.PathLike, pins: dict, display: StudyProgress,
                  display_names: dict[str, str], grid_keys: list[str], me, echo: Callable[[str], None]) -> None:
    """The runs of the shard in order (:func:`run_study`'s loop): skip what is done or running elsewhere, reset
    orphans, train the rest with a heartbeat; a failed run is recorded in ``outcome`` and the rest go on."""
    with _Heartbeat(client, exp_id) as beat:
        stages = _Stages(client, exp_id, spec, outcome.parent_run_id, beat, echo, Path(runs_dir), pins, display)
        for planned in selected:
            children = by_hash.get(planned.config_hash, [])
            if not any(c.info.status == "FINISHED" for c in children):
                children = _children_with_hash(client, exp_id, spec, planned.config_hash)
            if any(c.info.status == "FINISHED" for c in children):
                outcome.already_done.append(planned.name)
                display.drop(planned.name)
                continue
            live = [c for c in children if c.info.status == "RUNNING"]
            orphans = _reset_orphans(client, live)
            outcome.reset.extend(planned.name for _ in orphans)
            if len(orphans) < len(live):
                outcome.running_elsewhere.append(planned.name)
                echo(f"skip {planned.name}: running elsewhere (heartbeat fresh)")
                display.drop(planned.name)
                continue
            tags = {**planned.tags(spec.name, grid_keys), **me.tags(), TAG_HEARTBEAT: f"{time.time():.0f}"}
            overrides = dict(planned.overrides)
            pin = pins.get((str(overrides.get("weights")), str(overrides.get("encoder"))))
            if pin and not planned.stage:
                overrides["weights_sha256"] = pin
            if planned.stage:
                try:
                    overrides["weights"] = f"run:{stages.run_id(planned.stage, str(overrides.get('encoder')))}"
                except StageFailed as exc:
                    outcome.failed.append((planned.name, str(exc)))
                    echo(f"  FAILED {planned.name}: {exc}")
                    display.drop(planned.name)
                    continue
            config = "train_features" if planned.feature_cache else "train"
            overrides.update(experiment=spec.experiment, parent_run_id=outcome.parent_run_id, tags=tags,
                             run_name=display_names[planned.config_hash],
                             output_dir=str(Path(runs_dir) / spec.name / run_folder_name(planned.name)))
            echo(f"[{planned.index + 1}/{outcome.total}] {planned.name}")
            beat.config_hash = planned.config_hash
            on_epoch = display.start(planned.name)
            try:
                result = train_bundle(spec.bundle, config=config, progress=on_epoch, **overrides)
            except Exception as exc:  # noqa: BLE001 - one failed run must not stop the study
                display.end(finished=False)
                reason = error_summary(exc)
                outcome.failed.append((planned.name, reason))
                echo(f"  FAILED: {reason}")
                continue
            finally:
                beat.config_hash = None
            display.end()
            outcome.ran.append((planned.name, result.run_id, result.metrics))
            metric = next((f"{k} {v:.3f}" for k, v in result.metrics.items() if k in ("test_auc", "test_dice")), "")
            echo(f"  done {metric}".rstrip())
