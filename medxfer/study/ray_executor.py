"""The Ray executor: each run of a study is a Ray task, on a local Ray instance or a cluster.

Each task asks for ``resources.cpus_per_run`` cores and ``resources.gpus_per_run`` GPUs (Ray pins the
GPU with ``CUDA_VISIBLE_DEVICES``); a pretraining stage is a task too, and the runs that start from it
take its result as an argument, so Ray starts them once the stage's run is FINISHED (a chain of stages
the same way). A task whose worker dies (killed, out of memory, a lost node) is retried by Ray up to
``resources.retries`` times; the retry knows the RUNNING run its earlier attempt left (tagged with the
task's id, which Ray keeps across attempts) for an orphan, marks it FAILED and runs again, whichever
node it lands on. Every task trains through :func:`~medxfer.study.execute.run_planned` /
:func:`~medxfer.study.execute.run_stage`, whose claims keep two runners (any executor) off one config.

Workers get the driver's ``MLFLOW_*`` and ``MEDXFER_*`` environment (the tracking store, its artifact
root, ``MEDXFER_HOME``) through the job's runtime environment — less its secrets (passwords, tokens, a
tracking URI's ``user:password@``): Ray shows a job's runtime environment to whoever reaches its dashboard
or job API, so those are the nodes' own to hold (a Kubernetes Secret, the SLURM job's environment). On a
cluster the nodes need medxfer installed and the cohort, weights and store reachable at the same paths
(``docs/clusters.md``).

Ray is an optional extra (``pip install 'medxfer[ray]'``): imported here, at the top, guarded, so that
``--executor local`` works without it and ``--executor ray`` says what to install.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import time
from typing import Callable

from ..engine.loaders import machine_cpus
from ..core.signals import Terminated, sigterm_received
from ..tracking.store import without_password
from .claims import TASK_ENV
from .execute import RunReport, StudyContext, run_planned, run_stage
from .executors import ExecutorError, ExecutorSettings, device_ids, share_cores
from .grid import PlannedRun

try:  # optional: the `ray` extra
    import ray
except ImportError:  # pragma: no cover - exercised where ray is not installed
    ray = None

FORWARDED_ENV_PREFIXES = ("MLFLOW_", "MEDXFER_")
SECRET_ENV_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|(^|_)KEY($|_)", re.IGNORECASE)
RAY_MISSING = ("--executor ray needs Ray, an optional extra: pip install 'medxfer[ray]' "
               "(or use --executor local)")


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _as_task(cpus: int) -> None:
    """A task's start: its share of the cores, and the task id its runs are tagged with (kept by retries)."""
    share_cores(cpus)
    os.environ[TASK_ENV] = ray.get_runtime_context().get_task_id() or ""


def _ray_run(context: StudyContext, planned: PlannedRun, stage_run_id: str | None, cpus: int) -> RunReport:
    _as_task(cpus)
    return run_planned(context, planned, stage_run_id, echo=_echo)


def _ray_stage(context: StudyContext, name: str, encoder: str, start_run_id: str | None, cpus: int) -> str:
    _as_task(cpus)
    return run_stage(context, name, encoder, start_run_id, echo=_echo)


def forwarded_env(environ: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """``(variables, withheld)``: the driver's environment (``environ``, default ``os.environ``) a
    cluster's workers need — every ``MLFLOW_*`` and ``MEDXFER_*`` variable — less the secrets among them:
    variables named with PASSWORD, TOKEN, SECRET, CREDENTIAL or KEY are not sent, a URI is sent without its
    password (:func:`without_password`); ``withheld`` names both kinds."""
    environ = dict(os.environ if environ is None else environ)
    variables, withheld = {}, []
    for name, value in sorted(environ.items()):
        if not name.startswith(FORWARDED_ENV_PREFIXES):
            continue
        clean = None if SECRET_ENV_NAME.search(name) else without_password(value)
        if clean != value:
            withheld.append(name)
        if clean is not None:
            variables[name] = clean
    return variables, withheld


def cluster_unreachable(address: str, exc: BaseException) -> str:
    """Why ``study run`` could not join the Ray cluster at ``address``, with what to check: the address, and
    Ray's token authentication (on by default for clusters started with ``ray start`` since Ray 2.59; a
    driver that does not set ``RAY_AUTH_MODE=token`` is turned away)."""
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    mode = os.environ.get("RAY_AUTH_MODE")
    auth = ("RAY_AUTH_MODE=token is set: check that the token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
            "~/.ray/auth_token) is the cluster's" if mode == "token" else
            f"RAY_AUTH_MODE is {'unset' if mode is None else repr(mode)}: a cluster with token authentication "
            "(the default of `ray start` since Ray 2.59) turns this driver away; set RAY_AUTH_MODE=token, with the "
            "cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN")
    return (f"--executor ray: cannot join the Ray cluster at {address} ({type(exc).__name__}: {first}). Check that "
            f"the address is the head node's (ray start --head prints it) and reachable from here; {auth} "
            "(docs/clusters.md).")


def _init_ray(**kwargs) -> None:
    """``ray.init(**kwargs)``, with this process's SIGTERM handler put back afterwards: ``ray.init`` replaces
    it with one that calls ``sys.exit``, which would end the driver without cancelling its tasks (a SLURM time
    limit would leave the runs to Ray's shutdown, and the exit code would not say SIGTERM)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(**kwargs)
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _start_ray(settings: ExecutorSettings, echo: Callable[[str], None]) -> bool:
    """Connect to the cluster at ``settings.address`` (or ``$RAY_ADDRESS``) or start a local Ray instance
    (with the GPUs asked for, ``--gpus``, else the machine's); returns whether this call connected (and so
    disconnects at the end). A cluster's workers get the tracking settings through the job's runtime
    environment (:func:`forwarded_env`); a local instance's inherit this process's environment."""
    if ray.is_initialized():
        return False
    address = settings.address or os.environ.get("RAY_ADDRESS")  # Ray's own variable names a cluster too
    if address:
        variables, withheld = forwarded_env()
        if withheld:
            echo(f"ray: not sent to the cluster's workers (Ray shows a job's environment on its dashboard): the "
                 f"secrets in {', '.join(withheld)}; the nodes must hold their own (docs/clusters.md)")
        try:
            _init_ray(address=address, runtime_env={"env_vars": variables}, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError) as exc:
            raise ExecutorError(cluster_unreachable(address, exc)) from exc
        return True
    gpus = {}
    if settings.gpus:  # only those; else Ray detects this machine's GPUs
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(device_ids(settings.gpus))
        gpus = {"num_gpus": len(settings.gpus)}
    _init_ray(address="local", num_cpus=machine_cpus(), include_dashboard=False, logging_level=logging.WARNING,
              **gpus)
    return True


def _per_run(settings: ExecutorSettings, resources: dict, local: bool) -> tuple[int, float]:
    """(CPUs, GPUs) each run task asks for: ``resources`` when the spec sets them; else one GPU when the
    cluster has GPUs, and the cluster's CPUs per GPU (a GPU run needs loader cores), or on a local instance
    the cores divided among ``--max-parallel`` runs, else one CPU. A request no node of a local instance can
    meet is an :class:`ExecutorError` (Ray would wait for it for ever)."""
    total_cpus, total_gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    gpus = settings.gpus_per_run if settings.gpus_per_run is not None else (1 if total_gpus >= 1 else 0)
    if settings.cpus_per_run:
        cpus = settings.cpus_per_run
    elif gpus and total_gpus:
        cpus = max(1, int(total_cpus // max(1, total_gpus / gpus)))
    elif local:
        cpus = max(1, int(total_cpus) // (settings.max_parallel or 1))
    else:
        cpus = 1
    if local and (cpus > total_cpus or gpus > total_gpus):
        raise ExecutorError(f"resources: a run asks for {cpus} CPU(s) and {gpus:g} GPU(s); this machine's Ray "
                            f"instance has {total_cpus:g} CPU(s) and {total_gpus:g} GPU(s)")
    return cpus, gpus


def run_ray(context: StudyContext, runs: list[PlannedRun], settings: ExecutorSettings,
            echo: Callable[[str], None]) -> list[RunReport]:
    """The runs as Ray tasks (at most ``settings.max_parallel`` in flight when set); pretraining stages are
    task dependencies of the runs that use them. Start-up (connecting, starting a local instance) is
    echoed separately from the runs."""
    if ray is None:
        raise ExecutorError(RAY_MISSING)
    began = time.monotonic()
    owned = _start_ray(settings, echo)
    resources = ray.cluster_resources()
    local = not (settings.address or os.environ.get("RAY_ADDRESS"))
    try:
        cpus, gpus_per_run = _per_run(settings, resources, local)
    except ExecutorError:
        if owned:
            ray.shutdown()
        raise
    echo(f"ray executor: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; {cpus} CPU(s) and "
         f"{gpus_per_run:g} GPU(s) per run; started in {time.monotonic() - began:.1f} s")
    options = dict(num_cpus=cpus, num_gpus=gpus_per_run, max_retries=settings.retries)
    run_task = ray.remote(_ray_run).options(**options)
    stage_task = ray.remote(_ray_stage).options(**options)
    stage_refs: dict[tuple[str, str], object] = {}

    def stage_ref(name: str, encoder: str):
        if (name, encoder) not in stage_refs:
            start = context.spec.stages[name].start
            before = stage_ref(start, encoder) if start in context.spec.stages else None
            stage_refs[(name, encoder)] = stage_task.remote(context, name, encoder, before, cpus)
        return stage_refs[(name, encoder)]

    todo = list(runs)
    pending: dict[object, PlannedRun] = {}
    reports: dict[str, RunReport] = {}
    window = settings.max_parallel or len(todo) or 1
    try:
        while todo or pending:
            while todo and len(pending) < window:
                planned = todo.pop(0)
                before = stage_ref(planned.stage, str(planned.overrides.get("encoder"))) if planned.stage else None
                pending[run_task.remote(context, planned, before, cpus)] = planned
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                planned = pending.pop(ref)
                reports[planned.name] = _report(ref, planned, echo)
    except BaseException as exc:  # SIGTERM / Ctrl-C: each task's run is marked FAILED before the workers go
        refs = list(pending) + list(stage_refs.values())
        for ref in refs:
            ray.cancel(ref)
        ray.wait(refs, num_returns=len(refs), timeout=20)
        if owned:
            ray.shutdown()
        if isinstance(exc, SystemExit) and not isinstance(exc, Terminated) and sigterm_received():
            raise Terminated() from exc  # ray.wait made the handler's Terminated a SystemExit(1)
        raise
    if owned:
        ray.shutdown()
    return [reports[r.name] for r in runs]


def _report(ref, planned: PlannedRun, echo: Callable[[str], None]) -> RunReport:
    """The task's :class:`RunReport`; a task that failed (its stage failed, its worker was lost more than
    ``retries`` times) is a ``failed`` report with the reason."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    except ray.exceptions.RayError as exc:  # worker or node lost beyond the retries
        reason = f"its Ray worker was lost ({type(exc).__name__})"
    echo(f"  FAILED {planned.name}: {reason}")
    return RunReport(planned.name, "failed", reason=reason)


__all__ = ["RAY_MISSING", "cluster_unreachable", "forwarded_env", "run_ray"]
