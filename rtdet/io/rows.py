"""Pretrained weights named on a YAML row: ``[-1, 1, convnextv2_atto, [weights=convnextv2_atto_1k_224_ema.pt]]``.

The builder asks :func:`split_weights` for the row's constructor arguments without the weights argument,
builds the module, and hands the path to :func:`load_row_weights`, which loads the file (an official or
timm backbone checkpoint, or one written by ``rtdet convert``) and prints

    row 0 (convnextv2_atto): weights convnextv2_atto_1k_224_ema.pt (official layout): loaded 152/152 tensors;
    missing 0; unexpected 0; dropped 4 (the ImageNet classifier, which a detector never runs)

A real mismatch (another variant's file, unknown keys) is an error naming the first bad key: the silent
"loading weights... k/N items" partial loads of community code are what this replaces.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

__all__ = ["split_weights", "load_row_weights", "WEIGHT_SUFFIXES"]

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin")


def split_weights(args: list, entry, row_where: str) -> tuple[list, str | None]:
    """(constructor args, weights path or None) of one row. The weights are a ``weights=path`` string or a
    ``{weights: path}`` mapping among the args; a backbone row may also give the path as its first
    argument (the community backbones' habit: ``convnextv2_atto(weights='')``)."""
    from rtdet.nn.builder import ModelConfigError
    from rtdet.nn.registry import RULES

    rest, found = [], []
    for a in args:
        if isinstance(a, str) and a.startswith("weights="):
            found.append(a[len("weights="):].strip())
        elif isinstance(a, dict) and set(a) == {"weights"}:
            found.append(str(a["weights"] or "").strip())
        else:
            rest.append(a)
    if (not found and entry.channels is RULES["backbone"] and rest and isinstance(rest[0], str)
            and rest[0].lower().endswith(WEIGHT_SUFFIXES)):
        found.append(rest.pop(0))
    if len(found) > 1:
        raise ModelConfigError(f"{row_where}: {len(found)} weights= arguments; give one")
    return rest, (found[0] or None) if found else None


def load_row_weights(module: nn.Module, weights: str, yaml_file: str, row_where: str) -> None:
    """Load one row's pretrained weights (a relative path is looked up from the current folder, then next
    to the YAML file) and print what was loaded."""
    from rtdet.io.backbones import load_backbone_weights
    from rtdet.nn.builder import ModelConfigError
    from rtdet.utils.checkpoint import CheckpointError
    from rtdet.utils.logging import LOGGER

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
