"""Feeding the device: how many loader processes a run gets, and a training step without host syncs.

``num_workers: auto`` (the bundles' default) is :func:`auto_num_workers`: the cores this process may
use (``$MEDXFER_CPUS_PER_RUN``, the share a study executor gives each of several runs on one machine,
else the process's CPU affinity), less one for the training loop itself; 0 on a single core, where a
worker process would only compete with it. Workers are persistent (not re-forked every epoch) and
batches are pinned on CUDA (:func:`loader_settings`).

A CUDA step that waits for the device is a step the loader cannot hide. With bf16 autocast MONAI's
trainer still scales the loss with a ``GradScaler``, whose ``step`` reads back whether a gradient
overflowed (``.item()``) on every iteration; bf16 has float32's range and needs no scaling, so
:func:`skip_bf16_grad_scaler` replaces it with a pass-through.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from ignite.engine import Engine, Events

CPUS_PER_RUN_ENV = "MEDXFER_CPUS_PER_RUN"  # set by the study executors: the cores one run may use
MAX_AUTO_WORKERS = 16  # beyond this, more processes cost memory and start-up without feeding a device faster


def machine_cpus() -> int:
    """The cores of this machine this process may run on: its CPU affinity set (a SLURM allocation, a
    container's cpuset), ``os.cpu_count()`` where the platform has no affinity."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def available_cpus() -> int:
    """The cores this run may use: ``$MEDXFER_CPUS_PER_RUN`` when set (a positive integer: an executor's
    share for the run), else :func:`machine_cpus`."""
    value = os.environ.get(CPUS_PER_RUN_ENV, "").strip()
    if value:
        try:
            cpus = int(value)
        except ValueError:
            raise ValueError(f"{CPUS_PER_RUN_ENV}={value!r}: a number of cores (a positive integer)") from None
        if cpus < 1:
            raise ValueError(f"{CPUS_PER_RUN_ENV}={value!r}: a number of cores (a positive integer)")
        return cpus
    return machine_cpus()


def cores_environment(cpus: int) -> dict[str, str]:
    """The environment that gives a process ``cpus`` cores: ``MEDXFER_CPUS_PER_RUN`` (what ``num_workers:
    auto`` counts) and ``OMP_NUM_THREADS`` (torch's threads, read when it is imported). The study executors
    and ``medxfer train --nproc`` give each run or rank its share this way."""
    return {CPUS_PER_RUN_ENV: str(cpus), "OMP_NUM_THREADS": str(cpus)}


def auto_num_workers(cuda: bool | None = None) -> int:
    """Loader worker processes for this run when it trains on a GPU (``cuda``; default: one is available):
    :func:`available_cpus` less one core for the training loop, at most :data:`MAX_AUTO_WORKERS`; 0 when
    that leaves none. On the CPU, 0: the cores train, and worker processes competing with them made a
    2-core run slower, not faster (a bundle test: 22 s with one worker, 10 s without)."""
    if not (torch.cuda.is_available() if cuda is None else cuda):
        return 0
    return max(0, min(available_cpus() - 1, MAX_AUTO_WORKERS))


def resolve_num_workers(value: Any, cuda: bool | None = None) -> int:
    """A bundle's ``num_workers`` as a number: ``"auto"`` (or None) is :func:`auto_num_workers` (``cuda``
    as there); a number (or its text) is taken as it is. Anything else is a one-line ``ValueError``."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return auto_num_workers(cuda)
    try:
        workers = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"num_workers is 'auto' or a number of loader processes, not {value!r}") from None
    if workers < 0 or (not isinstance(value, str) and workers != value):
        raise ValueError(f"num_workers is 'auto' or a number of loader processes, not {value!r}")
    return workers


def loader_settings(num_workers: Any, device: torch.device | str | None = None) -> dict[str, Any]:
    """``DataLoader`` keywords for a training or validation loader: the resolved ``num_workers``,
    ``persistent_workers`` when there are workers, ``pin_memory`` when batches go to CUDA."""
    cuda = device is not None and torch.device(device).type == "cuda"
    workers = resolve_num_workers(num_workers, cuda)
    return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": cuda}


class PassThroughScaler:
    """The ``GradScaler`` interface without scaling: ``step`` is the optimizer's step, nothing is read
    back from the device. For bf16 autocast, whose range needs no loss scaling."""

    def scale(self, outputs: Any) -> Any:
        """The loss as it is."""
        return outputs

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Nothing to unscale."""
        return None

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        """The optimizer's step, unconditionally (no overflow check)."""
        return optimizer.step(*args, **kwargs)

    def update(self, new_scale: Any = None) -> None:
        """Nothing to update."""
        return None

    def is_enabled(self) -> bool:
        """Never: no scaling happens."""
        return False

    def get_scale(self) -> float:
        """1: the loss is not scaled."""
        return 1.0

    def state_dict(self) -> dict:
        """No state."""
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        """No state to load."""
        return None


def skip_bf16_grad_scaler(trainer: Engine, amp_dtype: torch.dtype | None) -> None:
    """When ``trainer`` (a MONAI ``SupervisedTrainer``) autocasts to bf16, replace the ``GradScaler`` it
    makes in ``run()`` by a :class:`PassThroughScaler` as training starts: no per-step overflow check
    (a host sync). fp16 keeps its scaler: its range needs it."""
    if amp_dtype != torch.bfloat16 or not getattr(trainer, "amp", False):
        return

    @trainer.on(Events.STARTED)
    def _pass_through(engine) -> None:
        engine.scaler = PassThroughScaler()
