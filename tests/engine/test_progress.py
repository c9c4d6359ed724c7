"""The epoch progress handler on an Ignite engine, and the lines and bars a study shows from it."""
from __future__ import annotations

import io

import pytest
from ignite.engine import Engine, Events

from medxfer.engine.progress import EpochProgress, EpochProgressHandler, StudyProgress, format_duration


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_handler_reports_the_start_and_each_epoch_with_its_validation_time():
    clock = FakeClock(100.0)

    def step(engine, batch):
        clock.now += 5.0  # two batches an epoch: 10 s of training

    trainer = Engine(step)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: setattr(clock, "now", clock.now + 2.0))  # validation
    reports: list[EpochProgress] = []
    EpochProgressHandler(reports.append, clock=clock).attach(trainer)
    trainer.run([0, 1], max_epochs=3)
    assert reports == [EpochProgress(0, 3, 0.0), EpochProgress(1, 3, 12.0), EpochProgress(2, 3, 24.0),
                       EpochProgress(3, 3, 36.0)]


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (42.4, "0:42"), (98, "1:38"), (3080, "51:20"),
                                           (3723, "1:02:03"), (None, "?"), (float("nan"), "?")])
def test_durations_read_as_clock_time(seconds, text):
    assert format_duration(seconds) == text


def test_lines_give_epochs_elapsed_and_the_run_and_study_etas():
    """Run a: 2 s of setup, 10 s per epoch; it ends at 25 s (12.5 s per epoch, setup and test included),
    which prices the epochs still planned (b: 2, c: unknown, counted as the last run's 2)."""
    clock = FakeClock()
    lines: list[str] = []
    progress = StudyProgress({"a": 2, "b": 2, "c": None}, echo=lines.append, mode="lines", clock=clock)
    report = progress.start("a")
    clock.now = 2.0
    report(EpochProgress(0, 2, 0.0))
    clock.now = 12.0
    report(EpochProgress(1, 2, 10.0))  # run ETA 1 × 10 s; study ETA 10 + 10 s × 4 epochs
    clock.now = 22.0
    report(EpochProgress(2, 2, 20.0))
    clock.now = 25.0
    progress.end()
    report = progress.start("b")
    report(EpochProgress(0, 2, 0.0))
    clock.now = 34.0
    report(EpochProgress(1, 2, 8.0))  # run ETA 8 s; study ETA 8 + 12.5 s × 2 (c)
    assert lines == ["  epoch 1/2  elapsed 0:12  run ETA 0:10  study ETA 0:50",
                     "  epoch 2/2  elapsed 0:22  run ETA 0:00  study ETA 0:40",
                     "  epoch 1/2  elapsed 0:09  run ETA 0:08  study ETA 0:33"]


def test_runs_that_do_not_train_leave_the_study_eta():
    clock = FakeClock()
    lines: list[str] = []
    progress = StudyProgress({"a": 1, "b": 4, "c": 3}, echo=lines.append, clock=clock)
    progress.drop("b")  # already done / running elsewhere
    report = progress.start("a")
    clock.now = 6.0
    report(EpochProgress(1, 1, 6.0))
    assert lines == ["  epoch 1/1  elapsed 0:06  run ETA 0:00  study ETA 0:18"]  # c only: 3 × 6 s
    progress.end(finished=False)  # a failed run does not set the pace
    assert progress.seconds_per_epoch() is None


def test_no_mode_shows_nothing_and_attaches_nothing():
    lines: list[str] = []
    progress = StudyProgress({"a": 2}, echo=lines.append, mode=None)
    assert progress.start("a") is None
    progress.close()
    assert lines == []
    with pytest.raises(ValueError, match="lines"):
        StudyProgress({}, mode="loud")


def test_bars_go_to_the_stream_not_to_the_lines():
    clock = FakeClock()
    stream = io.StringIO()
    lines: list[str] = []
    progress = StudyProgress({"a": 3, "b": 3}, echo=lines.append, mode="bars", stream=stream, clock=clock)
    report = progress.start("a")
    report(EpochProgress(0, 3, 0.0))
    clock.now = 10.0
    report(EpochProgress(1, 3, 10.0))
    progress.close()
    shown = stream.getvalue()
    assert lines == []
    assert "1/3" in shown and "ETA 0:50" in shown  # 2 epochs of a and 3 of b at 10 s
