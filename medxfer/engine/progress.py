"""Training progress: an Ignite handler that reports each finished epoch, and the display a study
prints from it (a tqdm bar per run on a terminal, one plain line per epoch otherwise).

:class:`EpochProgressHandler` calls a callback with an :class:`EpochProgress` when training starts
and after each epoch (after the epoch's validation, which is part of the epoch's time). Nothing is
attached unless a caller asks: :func:`~medxfer.engine.bundles.train_bundle` takes ``progress=None``.

:class:`StudyProgress` turns those reports into output for a sequence of runs. The ETA of the run
in progress is its mean epoch time so far (training and validation) × its epochs left. The ETA of
the whole study adds the epochs of the runs still planned times the mean seconds per epoch of the
runs finished by this process — wall time from a run's start to its end (data loading, caching,
testing included) divided by its epochs; before any run has finished, the current run's mean epoch
time. Runs found finished in the store, skipped or failed before they start are not counted.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, TextIO

from ignite.engine import Engine, Events
from tqdm import tqdm


@dataclass(frozen=True)
class EpochProgress:
    """One report: ``epoch`` of ``max_epochs`` done (0 when training starts), ``elapsed`` seconds
    of training since it started."""

    epoch: int
    max_epochs: int
    elapsed: float


ProgressCallback = Callable[[EpochProgress], None]


class EpochProgressHandler:
    """Ignite handler: ``callback(EpochProgress)`` when the trainer starts and after each epoch."""

    def __init__(self, callback: ProgressCallback, clock: Callable[[], float] = time.monotonic):
        self.callback, self.clock = callback, clock
        self._started: float | None = None

    def attach(self, engine: Engine) -> None:
        """Report on ``engine``'s STARTED and EPOCH_COMPLETED events."""
        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch)

    def _on_started(self, engine: Engine) -> None:
        self._started = self.clock()
        self.callback(EpochProgress(int(engine.state.epoch), int(engine.state.max_epochs or 0), 0.0))

    def _on_epoch(self, engine: Engine) -> None:
        if self._started is None:  # attached after the start
            self._started = self.clock()
        self.callback(EpochProgress(int(engine.state.epoch), int(engine.state.max_epochs or 0),
                                    self.clock() - self._started))


def format_duration(seconds: float | None) -> str:
    """``0:42``, ``12:05``, ``1:02:03`` (hours only when there are any); ``?`` for an unknown time."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


PROGRESS_MODES = (None, "lines", "bars")


def check_progress_mode(mode: str | None) -> None:
    """Refuse a ``mode`` that is not one of :data:`PROGRESS_MODES`."""
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress is 'lines', 'bars' or None, not {mode!r}")


class StudyProgress:
    """Progress of a sequence of training runs, shown as it comes (see the module docstring).

    ``planned`` maps each run expected to train to its epochs (None: not known before it starts —
    counted as the last run's epochs). ``mode``: ``"lines"``: ``echo`` gets one line per epoch,
    ``  epoch 3/10  elapsed 0:42  run ETA 1:38  study ETA 51:20``; ``"bars"``: a tqdm bar per run
    (epochs) and a study line with its ETA on ``stream`` (default stderr); None: nothing is shown and
    :meth:`start` gives no callback (no handler is attached).
    """

    def __init__(self, planned: dict[str, int | None], echo: Callable[[str], None] = lambda s: None,
                 mode: str | None = "lines", stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        check_progress_mode(mode)
        self.pending: dict[str, int | None] = dict(planned)
        self.echo, self.mode, self.stream, self.clock = echo, mode, stream, clock
        self.finished_seconds = 0.0
        self.finished_epochs = 0
        self._last_epochs: int | None = None
        self._run: str | None = None
        self._run_started = 0.0
        self._epoch = 0
        self._max_epochs = 0
        self._rate: float | None = None  # the current run's seconds per epoch
        self._run_bar = None
        self._study_bar = None

    def drop(self, name: str) -> None:
        """``name`` will not train here (done, running elsewhere, or failed before it started)."""
        self.pending.pop(name, None)

    def start(self, name: str) -> ProgressCallback | None:
        """Run ``name`` starts now; returns the callback for its trainer's :class:`EpochProgressHandler`
        (None when nothing is shown)."""
        self.end()
        self.pending.pop(name, None)
        self._run, self._run_started = name, self.clock()
        self._epoch, self._max_epochs, self._rate = 0, 0, None
        return self._report if self.mode is not None else None

    def end(self, finished: bool = True) -> None:
        """The current run ended; its time counts for the study ETA when ``finished`` and it trained.
        The bars go until the next run starts, so that lines printed between runs stay readable."""
        if self._run is None:
            return
        if finished and self._epoch > 0:
            self.finished_seconds += self.clock() - self._run_started
            self.finished_epochs += self._epoch
        self._run = None
        self._epoch, self._max_epochs, self._rate = 0, 0, None
        for bar in (self._run_bar, self._study_bar):
            if bar is not None:
                bar.close()
        self._run_bar = self._study_bar = None

    def close(self) -> None:
        """End the current run (not counted as finished) and take its bars off the terminal."""
        self.end(finished=False)

    def seconds_per_epoch(self) -> float | None:
        """Mean seconds per epoch of the runs finished so far, else of the current run; None before either."""
        if self.finished_epochs:
            return self.finished_seconds / self.finished_epochs
        return self._rate

    def run_eta(self) -> float | None:
        """Seconds left in the current run's training; None before its first epoch."""
        if self._rate is None:
            return None
        return self._rate * max(self._max_epochs - self._epoch, 0)

    def study_eta(self) -> float | None:
        """Seconds left in the study: the current run's ETA plus the planned runs' epochs at
        :meth:`seconds_per_epoch`; None while neither is known."""
        rate = self.seconds_per_epoch()
        if rate is None:
            return None
        default = self._max_epochs or self._last_epochs or 0
        left = sum(default if epochs is None else epochs for epochs in self.pending.values())
        return (self.run_eta() or 0.0) + rate * left

    def _report(self, report: EpochProgress) -> None:
        self._epoch, self._max_epochs = report.epoch, report.max_epochs
        self._last_epochs = report.max_epochs or self._last_epochs
        if report.epoch > 0 and report.elapsed > 0:
            self._rate = report.elapsed / report.epoch
        if self.mode == "bars":
            self._show_bars(report)
        elif report.epoch > 0:
            self.echo(f"  epoch {report.epoch}/{report.max_epochs}  "
                      f"elapsed {format_duration(self.clock() - self._run_started)}  "
                      f"run ETA {format_duration(self.run_eta())}  study ETA {format_duration(self.study_eta())}")

    def _show_bars(self, report: EpochProgress) -> None:
        stream = self.stream or sys.stderr
        if self._study_bar is None:  # a status line: the study's ETA is ours, not tqdm's rate
            self._study_bar = tqdm(total=None, bar_format="{desc}", file=stream, leave=False, position=0,
                                   dynamic_ncols=True)
        if self._run_bar is None:  # epochs are minutes apart: show every one (mininterval=0)
            self._run_bar = tqdm(total=report.max_epochs, initial=report.epoch, desc="  epochs", unit="epoch",
                                 file=stream, leave=False, position=1, dynamic_ncols=True, mininterval=0)
        self._run_bar.update(report.epoch - self._run_bar.n)
        runs_left = len(self.pending) + 1
        self._study_bar.set_description_str(f"study: {runs_left} run{'s' if runs_left != 1 else ''} left "
                                            f"(this one included), ETA {format_duration(self.study_eta())}")
