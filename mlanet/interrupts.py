"""Holding Ctrl-C while a command finishes its outputs.

A long job stops on Ctrl-C (``KeyboardInterrupt``) and then writes its last files: the run
record, the closed video, the GLBs. A second Ctrl-C (or the first one, arriving just as the job
ends by itself) must not abort that writing half-way with a traceback. :func:`interrupts_held`
makes a block finish first: a SIGINT or SIGTERM received inside it is recorded, not raised, and
the caller decides afterwards what it means (usually: exit status 130).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

__all__ = ["HeldInterrupts", "interrupts_held"]


@dataclass
class HeldInterrupts:
    """What arrived while :func:`interrupts_held` was active.

    Attributes:
        signals: the signal numbers received, in order (empty when none arrived).
    """

    signals: list[int]

    @property
    def received(self) -> bool:
        """True when at least one stop signal arrived inside the block."""
        return bool(self.signals)


@contextmanager
def interrupts_held(notice: str | None = None) -> Iterator[HeldInterrupts]:
    """Within the block, SIGINT and SIGTERM are recorded instead of stopping the process.

    Only signals whose current handler is Python's own (``KeyboardInterrupt`` for SIGINT) or the
    default (termination, for SIGTERM) are held; a signal the process ignores stays ignored. The
    previous handlers are restored on exit, also when the block raises. In a thread other than
    the main thread, where Python delivers no signals, the block runs unchanged.

    Args:
        notice: printed once to stderr when the first signal arrives (e.g. "finishing the
            outputs, please wait"), so the user sees why the process does not stop at once.

    Yields:
        The record of the signals received, filled while the block runs.
    """
    held = HeldInterrupts(signals=[])
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def hold(signum: int, frame: FrameType | None) -> None:
        if not held.signals and notice:
            print(notice, file=sys.stderr, flush=True)
        held.signals.append(signum)

    previous = {}
    for signum, stops in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(signum) is stops:
            previous[signum] = signal.signal(signum, hold)
    try:
        yield held
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
