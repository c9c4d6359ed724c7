"""One training run on several processes: ``medxfer train BUNDLE --nproc N`` (DistributedDataParallel).

:func:`launch_training` starts N ranks with PyTorch's elastic launcher (what ``torchrun --standalone
--nproc_per_node N`` runs), each running the bundle's ``train.json`` + ``multi_gpu_train.json`` through
:func:`~medxfer.engine.bundles.train_bundle`: one GPU per rank (NCCL) when CUDA is present, else CPU
processes on gloo with the cores divided between them. Rank 0 alone writes the MLflow run
(:class:`~medxfer.engine.mlflow_run.RunTracker`), saves checkpoints and tests the best one.

What ``multi_gpu_train.json`` wires from here:

- :func:`rank_shard` gives each rank its part of ``train#dataset#data`` and ``validate#dataset#data``
  (:func:`monai.data.partition_dataset`), so a rank caches only its shard instead of the whole set;
  training samples are shuffled once with the seed and padded to equal shards (DDP needs the same
  number of steps on every rank), validation items are split without padding (nothing counted twice).
- Validation runs on every rank on its shard; the metrics gather what they need from all ranks
  (:func:`gather_objects`, used by :class:`~medxfer.engine.classification.ValidationAUC`), so
  ``val_auc`` on N ranks is the AUC of the whole validation set. The evaluator uses the plain module
  (a DDP forward is a collective, and validation shards may differ in length by one batch) after
  :func:`sync_buffers_before` copies rank 0's BatchNorm statistics to every rank.
- :func:`log_shards` records the world size and each rank's sample counts as run params.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.data import partition_dataset
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from ..core.errors import MedxferError
from ..core.signals import Terminated, terminate_raises
from .bundles import BundleError, TrainResult, error_summary, train_bundle
from .loaders import available_cpus, cores_environment

log = logging.getLogger(__name__)

DISTRIBUTED_CONFIG = "multi_gpu_train"  # configs/<this>.json of a bundle, added to train.json on every rank
RESULT_FILE = "result.json"  # rank 0's TrainResult, in the launch's temporary folder
SPEC_FILE = "launch.json"  # what every rank runs: bundle, overrides, log level
# a rank waits this long for the others (rank 0 tests the model while the others wait at a barrier)
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=2)


class DistributedTrainingError(MedxferError, RuntimeError):
    """A rank of a ``--nproc N`` run failed: the message is that rank's one-line reason."""


# ----------------------------------------------------------------------------- inside a rank

def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def join_process_group(timeout: datetime.timedelta = PROCESS_GROUP_TIMEOUT) -> int:
    """Join the process group the launcher describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``… in the
    environment) once, NCCL on CUDA else gloo; returns this process's rank. Every DDP entry of
    ``multi_gpu_train.json`` goes through here, so the order MONAI resolves them in does not matter."""
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            raise BundleError(f"configs/{DISTRIBUTED_CONFIG}.json runs one process per rank: start it with "
                              "`medxfer train BUNDLE --nproc N` or torchrun")
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)
    return dist.get_rank()


def rank_device() -> torch.device:
    """This rank's device (``cuda:LOCAL_RANK``, made current; else the CPU), after joining the group."""
    join_process_group()
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (picklable objects; every rank must call this, in the same
    order as its other collectives); ``[obj]`` when not distributed."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def rank_shard(samples: Sequence[dict], *, shuffle: bool = False, seed: int = 0, even_divisible: bool = False,
               group_key: str | None = None, role: str = "samples") -> list[dict]:
    """This rank's part of ``samples`` (all of them when not distributed), by
    :func:`monai.data.partition_dataset` over ``world_size`` partitions.

    Training: ``shuffle=True, seed=@seed, even_divisible=True`` (the same shuffle on every rank; shards
    of equal length, padded with repeats, since DDP steps together). Validation: ``group_key="item_id"``
    keeps the slice / frame samples of one volume or cine on one rank (its per-item result needs them
    all), no padding, so each item is evaluated once. Fewer samples (groups) than ranks is a
    :class:`BundleError`: a rank without data would stall the others."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a rank of a launch: in the group before it shards
        join_process_group()
    rank, world = rank_and_world()
    samples = list(samples)
    if world == 1:
        return samples
    if group_key is None:
        units: list[Any] = samples
    else:  # partition the groups (in order of appearance), then take their samples
        units = list(dict.fromkeys(str(s.get(group_key)) for s in samples))
    if len(units) < world:
        raise BundleError(f"{len(units)} {role} item(s) for {world} processes: every process needs at least one "
                          f"(use --nproc {max(len(units), 1)} or fewer)")
    part = partition_dataset(units, num_partitions=world, shuffle=shuffle, seed=seed,
                             even_divisible=even_divisible)[rank]
    if group_key is not None:
        mine = set(part)
        part = [s for s in samples if str(s.get(group_key)) in mine]
    log.info("rank %d/%d: %d of %d %s samples", rank, world, len(part), len(samples), role)
    return part


def broadcast_buffers(network: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) into every rank's copy of ``network``
    (a DDP wrapper or the module). DDP keeps parameters equal but each rank's last training forward
    updated its own statistics; after this every rank evaluates rank 0's model, the one it saves."""
    if rank_and_world()[1] == 1:
        return
    module = network.module if hasattr(network, "module") else network
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


def sync_buffers_before(evaluator, network: torch.nn.Module) -> None:
    """Run :func:`broadcast_buffers` at the start of each ``evaluator`` run (every rank validates)."""
    evaluator.add_event_handler(Events.STARTED, lambda engine: broadcast_buffers(network))


def shard_sizes(**datasets: Sequence) -> dict[str, list[int]]:
    """``{name: [len of each rank's dataset]}``, gathered from all ranks (every rank must call it)."""
    sizes = gather_objects({name: len(data) for name, data in datasets.items()})
    return {name: [int(s[name]) for s in sizes] for name in datasets}


def log_shards(tracker, **datasets: Sequence) -> dict[str, list[int]]:
    """Log ``ddp.world_size`` and ``ddp.<name>_samples_per_rank`` (what each rank holds and caches) to the
    run (rank 0's tracker writes; every rank must call this). Returns the gathered sizes."""
    sizes = shard_sizes(**datasets)
    world = rank_and_world()[1]
    if tracker is not None:
        tracker.log_params({"ddp.world_size": world,
                            **{f"ddp.{name}_samples_per_rank": json.dumps(n) for name, n in sizes.items()}})
    return sizes


# ----------------------------------------------------------------------------- launching the ranks

def rank_environment(nproc: int) -> dict[str, str]:
    """Environment every rank starts with: its share of the cores this run may use (``MEDXFER_CPUS_PER_RUN``,
    which sizes its loader workers, and ``OMP_NUM_THREADS``), so N ranks do not oversubscribe the machine."""
    return cores_environment(max(1, available_cpus() // nproc))


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` for the block (the launcher's ranks inherit it); restored after."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """The launcher installs its own SIGTERM/SIGINT/SIGHUP/SIGQUIT handlers and never restores them."""
    names = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
    kept = {sig: signal.getsignal(sig) for sig in (getattr(signal, n, None) for n in names) if sig is not None}
    env = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE")
    try:
        yield
    finally:
        for sig, handler in kept.items():
            with contextlib.suppress(ValueError, TypeError):  # ValueError: not the main thread
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if env is None:
            os.environ.pop("TORCHELASTIC_SIGNALS_TO_HANDLE", None)
        else:
            os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = env


@contextlib.contextmanager
def _launcher_logs_quiet() -> Iterator[None]:
    """The elastic agent's loggers (each set to WARNING by torch) silent for the block, unless medxfer logs
    at INFO (``-v``): its launch chatter and its failure report are not the user's one-line error."""
    if log.isEnabledFor(logging.INFO):
        yield
        return
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher"))]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise BundleError(f"--nproc {nproc}: give 1 or more processes")
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise BundleError(f"--nproc {nproc} but {torch.cuda.device_count()} GPU(s) visible: one process per GPU "
                          "(CUDA_VISIBLE_DEVICES selects them)")


def _failure_message(folder: Path, failures: dict) -> str:
    """The one-line reason of the rank that failed first: its own report (a rank ended by the launcher
    because another failed reports ``terminated``, never the cause), else its exit code or signal."""
    reports = []
    for path in folder.glob("error-*.json"):
        with contextlib.suppress(OSError, ValueError):
            reports.append(json.loads(path.read_text()))
    causes = sorted((r for r in reports if not r.get("terminated")), key=lambda r: r.get("time", 0))
    if causes:
        return str(causes[0]["message"])
    if failures:
        rank = min(failures, key=lambda r: failures[r].timestamp)
        failure = failures[rank]
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        return f"rank {rank} of the training ended with {how} and no message (out of memory?)"
    return str(reports[0]["message"]) if reports else "a rank of the training failed without a message"


def launch_training(bundle: str | os.PathLike, nproc: int, overrides: dict[str, Any] | None = None,
                    config: str = DISTRIBUTED_CONFIG) -> TrainResult:
    """Train ``bundle`` once on ``nproc`` processes (one per GPU when CUDA is present, else CPU on gloo)
    with ``configs/train.json`` + ``configs/<config>.json`` and ``overrides`` (the keywords of
    :func:`~medxfer.engine.bundles.train_bundle`). ``nproc`` 1 is :func:`train_bundle` in this process.

    Returns rank 0's :class:`TrainResult` (one MLflow run, written by rank 0). A failure of any rank is a
    :class:`DistributedTrainingError` with that rank's one-line reason (the other ranks are stopped and
    the run is marked FAILED); SIGTERM / SIGINT of this process stop the ranks the same way and raise
    :class:`~medxfer.core.signals.Terminated` / ``KeyboardInterrupt``."""
    overrides = dict(overrides or {})
    _check_nproc(nproc)
    if nproc == 1:
        return train_bundle(bundle, **overrides)
    with tempfile.TemporaryDirectory(prefix="medxfer-ddp-") as tmp:
        folder = Path(tmp)
        spec = {"bundle": str(bundle), "config": config, "overrides": overrides,
                "log_level": logging.getLogger().getEffectiveLevel()}
        (folder / SPEC_FILE).write_text(json.dumps(spec, default=str))
        launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                              rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                              monitor_interval=0.5, logs_specs=DefaultLogsSpecs(log_dir=str(folder / "logs")))
        try:
            with _signal_handlers_kept(), _environment(rank_environment(nproc)), _launcher_logs_quiet():
                elastic_launch(launch, sys.executable)("-m", __name__, str(folder))
        except ChildFailedError as exc:
            raise DistributedTrainingError(_failure_message(folder, exc.failures)) from None
        except SignalException as exc:  # the ranks were stopped with the same signal and marked the run FAILED
            if exc.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise Terminated() from None
        result = folder / RESULT_FILE
        if not result.is_file():
            raise DistributedTrainingError(f"the {nproc} training processes ended without rank 0's result")
        data = json.loads(result.read_text())
    return TrainResult(run_id=data["run_id"], run_name=data["run_name"], output_dir=Path(data["output_dir"]),
                       metrics={k: float(v) for k, v in data["metrics"].items()})


def _report_failure(folder: Path, rank: int, exc: BaseException) -> None:
    report = {"rank": rank, "time": time.time(), "terminated": isinstance(exc, (Terminated, KeyboardInterrupt)),
              "message": "terminated" if isinstance(exc, (Terminated, KeyboardInterrupt)) else error_summary(exc)}
    with contextlib.suppress(OSError):
        (folder / f"error-{rank}.json").write_text(json.dumps(report))


def rank_main(folder: str | os.PathLike) -> int:
    """One rank of :func:`launch_training` (``python -m medxfer.engine.distributed FOLDER``, started by the
    launcher with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set): runs the bundle, rank 0 writes the result.
    Returns the exit code (0, 1 on an error, 143 on SIGTERM)."""
    folder = Path(folder)
    spec = json.loads((folder / SPEC_FILE).read_text())
    logging.basicConfig(level=int(spec.get("log_level", logging.WARNING)), format="%(name)s: %(message)s")
    # quiet as the CLI is: an optional GPU codec absent, the store's first use
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    rank = int(os.environ.get("RANK", "0"))
    try:
        with terminate_raises():  # the launcher stops the other ranks with SIGTERM: mark the run FAILED
            result = train_bundle(spec["bundle"], spec.get("config", DISTRIBUTED_CONFIG), **spec["overrides"])
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the launcher, as one line
        log.debug("rank %d failed", rank, exc_info=exc)
        _report_failure(folder, rank, exc)
        return 143 if isinstance(exc, Terminated) else 1
    if rank == 0:
        data = {"run_id": result.run_id, "run_name": result.run_name, "output_dir": str(result.output_dir),
                "metrics": {k: float(v) for k, v in result.metrics.items()}}
        (folder / RESULT_FILE).write_text(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1]))
