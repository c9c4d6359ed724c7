"""``train_loss`` without a host sync per step: summed on the device, read once per epoch, averaged across DDP
ranks."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ignite.engine import Engine, Events

from medxfer.engine import RunTracker
from medxfer.engine.mlflow_run import EpochLoss

READS = {"count": 0}
_READ_BACKS = {torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.tolist, torch.Tensor.numpy,
               torch.Tensor.cpu, torch.Tensor.__bool__}


class DeviceLoss(torch.Tensor):
    """A loss tensor that counts the reads that would make the host wait for a GPU."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _READ_BACKS:
            READS["count"] += 1
        return super().__torch_function__(func, types, args, kwargs or {})


class RecordingTracker(RunTracker):
    def __init__(self) -> None:
        super().__init__("medxfer/train", "recorded", enabled=False)
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((step, dict(metrics)))


def test_train_loss_is_the_mean_of_the_steps_read_once_per_epoch():
    per_epoch = [[0.9, 0.7, 0.5], [0.4, 0.2, 0.3]]
    steps = iter([v for epoch in per_epoch for v in epoch])

    def step(engine, batch):
        loss = torch.tensor(next(steps), requires_grad=True) * 1.0  # a loss with a graph, as the trainer's
        return {"loss": loss.as_subclass(DeviceLoss)}

    trainer = Engine(step)
    seen_at_epoch_end = []

    @trainer.on(Events.EPOCH_COMPLETED)  # registered first, as the bundle's ValidationHandler / StatsHandler are
    def _first_epoch_handler(engine):
        seen_at_epoch_end.append(engine.state.metrics.get("train_loss"))

    tracker = RecordingTracker()
    tracker.attach(trainer)
    READS["count"] = 0
    trainer.run([0, 1, 2], max_epochs=2)
    expected = [sum(e) / len(e) for e in per_epoch]
    assert [step for step, _ in tracker.logged] == [1, 2]
    assert [m["train_loss"] for _, m in tracker.logged] == pytest.approx(expected, abs=1e-6)
    # the epoch's handlers (MONAI's StatsHandler prints state.metrics) already see it
    assert seen_at_epoch_end == pytest.approx(expected, abs=1e-6)
    assert READS["count"] == 2  # one read per epoch, none per step


def test_an_epoch_of_unknown_length_is_still_logged():
    losses = iter([2.0, 4.0])
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(next(losses))})
    tracker = RecordingTracker()
    tracker.attach(trainer)
    trainer.run(iter([0, 1]), max_epochs=1, epoch_length=None)
    assert tracker.logged == [(1, {"train_loss": 3.0})]


def _rank_mean(rank: int, world: int, init_file: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        epoch_loss = EpochLoss()
        for value in ([1.0, 2.0, 3.0] if rank == 0 else [10.0]):  # unequal shards: the mean is over all steps
            epoch_loss.add(torch.tensor(value))
        out[rank] = epoch_loss.mean()
    finally:
        dist.destroy_process_group()


def test_the_epoch_mean_is_over_every_ranks_steps(tmp_path):
    """DDP: every rank logs the mean of all ranks' step losses (rank 0's tracker writes it)."""
    manager = mp.Manager()
    out = manager.dict()
    # forked, not spawned: nothing to import again in the ranks
    mp.start_processes(_rank_mean, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True, start_method="fork")
    assert dict(out) == {0: 4.0, 1: 4.0}  # (1 + 2 + 3 + 10) / 4


def test_no_step_no_mean():
    assert EpochLoss().mean() is None
