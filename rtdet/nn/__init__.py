"""Model building: the registry, the YAML builder, DetectionModel and the built-in modules."""

from rtdet.nn.builder import ModelConfigError
from rtdet.nn.model import DetectionModel, build_model
from rtdet.nn.registry import register

__all__ = ["DetectionModel", "ModelConfigError", "build_model", "register"]
