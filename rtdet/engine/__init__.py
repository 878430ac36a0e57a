"""The family-agnostic engine: settings, Trainer, Validator, Predictor and their Results.

Imported lazily so that ``rtdet.engine.settings`` (used by the command line to check arguments) stays light.
"""

from __future__ import annotations

import importlib

__all__ = ["Predictor", "Results", "Trainer", "Validator"]

_WHERE = {"Trainer": "trainer", "Validator": "validator", "Predictor": "predictor", "Results": "results"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"rtdet.engine.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'rtdet.engine' has no attribute {name!r}")
