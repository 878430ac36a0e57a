"""rtdet: a pure-PyTorch toolkit for real-time object detection (RT-DETR, YOLOv9, RTMDet).

The public names below are imported on first use, so that ``import rtdet.utils.schema`` (or the command line
checking its arguments) does not load the model zoo, the engine and the API first.
"""

from __future__ import annotations

import importlib

from rtdet.version import __version__

__all__ = ["DetectionModel", "Detector", "ModelConfigError", "__version__", "build_model", "load_model", "register",
           "transplant"]

_WHERE = {"Detector": "rtdet.api", "transplant": "rtdet.io.transplant", "DetectionModel": "rtdet.nn.model",
          "ModelConfigError": "rtdet.nn.builder", "build_model": "rtdet.io.load",
          "load_model": "rtdet.engine.setup:load_inference_model", "register": "rtdet.nn.registry"}


def __getattr__(name: str):
    if name in _WHERE:
        module, _, attr = _WHERE[name].partition(":")
        return getattr(importlib.import_module(module), attr or name)
    raise AttributeError(f"module 'rtdet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
