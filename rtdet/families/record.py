"""One declared record per model family, and the factory that binds a head to its loss.

    from rtdet.families import Family, register_family, criterion_for
    register_family(Family(name="toy", heads=(ToyHead,), criterion=ToyCriterion, recipe=Path("toy.yaml")))
    criterion = criterion_for(model.head, hyp)   # ToyCriterion(nc=head.nc, **hyp)

A family is a head (or several heads of one design), the criterion that trains it, and the files that set
its defaults: a recipe (the paper's settings), demo settings (a few CPU epochs, ``rtdet demo``), data
pipelines, and the modules that convert its reference checkpoints. The record is the one place that names
them all. Heads and criteria never import each other: the record, one layer above both, binds them (as
DETR's ``build()`` does), and the engine asks the record, never a family's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtdet.data.pipelines import register_pipeline, unregister_pipeline
from rtdet.losses.base import Criterion
from rtdet.nn.heads.base import DetectionHead
from rtdet.utils.schema import Setting

CFG = Path(__file__).resolve().parents[1] / "cfg"  # the built-in families' recipes, demos and pipelines

__all__ = ["CFG", "Family", "FamilyError", "criterion_for", "families", "family_of", "get_family", "register_family",
           "unregister_family"]


class FamilyError(ValueError):
    """A family record that cannot be registered, or a head whose family cannot train."""


def nc_only(head: DetectionHead) -> dict[str, Any]:
    """The criterion arguments most families need from their head: the class count."""
    return {"nc": head.nc}


@dataclass(frozen=True)
class Family:
    """Everything that makes a model family, declared once.

    Attributes:
        name: the value of every head's ``family`` attribute; names the family in messages and settings.
        heads: the head classes (``@register(channels="head")`` subclasses of ``DetectionHead``).
        criterion: the loss class (a :class:`~rtdet.losses.base.Criterion`); None for a family that is
            only run (validated, exported), never trained.
        criterion_args: ``head -> {argument: value}``: what the criterion's constructor takes from the built
            head (its class count, strides, ...); the settings' values are added to them.
        recipe: the paper's settings (values of existing keys only); None: default.yaml and the criterion's
            defaults.
        demo: what ``rtdet demo`` adds to the recipe for a few CPU epochs; None: the recipe alone.
        pipelines: data pipeline files the recipe may name (``train_pipeline: <stem>``).
        converters: modules that register the family's checkpoint formats (``rtdet.io.register_format``),
            imported when a foreign checkpoint is read.
    """

    name: str
    heads: tuple[type[DetectionHead], ...]
    criterion: type[Criterion] | None = None
    criterion_args: Callable[[DetectionHead], dict[str, Any]] = nc_only
    recipe: Path | None = None
    demo: Path | None = None
    pipelines: tuple[Path, ...] = ()
    converters: tuple[str, ...] = ()

    @property
    def settings(self) -> tuple[Setting, ...]:
        """The loss settings the family accepts (its criterion's ``SETTINGS``)."""
        return self.criterion.SETTINGS if self.criterion is not None else ()

    def build_criterion(self, head: DetectionHead, hyp: dict[str, Any] | None = None) -> Criterion:
        """The loss for a built ``head``, with the settings' values ``hyp``."""
        if self.criterion is None:
            raise FamilyError(f"the {self.name} family declares no criterion: its models can be validated, "
                              f"predicted and exported, not trained")
        return self.criterion(**self.criterion_args(head), **(hyp or {}))


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family, replace: bool = False) -> Family:
    """Make a family known to the engine: its loss settings, recipe, demo settings and pipelines. Checks that
    every head declares this family and subclasses ``DetectionHead``, and that every file exists."""
    problems = _problems(family)
    if problems:
        raise FamilyError(f"family {family.name!r}: " + "; ".join(problems))
    old = _FAMILIES.get(family.name)
    if old is not None and old != family and not replace and not _same_definition(old, family):
        raise FamilyError(f"a family named {family.name!r} is already registered; pass replace=True to override it")
    if old is not None:
        unregister_family(old.name)  # its pipeline names are free for the new record's files
    try:
        for path in family.pipelines:
            register_pipeline(path)
    except ValueError:
        if old is not None:
            register_family(old, replace=True)
        raise
    _FAMILIES[family.name] = family
    return family


def _problems(family: Family) -> list[str]:
    out = []
    if not family.name or not family.heads:
        out.append("a family needs a name and at least one head class")
    for head in family.heads:
        if not (isinstance(head, type) and issubclass(head, DetectionHead)):
            out.append(f"{head!r} is not a DetectionHead subclass")
        elif head.family != family.name:
            out.append(f"head {head.__name__} declares family {head.family!r}")
    if family.criterion is not None and not (isinstance(family.criterion, type)
                                             and issubclass(family.criterion, Criterion)):
        out.append(f"criterion {family.criterion!r} is not a rtdet.losses.base.Criterion subclass")
    for what, path in [("recipe", family.recipe), ("demo", family.demo)] + [("pipeline", p) for p in family.pipelines]:
        if path is not None and not Path(path).is_file():
            out.append(f"{what} file {path} not found")
    return out


def _same_definition(old: Family, new: Family) -> bool:
    """Re-importing the module that registered a family (a reloaded notebook cell) re-registers silently."""
    return [(h.__module__, h.__qualname__) for h in old.heads] == [(h.__module__, h.__qualname__) for h in new.heads]


def unregister_family(name: str) -> None:
    """Forget a family (tests, notebooks) and the pipeline names it registered."""
    family = _FAMILIES.pop(name, None)
    for path in family.pipelines if family is not None else ():
        unregister_pipeline(path)


def families() -> dict[str, Family]:
    """Every registered family by name."""
    return dict(_FAMILIES)


def get_family(name: str | None) -> Family | None:
    """The record of family ``name``; None for no name or a family nobody registered (a head made only to be
    run, such as an ONNX Runtime model's stand-in: default settings, no loss)."""
    return _FAMILIES.get(name) if name else None


def family_of(head: Any) -> Family | None:
    """The record of a head's family (None when it has none registered)."""
    return get_family(getattr(head, "family", None))


def criterion_for(head: DetectionHead, hyp: dict[str, Any] | None = None) -> Criterion:
    """The loss that trains ``head``: its family's criterion, bound to the head."""
    family = family_of(head)
    if family is None:
        raise FamilyError(f"{type(head).__name__} declares family {head.family!r}, which no family record "
                          f"names: register one with rtdet.families.register_family (docs/families.md)")
    return family.build_criterion(head, hyp)
