"""Graceful stop of a training run: Ctrl-C / SIGTERM finish the step and checkpoint.

`lmforge.train.loop.Trainer.run` trains inside a `StopRequest`: the first signal sets
`requested` (the loop then writes a checkpoint and returns), a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from tqdm.auto import tqdm


class StopRequest:
    """SIGINT/SIGTERM → finish the step and checkpoint; a second SIGINT aborts immediately.

    The abort is the previous SIGINT handler's: under the CLI (`lmforge.procutil`) exit status
    130 at once with one line, at any point until the command ends (the signals are recorded
    with `procutil.note_interrupt`); elsewhere Python's KeyboardInterrupt. A second SIGTERM is
    ignored (``timeout`` sends two). Under torchrun (`abort_on_second=False`) signals only set
    the flag: a rank aborting alone would leave the others blocked in a collective. There the
    agent forwards the signal to every rank, and its SIGKILL after a grace period (30 s) is the
    hard stop.
    """

    def __init__(self, abort_on_second: bool = True, announce: bool = True) -> None:
        self.requested = False
        self.abort_on_second, self.announce = abort_on_second, announce
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def __enter__(self) -> StopRequest:
        from lmforge.procutil import note_interrupt

        self._note_interrupt = note_interrupt  # imported here, not in the signal handler
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT and self.abort_on_second:
            self._note_interrupt()  # the previous handler sees a second interrupt
            previous = self._previous.get(signal.SIGINT)
            if callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt
        first, self.requested = not self.requested, True
        # Set before announcing: a Ctrl-C arriving during the write runs this handler again.
        if first and self.announce:
            tqdm.write("stopping after this step and saving a checkpoint (Ctrl-C again to abort)")

    def __exit__(self, *exc) -> None:
        if self.requested and self.abort_on_second:
            self._note_interrupt()  # a Ctrl-C after this block is a second one too
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
