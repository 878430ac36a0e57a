"""Model building: the registry, the YAML builder, DetectionModel and the built-in modules.

Loading a model from a file or a name (``build_model``, ``load_model``) is one layer up, in :mod:`rtdet.io`.
"""

from rtdet.nn.builder import ModelConfigError
from rtdet.nn.model import DetectionModel
from rtdet.nn.registry import register

__all__ = ["DetectionModel", "ModelConfigError", "register"]
