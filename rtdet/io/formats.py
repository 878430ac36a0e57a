"""The foreign checkpoint formats rtdet converts, and how a file's format is recognised.

A format is one module (``rtdet/io/<source>.py``) that defines its key tables and registers one
:class:`ForeignFormat`: a ``detect(obj)`` test on what the file holds and a ``convert(obj, ctx)`` that
returns a :class:`Converted` model. A family's record names its format modules (``converters``, see
:mod:`rtdet.families`); the backbones' formats, which belong to no family, are in ``FORMAT_MODULES``.

    fmt = find_format(obj, "rtdetr-l.pt")          # or find_format(obj, path, "ultralytics")
    converted = fmt.convert(obj, ConvertContext("rtdetr-l.pt"))
    converted.model, converted.report, converted.names
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rtdet.families import families
from rtdet.io.foreign import class_name
from rtdet.io.rules import ConversionReport
from rtdet.nn.model import DetectionModel
from rtdet.utils.checkpoint import CheckpointError

__all__ = ["ForeignFormat", "ConvertContext", "Converted", "register_format", "formats", "find_format",
           "FORMAT_MODULES"]

# Formats of no family: ImageNet backbones a YAML row may load (``weights=``).
FORMAT_MODULES = ("rtdet.io.backbones",)


@dataclass(frozen=True)
class ConvertContext:
    """What a conversion may know beyond the file's content."""

    source: str  # the file, for messages
    prefer_ema: bool = True  # take the EMA weights when the file has both
    strict: bool = True  # a missing / unexpected / shape-mismatched key is an error


@dataclass
class Converted:
    """A foreign checkpoint as an rtdet model, with what the file said about it."""

    model: DetectionModel
    report: ConversionReport
    description: str  # "Ultralytics RT-DETR (rtdetr-l)"
    weights: str  # which weights were taken: "ema", "model", "state_dict", ...
    names: dict[int, str] | None = None
    args: dict = field(default_factory=dict)  # the source's training settings, plain types
    ema: bool = False


@dataclass(frozen=True)
class ForeignFormat:
    """A source format: ``detect(obj)`` says whether a read checkpoint is one; ``convert`` turns it into
    a :class:`Converted`. ``name`` is the value of ``rtdet convert format=``."""

    name: str
    description: str
    detect: Callable[[Any], bool]
    convert: Callable[[Any, ConvertContext], Converted]


_FORMATS: dict[str, ForeignFormat] = {}
_IMPORTED: set[str] = set()


def register_format(fmt: ForeignFormat) -> ForeignFormat:
    """Make a format known to :func:`find_format` (called once by each format module)."""
    old = _FORMATS.get(fmt.name)
    if old is not None and old is not fmt and (old.convert.__module__, old.convert.__qualname__) != (
            fmt.convert.__module__, fmt.convert.__qualname__):
        raise ValueError(f"a checkpoint format named {fmt.name!r} is already registered")
    _FORMATS[fmt.name] = fmt
    return fmt


def formats() -> dict[str, ForeignFormat]:
    """Every registered foreign format by name (importing every family's format modules first)."""
    modules = [*(m for family in families().values() for m in family.converters), *FORMAT_MODULES]
    for module in dict.fromkeys(modules):
        if module not in _IMPORTED:
            importlib.import_module(module)
            _IMPORTED.add(module)
    return dict(_FORMATS)


def find_format(obj: Any, source: str, name: str = "auto") -> ForeignFormat:
    """The format of a read checkpoint: the one named, or the first whose ``detect`` accepts it."""
    known = formats()
    if name != "auto":
        if name not in known:
            raise CheckpointError(f"unknown checkpoint format {name!r}; known: auto, rtdet, {', '.join(known)}")
        if not known[name].detect(obj):
            raise CheckpointError(f"{source}: does not look like a {known[name].description} checkpoint "
                                  f"(format={name}); try format=auto")
        return known[name]
    for fmt in known.values():
        if fmt.detect(obj):
            return fmt
    raise CheckpointError(
        f"{source}: not a checkpoint rtdet knows how to convert ({_describe(obj)}). Known formats: "
        + "; ".join(f"{f.name} ({f.description})" for f in known.values())
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = list(obj)[:6]
        return f"a dict with keys {keys}" + (" ..." if len(obj) > 6 else "")
    return f"a {class_name(obj)}"
