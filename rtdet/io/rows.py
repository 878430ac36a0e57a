"""Pretrained weights named on a YAML row: ``[-1, 1, convnextv2_atto, [weights=convnextv2_atto_1k_224_ema.pt]]``.

The builder (:func:`rtdet.nn.builder.split_weights`) takes the weights argument out of the row's constructor
arguments and records the path on the row (``BuiltLayer.weights``); it reads no file. The loader then calls
:func:`load_row_weights`, which loads each file (an official or timm backbone checkpoint, or one written by
``rtdet convert``) into its row and prints

    row 0 (convnextv2_atto): weights convnextv2_atto_1k_224_ema.pt (official layout): loaded 152/152 tensors;
    missing 0; unexpected 0; dropped 4 (the ImageNet classifier, which a detector never runs)

A real mismatch (another variant's file, unknown keys) is an error naming the first bad key: the silent
"loading weights... k/N items" partial loads of community code are what this replaces.
"""

from __future__ import annotations

from pathlib import Path

from rtdet.io.backbones import load_backbone_weights
from rtdet.nn.builder import ModelConfigError
from rtdet.nn.model import DetectionModel
from rtdet.utils.checkpoint import CheckpointError
from rtdet.utils.logging import LOGGER

__all__ = ["load_row_weights"]


def load_row_weights(model: DetectionModel) -> list[int]:
    """Load the pretrained weights every row of a freshly built model names (a relative path is looked up
    from the current folder, then next to the YAML file); print what each loaded. Returns those rows."""
    yaml_file = str(model.yaml.get("yaml_file", "<dict>"))
    loaded = []
    for module, b in zip(model.model, model.layers_info, strict=True):
        if b.weights is not None:
            _load_one(module, b.weights, yaml_file, f"{yaml_file}: row {b.row} ({b.name})")
            loaded.append(b.row)
    return loaded


def _load_one(module, weights: str, yaml_file: str, row_where: str) -> None:
    path = Path(weights).expanduser()
    beside_yaml = Path(yaml_file).parent / path if Path(yaml_file).is_file() and not path.is_absolute() else None
    if not path.is_file() and beside_yaml is not None and beside_yaml.is_file():
        path = beside_yaml
    if not path.is_file():
        also = " and next to the YAML" if beside_yaml is not None else ""
        raise ModelConfigError(f"{row_where}: weights file '{weights}' not found (relative paths are looked up from "
                               f"the current folder{also})")
    try:
        report = load_backbone_weights(module, path)
    except CheckpointError as e:
        raise ModelConfigError(f"{row_where}: weights {path}: {e}") from None
    LOGGER.info(f"{row_where}: weights {path.name} ({report.layout} layout): {report.summary()}")
