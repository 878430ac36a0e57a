"""Freezing rows of a model: ``freeze=`` and ``freeze_epochs=``.

    parse_freeze("0-10,backbone")                        # -> ("0-10", "backbone"): checked, not yet resolved
    rows = resolve_freeze("backbone", model)             # -> [0, 1, ..., n_backbone - 1]
    freezer = Freezer(model, rows)                       # requires_grad off; optimizer groups skip them
    model.train(); freezer.hold(model)                   # after every model.train(): frozen BatchNorm in eval

A spec names rows of the model (the index column of ``DetectionModel.info()``) by index (``5``), range
(``0-10``, inclusive), or part: ``backbone`` (the YAML's ``backbone:`` rows), ``head`` (the detection head
row), ``neck`` (the ``head:`` section's other rows), ``transplanted`` (every row that received weights from
``pretrained=``), comma-separated or as a list. A frozen row gets no gradient and no optimizer entry, its
normalisation layers stay in eval mode so their running statistics do not move, and the EMA copies it
(d * x + (1 - d) * x is not always x in floating point).
"""

from __future__ import annotations

import re

import torch.nn as nn

__all__ = ["PARTS", "Freezer", "parse_freeze", "resolve_freeze"]

PARTS = ("backbone", "neck", "head", "transplanted")
_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")
EXPECTED = ("expected row indices and ranges (5, 0-10, 0,3,5-7) or the parts backbone, neck, head, "
            "transplanted, comma-separated or as a list")


def parse_freeze(value) -> str | None:
    """A ``freeze=`` value checked for its form and normalised to one comma-separated string (None: empty).
    Raises ValueError saying what is expected (the schema turns it into a SettingsError naming the value)."""
    items = value if isinstance(value, list | tuple) else [value]
    tokens: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ValueError(EXPECTED)
        tokens += [t.strip().lower() for t in str(item).split(",") if t.strip()]
    for t in tokens:
        if t in PARTS or t.isdigit():
            continue
        m = _RANGE.match(t)
        if m is None:
            raise ValueError(f"{t!r} is not a row, range or part; {EXPECTED}")
        if int(m.group(1)) > int(m.group(2)):
            raise ValueError(f"range {t!r} runs backwards; write it low-high, e.g. {m.group(2)}-{m.group(1)}")
    return ",".join(tokens) or None


def _parts(model: nn.Module) -> dict[str, list[int]]:
    """{part: rows} from the model's YAML sections and its head row."""
    n_rows = len(model.model)
    n_backbone = len((getattr(model, "yaml", None) or {}).get("backbone", []))
    head = getattr(model, "head_index", None)
    head_rows = [] if head is None else [int(head) % n_rows]
    neck = [i for i in range(n_backbone, n_rows) if i not in head_rows]
    return {"backbone": list(range(min(n_backbone, n_rows))), "neck": neck, "head": head_rows}


def resolve_freeze(spec: str | None, model: nn.Module, transplanted: list[int] | None = None) -> list[int]:
    """The sorted rows ``spec`` names in ``model``. Raises ValueError for a row the model does not have, or
    ``transplanted`` when no row was transplanted."""
    spec = parse_freeze(spec) if spec is not None else None
    if not spec:
        return []
    n_rows, parts = len(model.model), _parts(model)
    rows: set[int] = set()
    for t in spec.split(","):
        if t == "transplanted":
            if not transplanted:
                raise ValueError("freeze=transplanted: no row of this model received weights from pretrained= "
                                 "(no transplant ran); name rows or parts instead, e.g. freeze=backbone")
            rows.update(int(i) for i in transplanted)
        elif t in parts:
            rows.update(parts[t])
        else:
            m = _RANGE.match(t)
            lo, hi = (int(m.group(1)), int(m.group(2))) if m else (int(t), int(t))
            if hi >= n_rows:
                raise ValueError(f"freeze={spec}: row {hi} does not exist; {getattr(model, 'name', 'the model')} "
                                 f"has rows 0-{n_rows - 1} (`rtdet info model=...` lists them)")
            rows.update(range(lo, hi + 1))
    return sorted(rows)


class Freezer:
    """Freezes ``rows`` of ``model`` (a DetectionModel) until :meth:`release`."""

    def __init__(self, model: nn.Module, rows: list[int]):
        self.rows = sorted(rows)
        self.frozen = bool(self.rows)
        self._set(model, trainable=False)

    def _params(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for i in self.rows for p in model.model[i].parameters()]

    def _set(self, model: nn.Module, trainable: bool) -> None:
        for p in self._params(model):
            p.requires_grad_(trainable)

    def hold(self, model: nn.Module) -> None:
        """Normalisation layers of frozen rows back to eval mode (call after every ``model.train()``)."""
        if not self.frozen:
            return
        for i in self.rows:
            for m in model.model[i].modules():
                if isinstance(m, nn.modules.batchnorm._NormBase):
                    m.eval()

    def sync_ema(self, ema_model: nn.Module, model: nn.Module) -> None:
        """The EMA's frozen rows equal the model's, bit for bit."""
        if not self.frozen:
            return
        for i in self.rows:
            ema_row = ema_model.model[i].state_dict()
            for k, v in model.model[i].state_dict().items():
                ema_row[k].copy_(v)

    def release(self, model: nn.Module) -> list[nn.Parameter]:
        """Unfreeze; returns the parameters that became trainable (for the optimizer)."""
        if not self.frozen:
            return []
        params = self._params(model)
        self._set(model, trainable=True)
        self.frozen = False
        return params
