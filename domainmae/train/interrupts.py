"""Stop requests (Ctrl-C; SIGTERM or SIGUSR1 from a scheduler or a spot-instance reclaim) that end a run at a
step boundary.

A checkpoint written in the middle of a step would pair the weights of one step with the counter of
another, and a resumed run would replay or skip an update. So a signal only sets a flag; the loop
finishes the step it is in, writes a checkpoint and stops. A second Ctrl-C (SIGINT) stops at once, without
one: a person who presses it twice wants out. A scheduler's signal may arrive twice - Slurm signals every
process of a job step and torchrun forwards the signal it gets to its workers - so repeats of SIGTERM and
SIGUSR1 are ignored; the scheduler's SIGKILL at the end of its grace period is the hard stop.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)

#: SIGUSR1 is the warning Slurm sends before a time limit (``#SBATCH --signal=USR1@120``).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal at a step boundary, its checkpoint written; ``signum`` is the signal, so a
    command can exit with ``128 + signum`` (143 for SIGTERM, 138 for SIGUSR1), as a shell reports a process
    the signal ended."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopRequests:
    """Context manager that turns SIGINT/SIGTERM/SIGUSR1 into a stop request while a run trains.

    :attr:`received` is the first signal (None until one arrives). Handlers are installed
    only in the main thread (Python delivers signals there alone; elsewhere nothing changes) and the
    previous ones are put back on exit. DataLoader workers forked meanwhile inherit the handlers and
    ignore the signals, so the step in progress still gets its data; the main process shuts them down.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:  # None: a handler installed outside Python, which cannot be put back
                signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the main process decides
            return
        received = signal.Signals(signum)
        if self.received is not None:
            if received == signal.SIGINT:
                raise KeyboardInterrupt("SIGINT again: stopping at once, inside a step; no checkpoint written for it")
            log.warning("%s: already stopping after this step", received.name)
            return
        self.received = received
        log.warning("%s: finishing this step, then writing a checkpoint and stopping (Ctrl-C again stops at once)",
                    received.name)  # fmt: skip
