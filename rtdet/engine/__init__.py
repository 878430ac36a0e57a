"""The family-agnostic engine: settings, Trainer, Validator, Predictor, Tracker and their Results.

Imported lazily so that ``rtdet.engine.settings`` (used by the command line to check arguments) stays light.
"""

from __future__ import annotations

import importlib

__all__ = ["Predictor", "Results", "Tracker", "Trainer", "Validator"]

_WHERE = {"Trainer": "trainer", "Validator": "validator", "Predictor": "predictor", "Results": "results",
          "Tracker": "tracker"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"rtdet.engine.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'rtdet.engine' has no attribute {name!r}")
