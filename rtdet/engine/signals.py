"""Signals during a run: what SIGINT and SIGTERM do.

    with StopSignals(trainer):        # training: finish the step, save last.pt, stop (a second one aborts)
        trainer.fit()
    with terminate_raises():          # any verb: SIGTERM unwinds like Ctrl-C (clean-ups run, exit 143)
        run_the_verb()

Both restore the handlers they found, and leave a process alone where it is not theirs to change (another
thread, or a SIGTERM handler someone else installed).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from rtdet.engine.errors import Interrupted
from rtdet.utils.logging import LOGGER

__all__ = ["StopSignals", "terminate_raises"]


class Stoppable(Protocol):
    """What :class:`StopSignals` needs of a trainer."""

    last: Path  # the checkpoint a stop saves

    def request_stop(self, signum: int) -> None: ...


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (what clusters send before SIGKILL) ask the trainer to stop after the
    current optimizer step and save last.pt.

    A signal sent to a process group (as ``timeout``, shells and schedulers do) reaches every process of
    it: DataLoader workers ignore SIGINT and SIGTERM (rtdet.data.loader), and a repeat that arrives within
    ``REPEAT_WINDOW`` seconds of the first is the same request. A second signal after that aborts at once
    (the last saved last.pt is kept). The previous handlers are restored on exit."""

    REPEAT_WINDOW = 1.0  # seconds
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer: Stoppable):
        self.trainer = trainer
        self.first: float | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        try:
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self.handle)
        except ValueError:  # not the main thread: leave the process's handlers alone
            self.__exit__()
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(s, handler)
        self.previous.clear()

    def handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
            self.trainer.request_stop(signum)
            LOGGER.warning(f"\n{signal.Signals(signum).name}: stopping after this step and saving last.pt "
                           f"(press Ctrl-C again to abort now)")
            return
        if now - self.first < self.REPEAT_WINDOW:
            return  # the same request, delivered again (process group, or a terminal's double delivery)
        raise Interrupted(f"aborted by a second {signal.Signals(signum).name}; {self.trainer.last} keeps the last "
                          f"saved state", signum)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Interrupted` in the main thread, as Ctrl-C raises
    KeyboardInterrupt: ``finally`` blocks and run-folder clean-ups run, where the default SIGTERM would end
    the process without them (leaving e.g. an empty run folder). A handler someone else installed (or an
    ignored SIGTERM) is left alone; the previous handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise Interrupted("terminated (SIGTERM)", signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
