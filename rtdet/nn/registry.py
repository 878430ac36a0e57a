"""Module registry: the names a model YAML may use, and how each module's channels follow from its inputs.

A module becomes usable from YAML with one decorator::

    @register                         # channel rule "scaled": args[0] is c2, c1 is prepended
    class MyConv(nn.Module): ...

    @register(channels="same")        # c1 prepended, output channels = input channels
    class MyAttention(nn.Module): ...

    @register("MyBlock", channels=my_rule)   # any callable with the ChannelRule signature

Built-in modules go through exactly the same path. A channel rule is a function
``rule(args, row) -> (args, c2, n)`` that receives the YAML arguments (strings already resolved) and a
:class:`RowContext` (input channels, width/depth multipliers, repeats), and returns the constructor
arguments, the output channels (an int, or a list for multi-output layers) and the repeat count left
for the builder (1 when the module repeats internally).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

__all__ = [
    "RowContext",
    "ModuleEntry",
    "register",
    "lookup",
    "registered_names",
    "head_classes",
    "make_divisible",
    "RULES",
    "scaled",
    "BACKBONE",
]


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` that is >= x (Ultralytics' width rounding)."""
    return int(math.ceil(x / divisor) * divisor)


@dataclass
class RowContext:
    """What a channel rule may know about the YAML row being built."""

    index: int  # row number (global: backbone rows, then head rows)
    module: str  # the name written in the YAML
    c_in: list[int | list[int]]  # output channels of every `from` input, in order
    n: int  # repeats after depth scaling
    width: float = 1.0
    max_channels: float = float("inf")
    nc: int = 80

    @property
    def c1(self) -> int:
        """Channels of the first (usually only) input."""
        c = self.c_in[0]
        if isinstance(c, list):
            raise ValueError(
                f"row {self.index} ({self.module}): its input is a multi-output layer with channels {c}; "
                f"pick one map first with an Index row, e.g. [-1, 1, Index, [{c[-1]}, {len(c) - 1}]]"
            )
        return c

    def scale_width(self, c2: int) -> int:
        """Width-scale an output channel count: make_divisible(min(c2, max_channels) * width, 8)."""
        return make_divisible(min(c2, self.max_channels) * self.width, 8)


ChannelRule = Callable[[list, RowContext], tuple[list, Any, int]]

# Marker for modules that return several maps: the builder reads their channels from the built module's
# `out_channels` attribute (a list of ints), since they depend on the module's own configuration.
BACKBONE = "backbone"


def scaled(repeat_at: int | None = None) -> ChannelRule:
    """args[0] is c2 and is width-scaled; c1 is prepended. With ``repeat_at`` the repeat count n is
    inserted into the arguments at that index and the module repeats internally (n reset to 1)."""

    def rule(args: list, row: RowContext) -> tuple[list, int, int]:
        if not args:
            raise ValueError(f"expects its output channels as the first argument, e.g. [{row.c1}]")
        c2 = args[0]
        if isinstance(c2, bool) or not isinstance(c2, int) or c2 < 1:
            raise ValueError(f"its first argument is the number of output channels, a positive integer; got {c2!r}")
        c2 = row.scale_width(c2)
        args = [row.c1, c2, *args[1:]]
        n = row.n
        if repeat_at is not None:
            args.insert(repeat_at, n)
            n = 1
        return args, c2, n

    return rule


def _same(args: list, row: RowContext) -> tuple[list, int, int]:
    return [row.c1, *args], row.c1, row.n


def _passthrough(args: list, row: RowContext) -> tuple[list, int, int]:
    return list(args), row.c_in[0], row.n


def _concat(args: list, row: RowContext) -> tuple[list, int, int]:
    if any(isinstance(c, list) for c in row.c_in):
        raise ValueError("cannot concatenate a multi-output layer; pick its maps with Index rows first")
    return list(args), sum(row.c_in), row.n


def _backbone(args: list, row: RowContext) -> tuple[list, str, int]:
    return [row.c1, *args], BACKBONE, row.n


def _head(args: list, row: RowContext) -> tuple[list, None, int]:
    """``[[p3, p4, p5], 1, Head, [nc, ...]]`` -> Head(nc, [c3, c4, c5], ...): a family head receives the
    class count and the channels of every map it reads; it produces no map for later rows."""
    if not args:
        raise ValueError("expects the number of classes as its first argument, e.g. [nc]")
    nc = args[0]
    if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
        raise ValueError(f"the number of classes must be a positive integer, got {nc!r}")
    if any(isinstance(c, list) for c in row.c_in):
        raise ValueError("reads a multi-output layer directly; pick its maps with Index rows first")
    if row.n != 1:
        raise ValueError(f"a head cannot be repeated (repeats = {row.n}); write 1")
    return [nc, [int(c) for c in row.c_in], *args[1:]], None, 1


RULES: dict[str, ChannelRule] = {
    "scaled": scaled(),
    "same": _same,
    "passthrough": _passthrough,
    "concat": _concat,
    "backbone": _backbone,
    "head": _head,
}


@dataclass
class ModuleEntry:
    """A registered module: its class and the rule that plumbs its channels."""

    name: str
    cls: type[nn.Module]
    channels: ChannelRule
    is_head: bool = False
    meta: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModuleEntry] = {}
_HEAD_BASE: list[type[nn.Module]] = []  # the class every head derives from, declared by rtdet.nn.heads.base


def declare_head_base(base: type[nn.Module]) -> None:
    """Name the class every registered head must subclass (``DetectionHead``: rtdet/nn/heads/base.py calls
    this). Declared from above rather than imported here, so the registry stays below the heads that use it."""
    _HEAD_BASE[:] = [base]


def register(
    obj: type[nn.Module] | str | None = None,
    *,
    channels: str | ChannelRule = "scaled",
    name: str | None = None,
    head: bool = False,
    replace: bool = False,
):
    """Register an ``nn.Module`` class under its name (or ``name``) with a channel rule.

    ``channels`` is one of "scaled", "same", "passthrough", "concat", "backbone", "head", or a callable
    ``rule(args, row) -> (args, c2, n)``. ``channels="head"`` (or ``head=True`` with a rule of its own)
    marks the detection head of a family: the last row of a model, given ``nc`` and its inputs' channels,
    the strides of its inputs once built (``setup``) and the training targets. Usable bare
    (``@register``) or with arguments (``@register(channels="same")``, ``@register("Alias")``).
    """
    if isinstance(obj, str):  # @register("Name", ...)
        return register(channels=channels, name=obj, head=head, replace=replace)

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"@register expects an nn.Module subclass, got {cls!r}")
        if isinstance(channels, str) and channels not in RULES:
            raise ValueError(f"unknown channel rule {channels!r}; choose one of {sorted(RULES)} or a function")
        rule = RULES[channels] if isinstance(channels, str) else channels
        key = name or cls.__name__
        is_head = head or channels == "head"
        if is_head and _HEAD_BASE and not issubclass(cls, _HEAD_BASE[0]):
            raise TypeError(f"@register(channels='head'): {cls.__qualname__} must subclass "
                            f"{_HEAD_BASE[0].__module__}.{_HEAD_BASE[0].__qualname__}, the interface the engine uses "
                            f"(family, setup, decode, postprocess)")
        old = _REGISTRY.get(key)
        # re-importing the same file (e.g. a reloaded notebook cell) re-registers silently
        same_definition = old is not None and (old.cls.__module__, old.cls.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if old is not None and not same_definition and not replace:
            raise ValueError(
                f"a module named {key!r} is already registered ({old.cls.__module__}.{old.cls.__qualname__}); "
                f"pass name='...' for another name or replace=True to override it"
            )
        _REGISTRY[key] = ModuleEntry(key, cls, rule, is_head)
        return cls

    if obj is None:
        return decorate
    return decorate(obj)


def unregister(name: str) -> None:
    """Remove a name from the registry (tests and interactive sessions)."""
    _REGISTRY.pop(name, None)


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def head_classes() -> list[type[nn.Module]]:
    """Every registered head class (built-in and user-registered), in registration order."""
    return [e.cls for e in _REGISTRY.values() if e.is_head]


MAX_UPSAMPLE = 16  # nn.Upsample: scale factor per row (the references use 2); a map can never grow unbounded
MAX_SIZE = 8192  # nn.Upsample: output side in pixels


def _upsample(args: list, row: RowContext) -> tuple[list, int, int]:
    """``nn.Upsample [size, scale_factor, mode]``: channels pass through; size and factor are bounded so
    that a typo cannot ask for a map larger than memory."""
    size = args[0] if args else None
    factor = args[1] if len(args) > 1 else None
    for value, what, low, high in ((size, "size", 0, MAX_SIZE), (factor, "scale_factor", 0, MAX_UPSAMPLE)):
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not low < v <= high:
                raise ValueError(f"{what} must be a number in ({low}, {high}], got {value!r}")
    return list(args), row.c_in[0], row.n


# torch.nn modules usable as `nn.X`: how their channels follow. Anything else under nn.* passes through.
_TORCH_RULES: dict[str, ChannelRule] = {
    "BatchNorm2d": lambda args, row: ([row.c1], row.c1, row.n),
    "ConvTranspose2d": scaled(),
    "Upsample": _upsample,
}


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def lookup(name: str, row: int | None = None) -> ModuleEntry:
    """The registry entry for a YAML module name; ``nn.X`` resolves to ``torch.nn.X``.

    Unknown names raise a ``KeyError`` that names the row, the closest registered names, and how to
    register a module.
    """
    where = f"row {row}: " if row is not None else ""
    if name.startswith("nn."):
        attr = name[3:]
        cls = getattr(nn, attr, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            close = difflib.get_close_matches(attr, [a for a in dir(nn) if a[:1].isupper()], n=3)
            hint = f" Did you mean {', '.join('nn.' + c for c in close)}?" if close else ""
            raise KeyError(f"{where}'{name}' is not a torch.nn module.{hint}")
        if cls.forward is nn.Module.forward or issubclass(cls, _CONTAINERS):
            raise KeyError(f"{where}'{name}' cannot be a row: it is an abstract base or a container of other "
                           f"modules, not a layer (write one row per layer, e.g. nn.Upsample, nn.Identity)")
        return ModuleEntry(name, cls, _TORCH_RULES.get(attr, _passthrough))
    entry = _REGISTRY.get(name)
    if entry is None:
        raise KeyError(unknown_module_message(name, row))
    return entry


REGISTER_HINT = (
    "To use your own module, decorate its class with @rtdet.register (e.g. @register(channels='same')) "
    "and import that file before building the model; see docs/extending.md."
)


def unknown_module_hint(name: str) -> str:
    """'Closest registered names: ...' for a name that is not registered (empty when nothing is close)."""
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    if not close:  # case-insensitive second try: 'conv' -> 'Conv'
        lower = {k.lower(): k for k in _REGISTRY}
        close = [lower[k] for k in difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.5)]
    return f"closest registered names: {', '.join(close)}." if close else "no registered name is close."


def unknown_module_message(name: str, row: int | None = None) -> str:
    where = f"row {row}: " if row is not None else ""
    return f"{where}unknown module '{name}'; {unknown_module_hint(name)} {REGISTER_HINT}"


# Activations a YAML may name: torch.nn's element-wise activation modules (and nn.Identity for none).
# Attention, softmax and GLU (which halves the channels) live in the same torch file but are no
# activation for a conv.
_NOT_ACTIVATIONS = ("MultiheadAttention", "Softmax", "Softmin", "Softmax2d", "LogSoftmax", "GLU")


def activation_names() -> list[str]:
    """Every name ``activation:`` accepts (``nn.SiLU``, ``nn.ReLU``, ...)."""
    import torch.nn.modules.activation as acts

    names = [k for k, v in vars(acts).items() if isinstance(v, type) and issubclass(v, nn.Module)
             and v.__module__ == acts.__name__ and k not in _NOT_ACTIVATIONS]
    return sorted(f"nn.{k}" for k in [*names, "Identity"])


def resolve_activation(spec: Any) -> nn.Module:
    """Turn a YAML ``activation`` value (``nn.ReLU``, ``nn.SiLU()``, ``nn.LeakyReLU(0.1)``,
    ``nn.ReLU(inplace=True)``) into a module without eval: only torch.nn's activation modules, with plain
    literal arguments, are accepted."""
    import ast

    if isinstance(spec, nn.Module):
        return spec
    text = str(spec).strip()
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ValueError(f"activation {text!r}: expected a torch.nn activation such as 'nn.SiLU()' or "
                         f"'nn.LeakyReLU(0.1)'") from None
    call = node if isinstance(node, ast.Call) else None
    target = call.func if call is not None else node
    if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "nn"):
        raise ValueError(f"activation {text!r}: expected a torch.nn activation such as 'nn.SiLU()' or 'nn.ReLU'")
    name = f"nn.{target.attr}"
    if name not in activation_names():
        what = (f"torch.nn has no module {target.attr!r}" if getattr(nn, target.attr, None) is None
                else f"{name} is not an activation module")
        raise ValueError(f"activation {text!r}: {what}; activations: {', '.join(activation_names())}")
    args, kwargs = [], {}
    if call is not None:
        try:
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
        except ValueError:
            raise ValueError(f"activation {text!r}: arguments must be plain literals such as 0.1 or True") from None
        if len(kwargs) != len(call.keywords):
            raise ValueError(f"activation {text!r}: arguments must be plain literals such as 0.1 or True")
    import torch

    try:
        act = getattr(nn, target.attr)(*args, **kwargs)
        x = torch.linspace(-2, 2, 8).view(1, 2, 2, 2)
        ok = act(x).shape == x.shape  # element-wise: a conv's channels pass through unchanged
    except Exception as e:
        raise ValueError(f"activation {text!r}: {type(e).__name__}: {e}") from None
    if not ok:
        raise ValueError(f"activation {text!r}: changes the shape of its input; an activation must be element-wise")
    return act

