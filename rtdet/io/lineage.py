"""What the RT-DETR code lineage writes (lyuwenyu's RT-DETR / RT-DETRv2, D-FINE, DEIM: one solver, one file
layout): the shared reading of such a checkpoint, for the converters of each (:mod:`rtdet.io.dfine`,
:mod:`rtdet.io.rtdetrv2`).

A file is a dict ``{"model": state dict, "ema": {"module": state dict, "updates": int}, ...}`` (a release may
hold one of the two); the decoder's cached ``decoder.anchors`` [1, A, 4] tell the square size it was
validated at; numbered module lists (``encoder.fpn_blocks.<i>.``) map onto rtdet rows by index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from rtdet.io.formats import ConvertContext
from rtdet.io.rules import ConversionReport, KeyTable, WeightLoadError, load_into
from rtdet.utils.checkpoint import CheckpointError

__all__ = ["any_index", "count_children", "indexed_rows", "load_official", "pick_weights", "tensor_shape",
           "validation_size"]


def tensor_shape(sd: Mapping[str, torch.Tensor], key: str, where: str, what: str) -> torch.Size:
    """The shape of a tensor the size inference reads (at least one dimension, as every such tensor has);
    ``what`` names the model the file should hold ("a D-FINE (HGNetv2 + hybrid encoder + D-FINE decoder)")."""
    if key not in sd:
        raise CheckpointError(f"{where}: no {key} in the state dict; not {what} checkpoint")
    if sd[key].dim() == 0:
        raise CheckpointError(f"{where}: {key} is a scalar; {what} checkpoint holds a tensor of shape [out, ...] "
                              f"there (a damaged file)")
    return sd[key].shape


def count_children(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many numbered children ``<prefix><i>.`` the keys hold."""
    return len({k[len(prefix):].split(".", 1)[0] for k in sd if k.startswith(prefix)})


def indexed_rows(rows: list[int]):
    """A rename to ``model.<rows[i]>.`` for the index i the pattern's group captured."""
    return lambda m: f"model.{rows[int(m[1])]}."


def any_index(rows: list[int]) -> str:
    """A regex group matching the indices 0 .. len(rows) - 1 (captured for :func:`indexed_rows`)."""
    return "(" + "|".join(str(i) for i in range(len(rows))) + ")"


def _tensors(sd: Any, entry: str, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(sd, dict):
        raise CheckpointError(f"{where}: '{entry}' is a {type(sd).__name__}, expected a dict of tensors")
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: {entry}[{key!r}] is a {type(value).__name__}, expected a tensor")
    return {str(k): v for k, v in sd.items()}


def pick_weights(obj: dict, ctx: ConvertContext) -> tuple[dict[str, torch.Tensor], str, bool]:
    """(tensors, which entry, are they the EMA): ema['module'] before 'model' when ``prefer_ema``."""
    ema = obj.get("ema")
    has_ema = isinstance(ema, dict) and "module" in ema
    has_model = obj.get("model") is not None
    if has_ema and (ctx.prefer_ema or not has_model):
        return _tensors(ema["module"], "ema['module']", ctx.source), "ema", True
    if not has_model:
        raise CheckpointError(f"{ctx.source}: holds neither 'model' nor 'ema'['module']")
    return _tensors(obj["model"], "model", ctx.source), "model", False


def validation_size(sd: Mapping[str, torch.Tensor], strides: list[int]) -> int | None:
    """The square size whose anchor grid has as many points as ``decoder.anchors`` (640 in every config)."""
    anchors = sd.get("decoder.anchors")
    if anchors is None or anchors.dim() != 3:
        return None
    for size in range(32, 4097, 32):
        if sum((size // s) ** 2 for s in strides) == anchors.shape[1]:
            return size
    return None


def load_official(model: nn.Module, sd: dict[str, torch.Tensor], table: KeyTable, ctx: ConvertContext,
                  hint: str) -> ConversionReport:
    """Load an official state dict renamed by ``table`` into ``model``; a misfit (strict) names the official key
    as well as rtdet's, and ``hint`` says what the converter reads from the tensors."""
    mapped, dropped = table.apply(sd)
    try:
        why = [table.why_dropped(k) for k in dropped]
        return load_into(model, mapped, table.name, dropped=dropped, dropped_why=why, strict=ctx.strict,
                         what=f"{ctx.source}: weights", source=ctx.source, hint=hint)
    except WeightLoadError as e:
        bad = re.search(r"first bad key (\S+)", str(e))
        origin = {table.target(k): k for k in sd}
        if bad is None or origin.get(bad[1], bad[1]) == bad[1]:
            raise
        raise WeightLoadError(f"{e}\nThe first bad key is {origin[bad[1]]} in the file.") from None
