"""Model building: the registry, the YAML builder, DetectionModel and the built-in modules.

The built-in modules and heads register themselves when their files are imported; importing them here, in
the package every ``rtdet.nn.*`` import goes through, means the registry always holds them, and the
registry itself (the bottom of ``nn``) needs to know none of them.

Loading a model from a file or a name (``build_model``, ``load_model``) is one layer up, in :mod:`rtdet.io`.
"""

import rtdet.nn.heads  # noqa: F401  (registers the built-in heads)
import rtdet.nn.modules  # noqa: F401  (registers the built-in modules)
from rtdet.nn.builder import ModelConfigError
from rtdet.nn.model import DetectionModel
from rtdet.nn.registry import register

__all__ = ["DetectionModel", "ModelConfigError", "register"]
