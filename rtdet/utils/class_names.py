"""Class names in the one form models, checkpoints and exports keep them: ``{index: name}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["class_names"]


def class_names(names: Mapping | Sequence | None, nc: int = 0) -> dict[int, str]:
    """``{int index: str name}`` from a list / tuple of names or a mapping with int-like keys (``{'0': 'cat'}``
    from JSON, ``{0: 'cat'}`` from a checkpoint); ``None`` gives ``class0 .. class{nc-1}``."""
    if names is None:
        return {i: f"class{i}" for i in range(nc)}
    if isinstance(names, Mapping):
        return {int(k): str(v) for k, v in names.items()}
    return dict(enumerate(map(str, names)))
