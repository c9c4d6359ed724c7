"""Loader settings: ``num_workers: auto`` from the cores a run may use, persistent workers, pinned memory, and the
bf16 trainer step without a GradScaler read-back."""
from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from medxfer.engine.loaders import (CPUS_PER_RUN_ENV, MAX_AUTO_WORKERS, PassThroughScaler, auto_num_workers,
                                    available_cpus, loader_settings, resolve_num_workers, skip_bf16_grad_scaler)


@pytest.fixture
def cores(monkeypatch):
    """Pretend this process may run on ``n`` cores (its CPU affinity), with no executor share set, and
    has a GPU to feed."""
    monkeypatch.delenv(CPUS_PER_RUN_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def set_cores(n: int) -> None:
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(n)))

    return set_cores


@pytest.mark.parametrize("affinity, workers", [(1, 0), (2, 1), (8, 7), (64, MAX_AUTO_WORKERS)])
def test_auto_workers_leave_one_core_for_the_training_loop(cores, affinity, workers):
    cores(affinity)
    assert available_cpus() == affinity
    assert auto_num_workers() == workers == resolve_num_workers("auto") == resolve_num_workers(None)


def test_the_executors_share_wins_over_the_affinity(cores, monkeypatch):
    """Several runs on one machine: each gets the cores the executor gave it, not the whole machine's."""
    cores(32)
    monkeypatch.setenv(CPUS_PER_RUN_ENV, "4")
    assert auto_num_workers() == 3
    monkeypatch.setenv(CPUS_PER_RUN_ENV, "1")
    assert auto_num_workers() == 0


@pytest.mark.parametrize("value", ["zero", "0", "-2", "1.5"])
def test_a_bad_executor_share_is_a_one_line_error(cores, monkeypatch, value):
    cores(4)
    monkeypatch.setenv(CPUS_PER_RUN_ENV, value)
    with pytest.raises(ValueError, match=CPUS_PER_RUN_ENV):
        auto_num_workers()


def test_a_number_of_workers_is_kept_and_nonsense_refused(cores):
    cores(8)
    assert resolve_num_workers(0) == 0 and resolve_num_workers(3) == 3 and resolve_num_workers("2") == 2
    assert resolve_num_workers("AUTO") == 7
    for bad in (-1, "many", 1.5, [2]):
        with pytest.raises(ValueError, match="num_workers is 'auto' or a number"):
            resolve_num_workers(bad)


def test_loader_settings_persist_workers_and_pin_for_cuda(cores):
    cores(4)
    assert loader_settings("auto", "cuda:0") == {"num_workers": 3, "persistent_workers": True, "pin_memory": True}
    # persistent_workers with no worker is an error in torch's DataLoader: off with 0 workers
    assert loader_settings(0, torch.device("cpu")) == {"num_workers": 0, "persistent_workers": False,
                                                       "pin_memory": False}


def _trainer(amp: bool) -> Engine:
    engine = Engine(lambda e, batch: None)
    engine.amp, engine.scaler = amp, "GradScaler made by run()"
    return engine


def test_bf16_training_steps_without_a_grad_scaler():
    """bf16 needs no loss scaling; the scaler's per-step overflow read-back (a host sync) is replaced."""
    bf16 = _trainer(amp=True)
    skip_bf16_grad_scaler(bf16, torch.bfloat16)
    bf16.run([0], max_epochs=1)
    assert isinstance(bf16.scaler, PassThroughScaler)
    for dtype, amp in ((torch.float16, True), (torch.bfloat16, False)):  # fp16 needs its scaler; no amp: no scaler
        other = _trainer(amp)
        skip_bf16_grad_scaler(other, dtype)
        other.run([0], max_epochs=1)
        assert other.scaler == "GradScaler made by run()"


def test_the_pass_through_scaler_steps_the_optimizer():
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    scaler = PassThroughScaler()
    loss = (weight * 2).sum()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(weight.detach(), torch.zeros(2))


def test_auto_is_no_worker_when_training_on_the_cpu(cores, monkeypatch):
    """Without a GPU the cores train: workers would compete with them."""
    cores(16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_num_workers() == 0 == resolve_num_workers("auto") and auto_num_workers(cuda=True) == 15
    assert loader_settings("auto", "cpu")["num_workers"] == 0
