"""The 'rtdet' logger: plain messages on stdout from rank 0 only (other DDP ranks log warnings and errors)."""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["LOGGER", "set_verbosity"]


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (redirections and captures made later still work)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # logging.StreamHandler assigns it; the property always reads sys.stdout
        pass


def _make_logger() -> logging.Logger:
    logger = logging.getLogger("rtdet")
    if not logger.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    rank = int(os.environ.get("RANK", 0))
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    return logger


LOGGER = _make_logger()


def set_verbosity(verbose: bool) -> None:
    """INFO when verbose (rank 0), WARNING otherwise."""
    rank = int(os.environ.get("RANK", 0))
    LOGGER.setLevel(logging.INFO if verbose and rank == 0 else logging.WARNING)
