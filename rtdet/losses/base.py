"""What every family's criterion shares: declared settings and their check, defaults, ``extra_repr``, the
DDP normaliser and the input size.

A family's loss subclasses :class:`Criterion`, declares its settings once in ``SETTINGS`` (name, default,
type, range, doc: the schema the recipes and the command line are checked against) and implements
``forward(outputs, batch) -> (total, {name: detached term})``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn as nn

from rtdet.utils.dist import reduce_mean
from rtdet.utils.schema import Setting

__all__ = ["Criterion"]


class Criterion(nn.Module):
    """Base of the family losses: ``Criterion(nc, **hyp)`` checks ``hyp`` against :attr:`SETTINGS` and keeps
    the full set (defaults filled in) as ``self.hyp``.

    Class attributes:

    * ``SETTINGS`` -- every setting the criterion accepts, declared once;
    * ``DEFAULTS`` -- ``{name: default}`` of ``SETTINGS``, derived for every subclass;
    * ``reduction`` -- how the loss is reduced over the batch's images: ``"mean"`` (a mean: the trainer
      averages it over processes) or ``"sum"`` (a sum over images, as YOLO's: the trainer sums it over
      processes and accumulated batches). The trainer reads it.
    """

    SETTINGS: ClassVar[tuple[Setting, ...]] = ()
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    reduction: ClassVar[str] = "mean"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.DEFAULTS = {st.name: st.default for st in cls.SETTINGS}

    def __init__(self, nc: int, **hyp: Any):
        super().__init__()
        self.hyp = self.check_settings(hyp)
        self.nc = int(nc)

    @classmethod
    def check_settings(cls, hyp: dict[str, Any]) -> dict[str, Any]:
        """Every setting's value: ``hyp``'s, each checked by its :class:`Setting`, else the default.

        An unknown name is a ValueError listing the accepted names and their defaults."""
        unknown = sorted(set(hyp) - set(cls.DEFAULTS))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown hyper-parameter(s) {unknown}; accepted keys and defaults: "
                             + ", ".join(f"{k}={v}" for k, v in cls.DEFAULTS.items()))
        return {**cls.DEFAULTS, **{st.name: st.check(hyp[st.name]) for st in cls.SETTINGS if st.name in hyp}}

    def repr_fields(self) -> dict[str, Any]:
        """Constructor arguments besides ``nc`` and the settings that ``extra_repr`` shows (none here)."""
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in {"nc": self.nc, **self.repr_fields(), **self.hyp}.items())

    @staticmethod
    def normaliser(value: torch.Tensor) -> float:
        """A loss normaliser (matched IoU sum, box count...): its mean over the DDP processes, so that every
        rank divides by the same number, and at least 1."""
        return max(float(reduce_mean(value)), 1.0)

    @staticmethod
    def input_size(batch: dict, fallback: Callable[[], tuple[int, int]]) -> tuple[int, int]:
        """(h, w) of the network input: the batch's image tensor [B, 3, H, W] when it has one, else
        ``fallback()`` (the criterion's own reading from its outputs, e.g. a level's grid x stride: the same
        for every input the trainer makes, which are multiples of the largest stride)."""
        img = batch.get("img")
        if isinstance(img, torch.Tensor) and img.dim() == 4:
            return int(img.shape[2]), int(img.shape[3])
        return fallback()
