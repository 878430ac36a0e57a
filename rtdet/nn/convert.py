"""Backbone weight loading moved to :mod:`rtdet.io.backbones` (with the other checkpoint converters);
these names stay importable from here."""

from rtdet.io.backbones import (  # noqa: F401
    LoadReport,
    WeightLoadError,
    convnextv2_timm_to_official,
    load_convnextv2_weights,
    load_shvit_weights,
    shvit_timm_to_official,
    unwrap_state_dict,
)

__all__ = [
    "WeightLoadError",
    "LoadReport",
    "unwrap_state_dict",
    "convnextv2_timm_to_official",
    "load_convnextv2_weights",
    "shvit_timm_to_official",
    "load_shvit_weights",
]
