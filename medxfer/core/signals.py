"""SIGTERM as an exception: a runner ended by a scheduler (a SLURM time limit, a preemption, ``kill``) unwinds
like one stopped with Ctrl-C, so the code that marks a run FAILED on any exit (``except BaseException`` /
``finally``) runs instead of leaving the run RUNNING in the tracking store.

Python's default SIGTERM action ends the process without running any of that; SIGINT already raises
``KeyboardInterrupt``. :func:`terminate_raises` installs a SIGTERM handler that raises :class:`Terminated`
(a ``SystemExit`` with the shell's exit code for a signal, 128 + 15) for the duration of a block.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(SystemExit):
    """The process received SIGTERM (exit code 143, as a shell reports a process ended by it)."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)

    def __reduce__(self):  # pickled back from a worker process: rebuilt without the exit code argument
        return (Terminated, ())


_sigterm_received = threading.Event()


def sigterm_received() -> bool:
    """Whether a SIGTERM handler of this module has run in this process: code that gets the exception as
    something else (Ray's ``ray.wait`` turns any ``SystemExit`` raised in a signal handler into
    ``SystemExit(1)``) can still tell that the process was terminated."""
    return _sigterm_received.is_set()


def _raise_terminated(signum, frame) -> None:
    _sigterm_received.set()
    raise Terminated()


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread; the previous handler comes back
    after it. Outside the main thread (where Python cannot install handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated_once(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the marking it started
    _sigterm_received.set()
    raise Terminated()


def worker_signals() -> None:
    """For a worker process whose parent stops it: SIGINT ignored (Ctrl-C reaches the whole process group;
    the parent decides), the first SIGTERM raises :class:`Terminated` and later ones are ignored, so the code
    that marks its run FAILED runs once, uninterrupted. Call it in the worker's main thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_terminated_once)
