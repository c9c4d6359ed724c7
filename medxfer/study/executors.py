"""Where a study's runs execute: in this process one after the other, in a local process pool (one run
per GPU, or N CPU runs with the cores divided), or as Ray tasks (:mod:`.ray_executor`).

Every executor trains through :func:`~medxfer.study.execute.run_planned` and
:func:`~medxfer.study.execute.run_stage` (claims make it safe to run several executors on one spec at
once). The local pool's workers are spawned processes (never forked from a process holding MLflow and
torch threads); each is pinned to its GPU with ``CUDA_VISIBLE_DEVICES`` or given its share of the cores
(``OMP_NUM_THREADS``, ``torch.set_num_threads``, ``MEDXFER_CPUS_PER_RUN`` for the loader's
``num_workers: auto``) before it imports torch's kernels. A worker that dies (killed, out of memory) is
replaced and its run — only its run: the other workers' runs go on — tried again up to
``resources.retries`` times: the dead worker's run, left RUNNING, is an orphan (its pid is gone) that the
retry marks FAILED and runs again. SIGTERM / Ctrl-C stop the workers first (each marks its run FAILED),
then the runner.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as connection_wait
from typing import Any, Callable

import torch

from ..core.errors import MedxferError
from ..core.signals import Terminated, terminate_raises, worker_signals
from ..engine.loaders import cores_environment, machine_cpus
from ..engine.progress import StudyProgress
from .execute import RunReport, StageFailed, StageResolver, StudyContext, run_planned, run_stage, run_with_stages
from .grid import PlannedRun

EXECUTORS = ("local", "ray")


class ExecutorError(MedxferError, ValueError):
    """An executor that cannot be used as asked (an unknown name, GPUs that are not there, Ray missing)."""


@dataclass(frozen=True)
class ExecutorSettings:
    """How ``study run`` executes: ``executor`` (``local`` or ``ray``), the GPUs to use (indices; None: none
    asked), runs in parallel, the Ray address (None: a local Ray instance) and the spec's ``resources``."""

    executor: str = "local"
    gpus: tuple[int, ...] | None = None
    max_parallel: int | None = None
    address: str | None = None
    gpus_per_run: float | None = None
    cpus_per_run: int | None = None
    retries: int = 2

    def parallel(self) -> int:
        """Runs at once on this machine: ``max_parallel``, else one per GPU, else one."""
        if self.max_parallel:
            return self.max_parallel
        if self.gpus:
            per_run = self.gpus_per_run or 1
            return max(1, int(len(self.gpus) / per_run)) if per_run >= 1 else len(self.gpus)
        return 1

    def cpus_each(self) -> int:
        """Cores per run: ``resources.cpus_per_run``, else this machine's cores divided among the parallel runs."""
        return self.cpus_per_run or max(1, machine_cpus() // self.parallel())


def parse_gpus(text: str | None, visible: int) -> tuple[int, ...] | None:
    """``--gpus``: ``all`` (the ``visible`` GPUs) or ``0,1,…``; None when not given. An index that is not
    there, or ``all`` with no GPU, is an :class:`ExecutorError`."""
    if text is None or text == "":
        return None
    if text.strip().lower() == "all":
        if visible == 0:
            raise ExecutorError("--gpus all: no GPU is visible to this process (CUDA_VISIBLE_DEVICES, drivers)")
        return tuple(range(visible))
    try:
        gpus = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ExecutorError(f"--gpus {text!r}: 'all' or GPU indices such as 0,1") from None
    bad = [g for g in gpus if g < 0 or g >= visible]
    if bad or not gpus or len(set(gpus)) != len(gpus):
        raise ExecutorError(f"--gpus {text!r}: {visible} GPU(s) visible (indices 0..{visible - 1})"
                            if visible else f"--gpus {text!r}: no GPU is visible to this process")
    return gpus


def device_ids(indices: tuple[int, ...]) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` entries of GPU ``indices`` as this process numbers them: through this
    process's own ``CUDA_VISIBLE_DEVICES`` when set (a SLURM job, a shared machine: index 0 may be physical
    GPU 2, a UUID or a MIG device), else the indices themselves."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return [visible[i] if i < len(visible) else str(i) for i in indices] if visible else [str(i) for i in indices]


def settings_for(executor: str, gpus: tuple[int, ...] | None, max_parallel: int | None, address: str | None,
                 resources: dict) -> ExecutorSettings:
    """:class:`ExecutorSettings` from the command line and the spec's ``resources``, checked."""
    if executor not in EXECUTORS:
        raise ExecutorError(f"executor {executor!r}: one of {', '.join(EXECUTORS)}")
    if max_parallel is not None and max_parallel < 1:
        raise ExecutorError(f"--max-parallel {max_parallel}: at least 1")
    if address and executor != "ray":
        raise ExecutorError("--address names a Ray cluster: use it with --executor ray")
    return ExecutorSettings(executor=executor, gpus=gpus, max_parallel=max_parallel, address=address,
                            gpus_per_run=resources.get("gpus_per_run"), cpus_per_run=resources.get("cpus_per_run"),
                            retries=int(resources.get("retries", 2)))


def share_cores(cpus: int) -> None:
    """Give this process ``cpus`` cores: OpenMP / torch threads and the loader's ``num_workers: auto``."""
    os.environ.update(cores_environment(cpus), MKL_NUM_THREADS=str(cpus))
    torch.set_num_threads(cpus)  # torch read OMP_NUM_THREADS when it was imported


# ---- in this process


def run_sequential(context: StudyContext, runs: list[PlannedRun], echo: Callable[[str], None],
                   display: StudyProgress | None = None) -> list[RunReport]:
    """The runs one after the other in this process (pretraining stages trained when first needed)."""
    stages = StageResolver(context, echo, display)
    return [run_with_stages(context, planned, stages, echo=echo, progress=display) for planned in runs]


# ---- a local process pool


def _stderr_echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _init_worker(slot: int, devices: list[str] | None, per_run: int, cpus: int) -> None:
    """A pool worker's start: pin it to its slot's GPU(s), share the cores; SIGTERM (sent by the runner when
    it is stopped) unwinds its run, marked FAILED, and ends the worker (:func:`_stopped`) instead of killing
    it mid-write."""
    if devices:
        first = (slot * per_run) % len(devices)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices[first:first + per_run])
    share_cores(cpus)
    worker_signals()


def _stopped() -> None:
    """A worker whose run was stopped (and marked FAILED) exits at once, before it could take another job."""
    sys.stderr.flush()
    os._exit(143)


def _pool_run(context: StudyContext, planned: PlannedRun, stage_run_id: str | None) -> RunReport:
    try:
        return run_planned(context, planned, stage_run_id, echo=_stderr_echo)
    except (Terminated, KeyboardInterrupt):
        _stopped()


def _pool_stage(context: StudyContext, name: str, encoder: str) -> str:
    try:
        return StageResolver(context, _stderr_echo).run_id(name, encoder)
    except (Terminated, KeyboardInterrupt):
        _stopped()


def _worker_main(conn: Connection, slot: int, devices: list[str] | None, per_run: int, cpus: int) -> None:
    """A pool worker's life: set up once (:func:`_init_worker`), then run the jobs the runner sends over
    ``conn`` one at a time, answering ``("ok", result)``, ``("stage", reason)`` (a stage that cannot be
    had) or ``("error", reason)``; ends on None or when the runner is gone. ``("ready", None)`` first, once
    set up: a worker that dies before it is an :class:`_Worker` that could not start, not a lost run."""
    _init_worker(slot, devices, per_run, cpus)
    conn.send(("ready", None))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        kind, args = task
        try:
            answer = ("ok", _pool_stage(*args) if kind == "stage" else _pool_run(*args))
        except StageFailed as exc:
            answer = ("stage", str(exc))
        except Exception as exc:  # noqa: BLE001 - a run's unexpected error fails that run, not the worker
            answer = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(answer)
        except (EOFError, OSError):
            return  # the runner is gone
        except Exception as exc:  # noqa: BLE001 - an answer that cannot be pickled: say so, stay alive
            conn.send(("error", f"its result could not be sent back ({type(exc).__name__}: {exc})"))


@dataclass
class _Job:
    planned: PlannedRun | None  # None for a pretraining stage
    stage: tuple[str, str] | None = None  # (stage, encoder) of a stage job
    stage_run_id: str | None = None
    attempts: int = 0

    @property
    def name(self) -> str:
        return self.planned.name if self.planned is not None else f"pretraining stage {self.stage[0]}"

    def task(self, context: StudyContext) -> tuple[str, tuple]:
        """What a worker is sent for this job."""
        if self.planned is None:
            return "stage", (context, *self.stage)
        return "run", (context, self.planned, self.stage_run_id)


class _Worker:
    """One spawned worker process of the local pool, bound for life to a slot (its GPUs), fed one job at a
    time over a pipe. Unlike a ``concurrent.futures`` pool, where one dead worker breaks the whole pool and
    takes every run in progress with it, a worker that dies here loses its own job only."""

    def __init__(self, ctx, slot: int, settings: ExecutorSettings, cpus: int):
        self.slot = slot
        self.conn, child = ctx.Pipe()
        devices = device_ids(settings.gpus) if settings.gpus else None
        per_run = max(1, int(settings.gpus_per_run or 1))
        self.process = ctx.Process(target=_worker_main, args=(child, slot, devices, per_run, cpus),
                                   name=f"medxfer-worker-{slot}")
        self.process.start()
        child.close()
        self.job: _Job | None = None
        self.ready = False  # set up (its "ready" message read): from then on its death loses its job

    def answer(self) -> tuple[str, Any] | None:
        """The worker's answer to its job when one has come (a "ready" message on the way is noted)."""
        while True:
            try:
                if not self.conn.poll():
                    return None
                status, value = self.conn.recv()
            except (EOFError, OSError):
                return None
            if status != "ready":
                return status, value
            self.ready = True

    def send(self, job: _Job, context: StudyContext) -> bool:
        """Give the worker ``job``; False when it is gone (the job was never started)."""
        try:
            self.conn.send(job.task(context))
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            return False
        self.job = job
        return True

    def lost_reason(self) -> str:
        """Why the worker's process ended, in words (a signal's name: SIGKILL is the out-of-memory killer's)."""
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"


def run_local_pool(context: StudyContext, runs: list[PlannedRun], settings: ExecutorSettings,
                   echo: Callable[[str], None]) -> list[RunReport]:
    """The runs on ``settings.parallel()`` spawned worker processes; a run that needs a pretraining stage
    starts when the stage's run is FINISHED (stages of different encoders in parallel). A worker that dies
    is replaced; its job (only) is tried again, up to ``resources.retries`` times."""
    parallel, cpus = settings.parallel(), settings.cpus_each()
    echo(f"local executor: {parallel} run(s) at once, {cpus} core(s) each"
         + (f", GPUs {','.join(device_ids(settings.gpus))}" if settings.gpus else ""))
    reports: dict[str, RunReport] = {}
    waiting: dict[tuple[str, str], list[PlannedRun]] = {}
    queue: deque[_Job] = deque()
    for planned in runs:
        if planned.stage:
            key = (planned.stage, str(planned.overrides.get("encoder")))
            if key not in waiting:
                queue.append(_Job(None, stage=key))
            waiting.setdefault(key, []).append(planned)
        else:
            queue.append(_Job(planned))
    ctx = multiprocessing.get_context("spawn")
    workers: list[_Worker | None] = [None] * parallel
    unstartable = 0  # workers in a row that died before they were set up

    def not_started(worker: _Worker, job: _Job) -> None:
        """``worker`` died before it was set up: ``job`` never ran (queued again, uncharged)."""
        nonlocal unstartable
        queue.appendleft(job)
        workers[worker.slot], unstartable = None, unstartable + 1
        if unstartable > 2 * parallel + 2:
            raise ExecutorError(f"the local pool's worker processes die as they start (the last "
                                f"{worker.lost_reason()}): see the messages above")

    try:
        with terminate_raises():
            while queue or any(w is not None and w.job is not None for w in workers):
                for slot in range(parallel):
                    while queue and (workers[slot] is None or workers[slot].job is None):
                        if workers[slot] is None or not workers[slot].process.is_alive():
                            workers[slot] = _Worker(ctx, slot, settings, cpus)
                        job = queue.popleft()
                        if not workers[slot].send(job, context):  # died meanwhile: a new one, job uncharged
                            not_started(workers[slot], job)
                busy = [w for w in workers if w is not None and w.job is not None]
                connection_wait([h for w in busy for h in (w.conn, w.process.sentinel)], timeout=1.0)
                for w in busy:
                    alive = w.process.is_alive()  # before reading: an answer sent before dying is read
                    answer = w.answer()
                    if answer is not None:
                        queue.extend(_record(w, answer, waiting, reports, echo))
                    elif not alive and not w.ready:
                        job, w.job = w.job, None
                        not_started(w, job)
                    elif not alive:
                        queue.extend(_lost(w, settings, waiting, reports, echo))
                    if w.ready:
                        unstartable = 0
                    if w.job is None and not w.process.is_alive():
                        workers[w.slot] = None
    except BaseException:
        _stop_workers([w for w in workers if w is not None])
        raise
    _close_workers([w for w in workers if w is not None])
    return [reports[r.name] for r in runs if r.name in reports]


def _record(worker: _Worker, answer: tuple[str, Any], waiting: dict, reports: dict,
            echo: Callable[[str], None]) -> list[_Job]:
    """The worker's answer to its job, recorded; returns the jobs it releases (the runs that waited for a
    stage)."""
    job, worker.job = worker.job, None
    status, value = answer
    if status != "ok":
        _give_up(job, value, waiting, reports, echo)
        return []
    if job.planned is not None:
        reports[job.planned.name] = value
        return []
    return [_Job(p, stage_run_id=value) for p in waiting.pop(job.stage, [])]


def _lost(worker: _Worker, settings: ExecutorSettings, waiting: dict, reports: dict,
          echo: Callable[[str], None]) -> list[_Job]:
    """The worker died in its job: the job again (charged an attempt), or failed after ``retries``."""
    job, worker.job = worker.job, None
    job.attempts += 1
    reason = f"its worker was {worker.lost_reason()}"
    if job.attempts <= settings.retries:
        echo(f"  {job.name}: {reason}; trying again ({job.attempts} of {settings.retries} retries)")
        return [job]
    _give_up(job, f"{reason}, {job.attempts} time(s)", waiting, reports, echo)
    return []


def _give_up(job: _Job, reason: str, waiting: dict, reports: dict, echo: Callable[[str], None]) -> None:
    planned = [job.planned] if job.planned is not None else waiting.pop(job.stage, [])
    for p in planned:
        echo(f"  FAILED {p.name}: {reason}")
        reports[p.name] = RunReport(p.name, "failed", reason=reason)


STOP_GRACE_SECONDS = 20.0  # workers marking their runs FAILED; SLURM's default kill wait is 30 s


def _close_workers(workers: list[_Worker]) -> None:
    """The idle workers told to end, and waited for (killed after :data:`STOP_GRACE_SECONDS`)."""
    for w in workers:
        try:
            w.conn.send(None)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            pass
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for w in workers:
        w.process.join(timeout=max(0.0, deadline - time.monotonic()))
        if w.process.is_alive():
            w.process.kill()
            w.process.join(timeout=5)
        w.conn.close()


def _stop_workers(workers: list[_Worker]) -> None:
    """SIGTERM every worker (each marks its run FAILED and exits), wait for them together for at most
    :data:`STOP_GRACE_SECONDS`, then SIGKILL the stragglers (their runs, left RUNNING, are orphans the next
    ``study run`` resets: their pids are gone)."""
    for w in workers:
        if w.process.exitcode is None:  # never a pid that was this worker's and may be another's now
            try:
                os.kill(w.process.pid, signal.SIGTERM)
            except (ProcessLookupError, TypeError):
                pass
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for w in workers:
        w.process.join(timeout=max(0.0, deadline - time.monotonic()))
    for w in workers:
        if w.process.is_alive():
            w.process.kill()
            w.process.join(timeout=5)


__all__ = ["EXECUTORS", "ExecutorError", "ExecutorSettings", "device_ids", "parse_gpus",
           "run_local_pool", "run_sequential", "run_stage", "settings_for", "share_cores"]
