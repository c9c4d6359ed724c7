"""Where a study's runs execute: in this process one after the other, in a local process pool (one run
per GPU, or N CPU runs with the cores divided), or as Ray tasks (:mod:`.ray_executor`).

Every executor trains through :func:`~medxfer.study.execute.run_planned` and
:func:`~medxfer.study.execute.run_stage` (claims make it safe to run several executors on one spec at
once). The local pool's workers are spawned processes (never forked from a process holding MLflow and
torch threads); each is pinned to its GPU with ``CUDA_VISIBLE_DEVICES`` or given its share of the cores
(``OMP_NUM_THREADS``, ``torch.set_num_threads``, ``MEDXFER_CPUS_PER_RUN`` for the loader's
``num_workers: auto``) before it imports torch's kernels. A worker that dies (killed, out of memory) is
replaced and its run tried again up to ``resources.retries`` times: the dead worker's run, left RUNNING,
is an orphan (its pid is gone) that the retry marks FAILED and runs again. SIGTERM / Ctrl-C stop the
workers first (each marks its run FAILED), then the runner.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable

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


def _init_worker(slots, devices: list[str] | None, per_run: int, cpus: int) -> None:
    """A pool worker's start: pin it to its GPU(s) (one slot per worker), share the cores; SIGTERM (sent by
    the runner when it is stopped, or by the pool when another worker died) unwinds its run, marked FAILED,
    and ends the worker (:func:`_stopped`) instead of killing it mid-write."""
    slot = slots.get()
    if devices:
        first = (slot * per_run) % len(devices)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices[first:first + per_run])
    share_cores(cpus)
    worker_signals()


def _stopped() -> None:
    """A worker whose run was stopped (and marked FAILED) exits at once: the pool's worker loop would
    otherwise report the signal and start the next queued run, with SIGTERM now ignored."""
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


@dataclass
class _Job:
    planned: PlannedRun | None  # None for a pretraining stage
    stage: tuple[str, str] | None = None  # (stage, encoder) of a stage job
    stage_run_id: str | None = None
    attempts: int = 0


def run_local_pool(context: StudyContext, runs: list[PlannedRun], settings: ExecutorSettings,
                   echo: Callable[[str], None]) -> list[RunReport]:
    """The runs on a pool of ``settings.parallel()`` spawned worker processes; a run that needs a
    pretraining stage starts when the stage's run is FINISHED (stages of different encoders in parallel)."""
    parallel, cpus = settings.parallel(), settings.cpus_each()
    echo(f"local executor: {parallel} run(s) at once, {cpus} core(s) each"
         + (f", GPUs {','.join(device_ids(settings.gpus))}" if settings.gpus else ""))
    reports: dict[str, RunReport] = {}
    waiting: dict[tuple[str, str], list[PlannedRun]] = {}
    queue: list[_Job] = []
    for planned in runs:
        if planned.stage:
            key = (planned.stage, str(planned.overrides.get("encoder")))
            if key not in waiting:
                queue.append(_Job(None, stage=key))
            waiting.setdefault(key, []).append(planned)
        else:
            queue.append(_Job(planned))
    while queue:
        queue = _drain(context, queue, settings, parallel, cpus, waiting, reports, echo)
    return [reports[r.name] for r in runs if r.name in reports]


def _new_pool(parallel: int, settings: ExecutorSettings, cpus: int):
    """A spawned pool of ``parallel`` workers and the queue of GPU slots its initializer takes from."""
    ctx = multiprocessing.get_context("spawn")
    slots = ctx.Queue()
    for i in range(parallel * 64):  # a slot per worker start, replacements included
        slots.put(i % parallel)
    per_run = max(1, int(settings.gpus_per_run or 1))
    devices = device_ids(settings.gpus) if settings.gpus else None
    pool = ProcessPoolExecutor(max_workers=parallel, mp_context=ctx, initializer=_init_worker,
                               initargs=(slots, devices, per_run, cpus))
    return pool, slots


def _submit(pool: ProcessPoolExecutor, context: StudyContext, job: _Job) -> Future:
    if job.planned is None:
        return pool.submit(_pool_stage, context, *job.stage)
    return pool.submit(_pool_run, context, job.planned, job.stage_run_id)


def _drain(context: StudyContext, queue: list[_Job], settings: ExecutorSettings, parallel: int, cpus: int,
           waiting: dict[tuple[str, str], list[PlannedRun]], reports: dict[str, RunReport],
           echo: Callable[[str], None]) -> list[_Job]:
    """Run ``queue`` (and the runs that wait for its stages) on one pool until all are done or the pool
    breaks (a worker died); returns the jobs to try again on a new pool. Only a job that had started when
    the pool broke is charged an attempt (``resources.retries``); those still queued are not."""
    pool, slots = _new_pool(parallel, settings, cpus)
    retry: list[_Job] = []
    futures: dict[Future, _Job] = {}
    started: set[Future] = set()

    def submit(job: _Job) -> None:
        try:
            futures[_submit(pool, context, job)] = job
        except BrokenProcessPool:  # broke meanwhile: the job goes to the next pool, uncharged
            retry.append(job)

    try:
        with terminate_raises():
            for job in queue:
                submit(job)
            while futures:
                done, _ = wait(futures, timeout=1.0, return_when=FIRST_COMPLETED)
                started |= {f for f in futures if f.running()}
                for future in done:
                    job = futures.pop(future)
                    for extra in _collect(future, job, future in started, settings, waiting, reports, retry, echo):
                        submit(extra)
    except BaseException:
        _stop_workers(pool)
        raise
    finally:
        slots.close()
    pool.shutdown(wait=True, cancel_futures=True)
    return retry


def _collect(future: Future, job: _Job, had_started: bool, settings: ExecutorSettings, waiting: dict,
             reports: dict, retry: list[_Job], echo: Callable[[str], None]) -> list[_Job]:
    """Record a finished job; returns the jobs it releases (the runs waiting for a stage)."""
    try:
        result = future.result()
    except BrokenProcessPool:
        job.attempts += int(had_started)
        if job.attempts <= settings.retries:
            retry.append(job)
        else:
            _give_up(job, f"its worker was lost {job.attempts} time(s)", waiting, reports, echo)
        return []
    except StageFailed as exc:
        _give_up(job, str(exc), waiting, reports, echo)
        return []
    except Exception as exc:  # noqa: BLE001 - a worker's unexpected error fails its run, not the study
        _give_up(job, f"{type(exc).__name__}: {exc}", waiting, reports, echo)
        return []
    if job.planned is not None:
        reports[job.planned.name] = result
        return []
    return [_Job(p, stage_run_id=result) for p in waiting.pop(job.stage, [])]


def _give_up(job: _Job, reason: str, waiting: dict, reports: dict, echo: Callable[[str], None]) -> None:
    planned = [job.planned] if job.planned is not None else waiting.pop(job.stage, [])
    for p in planned:
        echo(f"  FAILED {p.name}: {reason}")
        reports[p.name] = RunReport(p.name, "failed", reason=reason)


STOP_GRACE_SECONDS = 20.0  # workers marking their runs FAILED; SLURM's default kill wait is 30 s


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel what is queued, SIGTERM every worker (each marks its run FAILED and exits), wait for them
    together for at most :data:`STOP_GRACE_SECONDS`, then SIGKILL the stragglers (their runs, left RUNNING,
    are orphans the next ``study run`` resets: their pids are gone)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        try:
            os.kill(process.pid, signal.SIGTERM)
        except (ProcessLookupError, TypeError):
            pass
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


__all__ = ["EXECUTORS", "ExecutorError", "ExecutorSettings", "device_ids", "parse_gpus",
           "run_local_pool", "run_sequential", "run_stage", "settings_for", "share_cores"]
