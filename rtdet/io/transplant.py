"""Structural weight transplant: a variant starts where its baseline stands.

    report = transplant("rtdetr-l-rtdet.pt", "rtdetr-convnextv2-atto.yaml")
    report.summary()   # 'rtdetr-convnextv2-atto: 16 rows (neck, head; 53% of parameters) from rtdetr-l-rtdet.pt; ...'
    report.model       # the initialised target model
    report.to_markdown(), report.to_json()

Copying weights by name (``model.12.cv1.conv.weight``) fails as soon as a variant adds, removes or swaps a
row: every later row index moves and the neck and head stay random. Here the rows of the two models are
aligned by what they are instead:

* **module type** (a hard rule: no tensor ever lands in a row of another module type, even when the shapes
  happen to agree), then its arguments as written and as built (channels included) and its tensor shapes,
  which rank the candidates;
* **the graph**: an aligned row's inputs (``from``) are never aligned elsewhere -- each pair of inputs is
  aligned together, or one of the two is a row the other model lacks (an inserted row, a swapped backbone).

The alignment is a dynamic programme over the two row sequences (both are in topological order), like a
sequence alignment whose match score is the similarity above and whose matches must keep the graph
consistent with the matches already made on the path. Then an aligned row whose tensors all agree in name
and shape is copied; an aligned row whose shapes differ is skipped, each tensor named with both shapes
(the head row alone keeps the tensors that still fit: another class count changes only a few); a row
without a partner keeps its initialisation. A row that names its own pretrained weights
(``[weights=convnextv2_atto_1k_224_ema.pt]``, :mod:`rtdet.io.rows`) keeps them: they win for that row.

:func:`plan_transplant` computes the alignment and the report without touching any weight (it works on
models built on the meta device); :func:`transplant` loads both models and copies.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rtdet.io.load import load_model
from rtdet.io.rules import WeightLoadError
from rtdet.nn.builder import split_weights
from rtdet.nn.model import DetectionModel
from rtdet.nn.registry import lookup
from rtdet.utils.checkpoint import CheckpointError, atomic_write_text, save_checkpoint
from rtdet.utils.logging import LOGGER

__all__ = ["RowSpec", "RowTransplant", "TensorSkip", "TransplantReport", "align_rows", "apply_transplant",
           "describe_rows", "plan_transplant", "transplant", "transplant_file", "transplant_pretrained",
           "write_transplant_report"]

IMAGE = (-1, 0)  # the input image, as a (row, output) producer: always aligned with the other model's image


@dataclass(frozen=True)
class RowSpec:
    """What one row of a built model is, for the alignment."""
    index: int  # row number
    name: str  # module name as the YAML writes it ("Conv", "nn.Upsample")
    cls: type  # the class it builds
    part: str  # backbone / neck / head
    written: str  # repeats and arguments as written (weights= removed)
    built: str  # arguments as built (input channels included)
    inputs: tuple[tuple[int, int], ...]  # (producing row, which of its outputs); IMAGE for the image
    c_in: tuple  # channels of each input
    shapes: dict[str, tuple[int, ...]] = field(hash=False)  # state_dict key (relative to the row) -> shape
    params: dict[str, int] = field(hash=False)  # parameter key -> number of elements
    weights: str | None = None  # the row's own pretrained weights file (weights=)


def describe_rows(model: DetectionModel) -> list[RowSpec]:
    """One :class:`RowSpec` per row of a (not fused) model."""
    if model.is_fused:
        raise ValueError(f"{model.name}: a fused model has lost its training-only rows and BatchNorms; "
                         f"transplant into (and from) the model before fuse()")
    written_rows = list(model.yaml["backbone"]) + list(model.yaml["head"])
    n_backbone = len(model.yaml["backbone"])
    producer: dict[int, tuple[int, int]] = {-1: IMAGE}
    channels: dict[int, Any] = {-1: model.yaml.get("ch", 3)}
    for b in model.layers_info:
        for k, s in enumerate(b.slots or [b.slot]):
            producer[s] = (b.row, k)
            channels[s] = b.c2[k] if b.slots else b.c2
    specs = []
    for module, b in zip(model.model, model.layers_info, strict=True):
        _, n, name, args = written_rows[b.row]
        entry = lookup(name, row=b.row)
        args, weights = split_weights(list(args), entry, f"{model.name}: row {b.row}")
        part = "backbone" if b.row < n_backbone else "head" if b.row == model.head_index else "neck"
        f = b.f if isinstance(b.f, list) else [b.f]
        specs.append(RowSpec(
            b.row, name, entry.cls, part, repr((n, args)), repr(b.args), tuple(producer[j] for j in f),
            tuple(channels[j] for j in f),
            {k: tuple(v.shape) for k, v in module.state_dict().items()},
            {k: p.numel() for k, p in module.named_parameters()}, weights))
    return specs


# ------------------------------------------------------------------------------------------ alignment
def _inputs_fit(a: RowSpec, b: RowSpec, fwd: dict[int, int], bwd: dict[int, int]) -> bool | None:
    """How the inputs of source row ``a`` and target row ``b`` sit in the alignment so far: True when every
    pair is aligned together, False when some pair has a row the other model lacks, None (no match) when a
    pair is aligned elsewhere (the graphs would cross)."""
    together = len(a.inputs) == len(b.inputs)
    for x, y in zip(a.inputs, b.inputs):
        x_partner = IMAGE[0] if x == IMAGE else fwd.get(x[0])
        y_partner = IMAGE[0] if y == IMAGE else bwd.get(y[0])
        if x_partner == y[0] and y_partner == x[0] and x[1] == y[1]:
            continue
        if x_partner is not None and y_partner is not None:
            return None
        together = False
    return together


def _match_score(a: RowSpec, b: RowSpec, fwd: dict[int, int], bwd: dict[int, int]) -> int | None:
    """How well source row ``a`` fits target row ``b`` (None: never), given the alignment so far."""
    if a.cls is not b.cls:
        return None
    fit = _inputs_fit(a, b, fwd, bwd)
    if fit is None:
        return None
    # The row as written weighs most: it is what the user swapped or kept; widths follow from the rows before.
    return (1 + 4 * (a.written == b.written) + (a.built == b.built) + (a.c_in == b.c_in)
            + 2 * (a.shapes == b.shapes) + int(fit))


def align_rows(source: list[RowSpec], target: list[RowSpec]) -> dict[int, int]:
    """{target row: source row}: the order-preserving alignment of highest total score whose matches keep
    the two graphs consistent (see the module docstring). Each cell of the table holds its best score and
    the alignment that reached it, so a candidate match is checked against the rows matched before it."""
    empty: tuple[int, dict, dict] = (0, {}, {})
    previous = [empty] * (len(target) + 1)
    for a in source:
        current = [empty]
        for j, b in enumerate(target, 1):
            best = previous[j] if previous[j][0] >= current[j - 1][0] else current[j - 1]  # a or b left out
            diagonal = previous[j - 1]
            score = _match_score(a, b, diagonal[1], diagonal[2])
            if score is not None and diagonal[0] + score >= best[0]:
                best = (diagonal[0] + score, {**diagonal[1], a.index: b.index}, {**diagonal[2], b.index: a.index})
            current.append(best)
        previous = current
    return dict(sorted(previous[-1][2].items()))


# ------------------------------------------------------------------------------------------ the report
@dataclass
class TensorSkip:
    """A tensor of an aligned target row that was not copied."""
    key: str  # relative to the row ("cv1.conv.weight")
    source_shape: tuple[int, ...] | None  # None: the source row has no such tensor
    target_shape: tuple[int, ...]
    reason: str


@dataclass
class RowTransplant:
    """What one target row received."""
    target: int
    source: int | None  # the aligned source row; None: no partner
    module: str
    part: str
    params: int  # parameters of the target row
    params_copied: int = 0
    copied: list[str] = field(default_factory=list)
    skipped: list[TensorSkip] = field(default_factory=list)
    weights: str | None = None  # the row's own pretrained weights, which win over the transplant
    has_tensors: bool = True
    reason: str = ""  # why an aligned row received nothing, when it did not

    @property
    def status(self) -> str:
        """copied | partial | skipped (aligned, no shape agrees) | weights (its own file) | new | empty."""
        if self.weights:
            return "weights"
        if self.source is None:
            return "new" if self.has_tensors else "empty"
        if not self.skipped:
            return "copied"
        return "partial" if self.copied else "skipped"

    @property
    def from_source(self) -> bool:
        """Aligned and holding the source's values (a row without tensors counts when it is aligned)."""
        return self.status in ("copied", "partial")


@dataclass
class TransplantReport:
    """Per target row: its source row, module, tensors copied and skipped, and the share of parameters."""
    source: str  # what the weights came from (a file name, a YAML name)
    source_model: str
    target: str  # the target model's name
    rows: list[RowTransplant]
    model: DetectionModel | None = field(default=None, repr=False, compare=False)  # the initialised target

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def params_copied(self) -> int:
        return sum(r.params_copied for r in self.rows)

    @property
    def share(self) -> float:
        """Fraction of the target's parameters whose values came from the source."""
        return self.params_copied / self.params if self.params else 0.0

    @property
    def transplanted_rows(self) -> list[int]:
        """Target rows that received at least one tensor."""
        return sorted(r.target for r in self.rows if r.copied)

    @property
    def new_rows(self) -> list[int]:
        """Target rows with tensors that kept their initialisation (no partner, or no shape agreed)."""
        return [r.target for r in self.rows if r.has_tensors and not r.copied and not r.weights]

    def summary(self) -> str:
        """One line: 'b: 16 rows (neck, head; 53% of parameters) from a.pt; row 0 from w.pt; 3 rows new: 4, 8, 13'."""
        copied = [r for r in self.rows if r.copied]
        rows = [r for r in self.rows if r.from_source] if copied else []
        parts = [p for p in ("backbone", "neck", "head") if any(r.part == p for r in copied)]
        text = (f"{self.target}: {_count(len(rows), 'row')} ({''.join(', '.join(parts) + '; ' if parts else '')}"
                f"{100 * self.share:.0f}% of parameters) from {self.source}")
        partial = [r.target for r in rows if r.status == "partial"]
        if partial:
            text += f" ({len(partial)} in part: {_ranges(partial)})"
        for r in self.rows:
            if r.weights:
                text += f"; row {r.target} from {Path(r.weights).name}"
        new = self.new_rows
        if new:
            text += f"; {_count(len(new), 'row')} new: {_ranges(new)}"
            aligned = [r.target for r in self.rows if r.target in new and r.source is not None]
            if aligned:
                text += f" ({len(aligned)} of them aligned but of other shapes: {_ranges(aligned)})"
        return text

    def to_dict(self) -> dict:
        rows = []
        for r in self.rows:
            d = {k: v for k, v in asdict(r).items() if k != "skipped"}
            d["status"] = r.status
            d["skipped"] = [asdict(s) for s in r.skipped]
            rows.append(d)
        return {"source": self.source, "source_model": self.source_model, "target": self.target,
                "summary": self.summary(), "params": self.params, "params_copied": self.params_copied,
                "share": self.share, "transplanted_rows": self.transplanted_rows, "new_rows": self.new_rows,
                "rows": rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_markdown(self) -> str:
        lines = [f"# Transplant: {self.source} ({self.source_model}) -> {self.target}", "", self.summary(), "",
                 "| target row | source row | module | part | status | tensors copied | parameters from source | "
                 "skipped |", "|---:|---:|---|---|---|---:|---:|---|"]
        for r in self.rows:
            source = "-" if r.source is None else str(r.source)
            share = f"{r.params_copied:,} / {r.params:,}" if r.params else "-"
            named = [s for s in r.skipped if s.source_shape != s.target_shape] or r.skipped
            skipped = (f"{r.reason}: " if r.reason else "") + "; ".join(f"`{s.key}`: {s.reason}" for s in named[:3]
                                                                         if s.reason != r.reason)
            if len(r.skipped) > 3:
                skipped += f" (+{len(r.skipped) - 3} more)"
            if r.weights:
                skipped = f"own weights {Path(r.weights).name} (they win over the transplant)"
            lines.append(f"| {r.target} | {source} | {r.module} | {r.part} | {r.status} | {len(r.copied)} | "
                         f"{share} | {skipped} |")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.summary()


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _ranges(rows: list[int]) -> str:
    """[4, 8, 9, 10, 13] -> '4, 8-10, 13'."""
    out, start = [], None
    for k, r in enumerate(rows):
        if start is None:
            start = r
        if k + 1 == len(rows) or rows[k + 1] != r + 1:
            out.append(str(start) if start == r else f"{start}-{r}")
            start = None
    return ", ".join(out)


# ------------------------------------------------------------------------------------------ plan and copy
def _tensor_reason(source_shape: tuple | None, target_shape: tuple, row_reason: str) -> str:
    if source_shape is None:
        return "not in the source row"
    if source_shape != target_shape:
        return f"shape {_shape(source_shape)} in the source, {_shape(target_shape)} here"
    return row_reason


def _row_plan(a: RowSpec | None, b: RowSpec) -> RowTransplant:
    """What target row ``b`` receives from its partner ``a``: every tensor, when every tensor's shape agrees;
    else nothing (a BatchNorm after a convolution of another shape describes other features), each tensor
    named. The head row is the exception: a head for another class count (or another number of levels)
    keeps every tensor whose shape still agrees -- unless it reads an input of another width."""
    row = RowTransplant(b.index, None if a is None else a.index, b.name, b.part, sum(b.params.values()),
                        weights=b.weights, has_tensors=bool(b.shapes))
    if a is None or b.weights:
        return row
    fits = [k for k, shape in b.shapes.items() if a.shapes.get(k) == shape]
    if any(x != y for x, y in zip(a.c_in, b.c_in)):
        row.reason = f"input channels {_shape(a.c_in)} in the source, {_shape(b.c_in)} here"
    elif b.part != "head" and len(fits) < len(b.shapes):
        row.reason = f"{len(b.shapes) - len(fits)} of its {len(b.shapes)} tensors differ"
    elif b.params and not any(k in b.params for k in fits):
        row.reason = "no parameter has the same shape"
    if row.reason:
        fits = []
    for key, shape in b.shapes.items():
        if key in fits:
            row.copied.append(key)
            row.params_copied += b.params.get(key, 0)
        else:
            row.skipped.append(TensorSkip(key, a.shapes.get(key), shape, _tensor_reason(a.shapes.get(key), shape,
                                                                                         row.reason)))
    return row


def plan_transplant(source: DetectionModel, target: DetectionModel, source_name: str | None = None) -> TransplantReport:
    """The alignment and what would be copied, without touching a weight (models may live on the meta device)."""
    src, tgt = describe_rows(source), describe_rows(target)
    partner = align_rows(src, tgt)
    by_index = {s.index: s for s in src}
    rows = [_row_plan(by_index[partner[b.index]] if b.index in partner else None, b) for b in tgt]
    return TransplantReport(source_name or source.name, source.name, target.name, rows)


@torch.no_grad()
def apply_transplant(report: TransplantReport, source: DetectionModel, target: DetectionModel) -> None:
    """Copy the tensors the report lists from ``source`` into ``target`` (in place)."""
    src_rows = {b.row: m for m, b in zip(source.model, source.layers_info, strict=True)}
    tgt_rows = {b.row: m for m, b in zip(target.model, target.layers_info, strict=True)}
    for r in report.rows:
        if not r.copied:
            continue
        theirs, ours = src_rows[r.source].state_dict(), tgt_rows[r.target].state_dict()
        for key in r.copied:
            ours[key].copy_(theirs[key].to(ours[key].device, ours[key].dtype))
    report.model = target


def _display_name(source: Any, loaded) -> str:
    """A file's name; a built-in YAML's name; a model object's own name."""
    if isinstance(source, str | Path):
        return Path(str(source)).name
    return loaded.model.name


def transplant(source: Any, model: Any, nc: int | None = None, names: list | dict | None = None,
               scale: str | None = None) -> TransplantReport:
    """Initialise ``model`` with the weights of ``source`` by structure; returns the report (``.model`` is
    the initialised model).

    Args:
        source: anything :func:`rtdet.io.load_model` reads: an rtdet checkpoint, a foreign checkpoint
            (converted in memory), a model YAML, a DetectionModel.
        model: the target: a model YAML (built here, its rows' own ``weights=`` loaded), a checkpoint, or a
            DetectionModel (changed in place).
        nc, names: class count and names of the target (default: the YAML's or the checkpoint's); a head
            whose class count differs from the source's keeps every tensor whose shape still agrees.
        scale: scale letter of a multi-scale target YAML.
    """
    loaded = load_model(source, notice=False)
    target = load_model(model, nc=nc, names=names, scale=scale).model
    report = plan_transplant(loaded.model, target, _display_name(source, loaded))
    apply_transplant(report, loaded.model, target)
    return report



def transplant_pretrained(pretrained: str | Path, model: DetectionModel) -> TransplantReport:
    """What ``pretrained=`` does to a model about to be trained: transplant, log the summary line, and
    refuse a source of which nothing fits (a wrong file is better reported than trained from scratch)."""
    source = load_model(pretrained, notice=False).model
    report = plan_transplant(source, model, Path(str(pretrained)).name)
    if not report.transplanted_rows:
        raise WeightLoadError(f"pretrained={pretrained}: no row of {model.name} can take its weights "
                              f"({report.summary()}); is it a checkpoint of a related model?")
    apply_transplant(report, source, model)
    LOGGER.info(f"pretrained: {report.summary()}")
    return report


def write_transplant_report(report: TransplantReport, folder: str | Path) -> tuple[Path, Path]:
    """``transplant.md`` and ``transplant.json`` in ``folder`` (written atomically)."""
    folder = Path(folder)
    return (atomic_write_text(folder / "transplant.md", report.to_markdown()),
            atomic_write_text(folder / "transplant.json", report.to_json()))


def transplant_file(source: str | Path, model: Any, to: str | Path | None = None, nc: int | None = None,
                    names: list | dict | None = None, scale: str | None = None) -> tuple[Path, TransplantReport]:
    """``rtdet transplant``: the initialised target written as an rtdet checkpoint (``model`` = it, plus the
    report as plain types), which ``rtdet train model=<it>`` and :func:`load_model` read. Default output:
    ``<model stem>-from-<source stem>.pt`` in the current folder. Returns (written path, report)."""
    report = transplant(source, model, nc=nc, names=names, scale=scale)
    if not report.transplanted_rows:
        raise WeightLoadError(f"{source}: no row of {report.target} can take its weights ({report.summary()}); "
                              f"nothing written")
    out = Path(to) if to else Path(f"{report.target}-from-{Path(str(source)).stem}.pt")
    if isinstance(source, str | Path) and out.resolve() == Path(source).resolve():
        raise CheckpointError(f"{out}: would overwrite the source; choose another to=")
    save_checkpoint({"model": report.model.to_checkpoint(), "transplant": report.to_dict()}, out)
    return out, report
