"""Model YAML -> built layers.

Rows are ``[from, repeats, module, args]`` numbered globally (backbone rows, then head rows). The
semantics follow Ultralytics' ``parse_model`` for every name it knows; how a module's channels follow
from its inputs is declared where the module is registered (see :mod:`rtdet.nn.registry`).

Two conventions for layers that return several maps are supported:

* ``index`` (Ultralytics): the multi-output layer occupies one row; later rows pick a map with
  ``[k, 1, Index, [c2, i]]``.
* ``slots`` (community): a multi-output layer in row 0 fills five index slots 0-4, right-aligned (four
  maps -> slots 1-4, slot 0 empty); every later row's index is its row number + 4, and ``-1`` right
  after it means its last map. Chosen automatically when row 0 returns several maps and no row uses
  ``Index``; a top-level ``multi_output: index|slots`` key forces one.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import inspect
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from rtdet.nn.modules.common import use_activation
from rtdet.nn.registry import (
    BACKBONE,
    REGISTER_HINT,
    RULES,
    RowContext,
    lookup,
    resolve_activation,
    unknown_module_hint,
)
from rtdet.utils.yaml_file import read_yaml

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin")  # a backbone row's first argument that names a weights file

__all__ = ["MAX_CHANNELS", "MAX_PARAMETERS", "MAX_REPEATS", "MODELS_DIR", "BuiltLayer", "ModelConfigError",
           "WEIGHT_SUFFIXES", "load_model_yaml", "parse_model", "resolve_model_path", "split_weights"]

MODELS_DIR = Path(__file__).resolve().parent.parent / "cfg" / "models"
N_SLOTS = 5

# Limits of a model YAML (docs/yaml.md). Each is far above any real detector and far below what exhausts a
# machine: a row beyond one is refused before anything is allocated.
MAX_REPEATS = 64  # repeats of one row (the references use at most 9)
MAX_CHANNELS = 16384  # output channels of one layer (the references use at most 2048)
MAX_CLASSES = 100_000  # nc
MAX_ARGUMENT = 1_048_576  # any number in a row's arguments
MAX_PARAMETERS = 2_000_000_000  # the whole model (8 GB of float32), estimated on the meta device first
MAX_TENSORS = 20_000  # tensors one row creates (a ConvNeXt V2-H backbone row: about 1,000)


class ModelConfigError(ValueError):
    """A model YAML that cannot be built; the message names the file, the row and what was expected."""


@dataclass
class BuiltLayer:
    """Bookkeeping for one YAML row (also attached to the module as attributes for info())."""

    row: int
    slot: int  # index later rows use to refer to this row's output
    slots: list[int] | None  # slot-convention multi-output row 0: the slots its maps fill
    f: int | list[int]  # inputs as absolute slots (-1 = the image)
    f_written: Any
    n: int
    name: str
    args: list
    c2: Any
    weights: str | None = None  # the row's own pretrained weights file (``weights=path``), loaded by rtdet.io


def resolve_model_path(cfg: str | Path) -> tuple[Path, str | None]:
    """Find a model YAML: an existing path, or a built-in name such as ``rtdetr-l.yaml`` (searched in
    ``rtdet/cfg/models/*/``). ``yolov9c.yaml``-style names whose file does not exist fall back to the
    unified file without the scale letter, returning that letter as the scale."""
    path = Path(cfg)
    if path.suffix not in (".yaml", ".yml"):
        path = path.with_suffix(".yaml")
    if path.is_file():
        return path, None
    matches = sorted(MODELS_DIR.glob(f"*/{path.name}"))
    if matches:
        return matches[0], None
    unified = re.sub(r"(\d+)([nslmxt])(-[a-z0-9-]+)?\.yaml$", r"\1\3.yaml", path.name)
    if unified != path.name:
        scale = re.search(r"\d+([nslmxt])(-[a-z0-9-]+)?\.yaml$", path.name).group(1)
        found = sorted(MODELS_DIR.glob(f"*/{unified}"))
        if found:
            return found[0], scale
    available = sorted(p.name for p in MODELS_DIR.glob("*/*.yaml"))
    raise FileNotFoundError(
        f"model YAML '{cfg}' not found as a file or among the built-in models. "
        f"Built-in models: {', '.join(available)}"
    )


def guess_scale(name: str) -> str | None:
    """Scale letter from a file name as Ultralytics guesses it (``yolov8n.yaml`` -> 'n')."""
    m = re.search(r"yolo(?:e-)?v?\d+([nslmx])", Path(name).stem)
    return m.group(1) if m else None


def load_model_yaml(cfg: str | Path | dict) -> dict:
    """Read a model YAML (path, built-in name or dict) into a plain dict with ``yaml_file`` set."""
    if isinstance(cfg, bool) or not isinstance(cfg, str | Path | dict):
        raise TypeError(f"a model is a model YAML path, a built-in name such as 'rtdetr-l.yaml', or a dict of "
                        f"the YAML's contents; got {type(cfg).__name__} {cfg!r}")
    if isinstance(cfg, dict):
        d = copy.deepcopy(cfg)
        d.setdefault("yaml_file", "<dict>")
        d.setdefault("name", "model")
        return d
    path, scale = resolve_model_path(cfg)
    d = read_yaml(path, ModelConfigError)  # the one YAML reader: its errors name the file and line
    if not isinstance(d, dict):
        raise ModelConfigError(f"{path}: expected a mapping with 'backbone' and 'head', got {type(d).__name__}")
    d["yaml_file"] = str(path)
    d.setdefault("name", Path(str(cfg)).stem)
    if scale and "scale" not in d:
        d["scale"] = scale
    elif "scale" not in d and guess_scale(str(cfg)):
        d["scale"] = guess_scale(str(cfg))
    return d


def _resolve_arg(a: Any, namespace: dict) -> Any:
    """String arguments name model values ('nc') or are Python literals ('None', '[1, 2]')."""
    if not isinstance(a, str):
        return a
    if a in namespace:
        return namespace[a]
    with contextlib.suppress(ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return ast.literal_eval(a)
    return a


def _number(d: dict, key: str, default: float, where: str, low: float = 0.0, high: float = 1e6) -> float:
    """A top-level number of the YAML (depth_multiple, width_multiple ...), checked."""
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (low < value <= high):
        raise ModelConfigError(f"{where}: '{key}' must be a number in ({_g(low)}, {_g(high)}], got {value!r}")
    return float(value)


def _g(x: float) -> str:
    return f"{x:g}"


def _scales(d: dict, where: str) -> tuple[float, float, float]:
    scales = d.get("scales")
    if scales:
        if not isinstance(scales, dict):
            raise ModelConfigError(f"{where}: 'scales' must map scale letters to [depth, width, max_channels], "
                                   f"got {scales!r}")
        scale = d.get("scale")
        if not scale:
            scale = next(iter(scales))
            d["scale"] = scale
        if scale not in scales:
            raise ModelConfigError(f"{where}: scale '{scale}' is not among the YAML's scales {list(scales)}")
        values = scales[scale]
        if not (isinstance(values, list | tuple) and len(values) == 3):
            raise ModelConfigError(f"{where}: scales.{scale} must be [depth, width, max_channels], got {values}")
        named = dict(zip(("depth", "width", "max_channels"), values))
        depth, width, max_channels = (_number(named, k, 1.0, f"{where}: scales.{scale}",
                                              high=MAX_CHANNELS if k == "max_channels" else 64.0) for k in named)
        return depth, width, max_channels
    return (_number(d, "depth_multiple", 1.0, where, high=64.0), _number(d, "width_multiple", 1.0, where, high=64.0),
            float("inf"))


def _positive_int(value: Any, what: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValueError(f"{what} must be a positive integer (at most {limit:,}), got {value!r}")
    return value


def _check_top_level(d: dict, where: str) -> None:
    """nc and ch: positive integers (a head reads nc; a bad one must not reach torch's allocator)."""
    try:
        _positive_int(d.get("nc"), "nc (the number of classes)", MAX_CLASSES)
        _positive_int(d.get("ch"), "ch (input channels)", 64)
    except ValueError as e:
        raise ModelConfigError(f"{where}: {e}") from None


def _check_numbers(args: Any, where: str) -> None:
    """Every number in a row's arguments is finite and at most MAX_ARGUMENT in size: a count or size
    beyond that is a typo that would otherwise stall the build or exhaust memory."""
    for a in args if isinstance(args, list | tuple) else [args]:
        if isinstance(a, list | tuple):
            _check_numbers(a, where)
        elif isinstance(a, int | float) and not isinstance(a, bool) and (not math.isfinite(a) or abs(a) > MAX_ARGUMENT):
            raise ModelConfigError(f"{where}: argument {a!r} is out of range (numbers in a model YAML are at "
                                   f"most {MAX_ARGUMENT:,} in size)")


def _check_channels(c2: Any, where: str) -> None:
    """A layer's output channels: a positive integer, or a list of them (multi-output layers)."""
    values = c2 if isinstance(c2, list) else [c2]
    for c in values:
        try:
            _positive_int(c, "output channels", MAX_CHANNELS)
        except ValueError as e:
            raise ModelConfigError(f"{where}: {e}") from None


def _check_rows(d: dict, where: str) -> list:
    for key in ("backbone", "head"):
        if key not in d:
            raise ModelConfigError(
                f"{where}: missing the '{key}' section (a list of [from, repeats, module, args] rows)"
            )
        if not isinstance(d[key], list):
            raise ModelConfigError(f"{where}: '{key}' must be a list of rows, got {type(d[key]).__name__}")
    rows = list(d["backbone"]) + list(d["head"])
    if not rows:
        raise ModelConfigError(f"{where}: the model has no rows")
    for i, row in enumerate(rows):
        if not (isinstance(row, list | tuple) and len(row) == 4):
            raise ModelConfigError(
                f"{where}: row {i} is {row!r}; expected 4 items [from, repeats, module, args], "
                f"e.g. [-1, 1, Conv, [64, 3, 2]]"
            )
        f, n, m, args = row

        def is_int(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        if not (is_int(f) or (isinstance(f, list) and f and all(is_int(x) for x in f))):
            raise ModelConfigError(f"{where}: row {i}: 'from' must be an int or a list of ints, got {f!r}")
        if not is_int(n) or n < 1:
            raise ModelConfigError(f"{where}: row {i}: repeats must be a positive int, got {n!r}")
        if n > MAX_REPEATS:
            raise ModelConfigError(f"{where}: row {i}: repeats {n:,} is more than the limit of {MAX_REPEATS}")
        if not isinstance(m, str):
            raise ModelConfigError(f"{where}: row {i}: module must be a name, got {m!r}")
        if not isinstance(args, list):
            raise ModelConfigError(f"{where}: row {i} ({m}): args must be a list, got {args!r}")
    return rows


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


class _OverLimit(Exception):
    """A row's meta build passed a limit (message: which one)."""


class _ShapesOnly(TorchFunctionMode):
    """Counts the tensors a meta-device build creates, stopping it at ``max_tensors`` tensors or
    ``max_elements`` elements, and skips in-place initialisation (uniform_, normal_, zero_, ...) of meta
    tensors: they hold no data, and skipping makes the meta build nearly free. Shape-changing in-place ops
    still run."""

    _KEEP = frozenset({"resize_", "resize_as_", "set_", "as_strided_", "squeeze_", "unsqueeze_", "t_", "transpose_",
                       "swapdims_", "swapaxes_", "requires_grad_"})

    def __init__(self, max_tensors: int, max_elements: int):
        super().__init__()
        self.max_tensors, self.max_elements = max_tensors, max_elements
        self.tensors = self.elements = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        in_place = name.endswith("_") and not name.endswith("__") and name not in self._KEEP
        if in_place and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.is_meta and not (args and isinstance(args[0], torch.Tensor)):
            self.tensors += 1  # a factory (empty, zeros, ...): a new tensor, not a view of an argument
            self.elements += out.numel()
            if self.tensors > self.max_tensors:
                raise _OverLimit(f"creates more than {self.max_tensors:,} weight tensors")
            if self.elements > self.max_elements:
                raise _OverLimit(f"holds more than {self.max_elements:,} parameters")
        return out


def _estimate_parameters(cls: type[nn.Module], args: list, n: int, budget: int, where: str) -> int | None:
    """Parameters of ``n`` instances, counted on the meta device (shapes only: nothing allocated, no random
    numbers drawn). A row over the parameter ``budget`` or over MAX_TENSORS tensors is refused while it is
    being counted, so a huge count among its arguments costs no time. None when the module cannot be built
    on the meta device (the real build then reports its own error)."""
    guard = _ShapesOnly(MAX_TENSORS, budget // max(n, 1))
    try:
        with torch.device("meta"), guard, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")  # see _instantiate
            probe = cls(*args)
    except _OverLimit as e:
        raise ModelConfigError(f"{where}: {e} (limits: {MAX_PARAMETERS:,} parameters per model, {MAX_TENSORS:,} "
                               f"tensors per row); check its arguments {args}") from None
    except Exception:
        return None
    return n * sum(p.numel() for p in probe.parameters())


def _instantiate(cls: type[nn.Module], args: list, n: int, where: str) -> nn.Module:
    try:
        inspect.signature(cls).bind(*args)
    except TypeError as e:
        try:
            sig = f"{cls.__name__}{inspect.signature(cls)}"
        except (TypeError, ValueError):
            sig = cls.__name__
        raise ModelConfigError(f"{where}: arguments {args} do not fit {sig} ({e})") from None
    except ValueError:  # builtins without an introspectable signature
        pass
    try:
        # A zero-size weight (kernel 0) is reported by the probe forward, naming its row; torch's init
        # warning about it would only be a second, vaguer line.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            if n > 1:
                return nn.Sequential(*(cls(*args) for _ in range(n)))
            module = cls(*args)
    except ModelConfigError:
        raise
    except Exception as e:  # the module's own checks, or torch's: add the file and row
        raise ModelConfigError(f"{where}: {_first_line(e)}") from None
    if not isinstance(module, nn.Module):
        raise ModelConfigError(f"{where}: building it gave a {type(module).__name__}, not an nn.Module")
    return module


def parse_model(d: dict, ch: int = 3, verbose: bool = False) -> tuple[list[nn.Module], list[BuiltLayer], set[int]]:
    """Build every row of a model dict. Returns the modules, their bookkeeping and the saved slots.

    Every problem raises ModelConfigError naming the file, the row and the value: a malformed row, an
    unknown module, arguments that do not fit, a limit exceeded (rows are refused before their weights
    are allocated), or anything a module's constructor raises.

    A row may name pretrained weights for its module (``weights=path`` among its args, see
    :func:`split_weights`). The builder only records them (``BuiltLayer.weights``): reading files is the job
    of :func:`rtdet.io.rows.load_row_weights`, which the loader calls for a model built from a YAML."""
    where = d.get("yaml_file", "<dict>")
    d.setdefault("nc", 80)
    d.setdefault("ch", ch)
    _check_top_level(d, where)
    rows = _check_rows(d, where)
    depth, width, max_channels = _scales(d, where)
    nc = d["nc"]
    namespace = {k: v for k, v in d.items() if isinstance(v, int | float | str) and k not in ("yaml_file", "name")}
    namespace["nc"] = nc
    entries = _lookup_all(rows, where)

    # A multi-output row 0 uses the slot convention unless some row picks maps with Index.
    uses_index = any(e.cls.__name__ == "Index" for e in entries)
    mode = d.get("multi_output") or ("index" if uses_index else "slots")
    if mode not in ("index", "slots"):
        raise ModelConfigError(f"{where}: multi_output must be 'index' or 'slots', got {mode!r}")

    act = None
    if d.get("activation"):
        try:
            act = resolve_activation(d["activation"])  # one instance for the whole model, given to every row
        except ValueError as e:
            raise ModelConfigError(f"{where}: {e}") from None

    graph = _Graph(ch_by_slot={-1: d["ch"]}, mode=mode, yaml_file=where, act=act)
    for i, (row, entry) in enumerate(zip(rows, entries, strict=True)):
        row_where = f"{where}: row {i} ({row[2]})"
        try:
            module, info = _build_row(i, row, entry, graph, namespace, (depth, width, max_channels), row_where)
        except ModelConfigError:
            raise
        except Exception as e:  # anything unforeseen still names the file and the row
            raise ModelConfigError(f"{row_where}: {_first_line(e)}") from None
        if verbose:
            print(f"{info.slot:>4}{str(info.f_written):>20}{info.n:>4}{module.np:>12}  {info.name:<28}{info.args}")
    return graph.layers, graph.built, graph.save


def split_weights(args: list, entry, row_where: str) -> tuple[list, str | None]:
    """(constructor args, weights path or None) of one row. The weights are a ``weights=path`` string or a
    ``{weights: path}`` mapping among the args; a backbone row may also give the path as its first
    argument (the community backbones' habit: ``convnextv2_atto(weights='')``)."""
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


def _lookup_all(rows: list, where: str) -> list:
    """Registry entries of every row; every unknown name is reported at once, not one per attempt."""
    entries, unknown = [], {}
    for i, (_, _, m, _) in enumerate(rows):
        try:
            entries.append(lookup(m, row=i))
        except KeyError as e:
            unknown.setdefault(m, []).append((i, e.args[0]))
    if unknown:
        if len(unknown) == 1 and len(next(iter(unknown.values()))) == 1:
            raise ModelConfigError(f"{where}: {next(iter(unknown.values()))[0][1]}")
        raise ModelConfigError(f"{where}: unknown modules {', '.join(unknown)}:\n" + "\n".join(
            f"  {name} (row{'s' if len(hits) > 1 else ''} {', '.join(str(i) for i, _ in hits)}): "
            f"{unknown_module_hint(name)}"
            for name, hits in unknown.items()
        ) + f"\n{REGISTER_HINT}")
    return entries


@dataclass
class _Graph:
    """What the rows built so far: channels by slot, layers, bookkeeping, saved slots, parameters."""

    ch_by_slot: dict[int, Any]
    mode: str
    yaml_file: str = "<dict>"
    layers: list = field(default_factory=list)
    built: list = field(default_factory=list)
    save: set = field(default_factory=set)
    slot_offset: int = 0
    parameters: int = 0
    act: nn.Module | None = None  # the YAML's ``activation``: replaces the default one in every row built


def _resolve_from(i: int, f: int | list[int], slot: int, graph: _Graph, row_where: str) -> list[int]:
    """A row's 'from' as absolute slots (-1 = the image), each checked to hold an output."""
    abs_f = []
    for x in [f] if isinstance(f, int) else list(f):
        j = (slot + x if x < 0 else x) if i > 0 else (-1 if x == -1 else x)
        if i == 0 and x != -1:
            raise ModelConfigError(f"{row_where}: the first row must read the image (from -1), got {x}")
        if j >= slot or j < -1 or (i > 0 and j == -1):
            raise ModelConfigError(
                f"{row_where}: 'from' {x} points {'forward' if j >= slot else 'before the first row'} "
                f"(resolves to index {j}); it must name an earlier row (0..{slot - 1}) or be negative"
            )
        if j not in graph.ch_by_slot:
            raise ModelConfigError(
                f"{row_where}: 'from' {x} resolves to index {j}, which holds no output "
                f"(in the five-slot convention, slots before the first map are empty)"
            )
        abs_f.append(j)
    return abs_f


def _build_row(i: int, row: list, entry, graph: _Graph, namespace: dict, scaling: tuple[float, float, float],
               row_where: str) -> tuple[nn.Module, BuiltLayer]:
    f, n, m, args = row
    depth, width, max_channels = scaling
    slot = i + graph.slot_offset
    abs_f = _resolve_from(i, f, slot, graph, row_where)
    args, weights = split_weights(list(args), entry, row_where)  # a row's own pretrained weights
    args = [_resolve_arg(a, namespace) for a in args]
    _check_numbers(args, row_where)
    n_scaled = max(round(n * depth), 1) if n > 1 else n
    if n_scaled > MAX_REPEATS:
        raise ModelConfigError(f"{row_where}: {n} repeats x depth {depth:g} = {n_scaled} is more than the limit "
                               f"of {MAX_REPEATS}")
    ctx = RowContext(index=i, module=m, c_in=[graph.ch_by_slot[j] for j in abs_f], n=n_scaled, width=width,
                     max_channels=max_channels, nc=namespace["nc"])
    try:
        args, c2, n_build = entry.channels(list(args), ctx)
    except Exception as e:  # the rule's own message says what the row should look like
        raise ModelConfigError(f"{row_where}: {e if isinstance(e, ValueError) else _first_line(e)}") from None
    if c2 not in (None, BACKBONE):
        _check_channels(c2, row_where)
    if not (isinstance(n_build, int) and 1 <= n_build <= MAX_REPEATS):
        raise ModelConfigError(f"{row_where}: repeats {n_build!r} outside 1..{MAX_REPEATS}")
    estimate = _estimate_parameters(entry.cls, args, n_build, MAX_PARAMETERS - graph.parameters, row_where)
    if estimate is not None and graph.parameters + estimate > MAX_PARAMETERS:
        raise ModelConfigError(f"{row_where}: would bring the model to about {graph.parameters + estimate:,} "
                               f"parameters, more than the limit of {MAX_PARAMETERS:,}; check its arguments {args}")
    module = _instantiate(entry.cls, args, n_build, row_where)
    if graph.act is not None:
        use_activation(module, graph.act)
    if c2 == BACKBONE:
        c2 = list(getattr(module, "out_channels", []))
        if not c2:
            raise ModelConfigError(f"{row_where}: a 'backbone' module must set out_channels (a list of ints)")
        _check_channels(c2, row_where)

    slots = None
    if isinstance(c2, list) and i == 0 and graph.mode == "slots":
        if len(c2) > N_SLOTS:
            raise ModelConfigError(f"{row_where}: returns {len(c2)} maps; the slot convention holds at most 5")
        slots = list(range(N_SLOTS - len(c2), N_SLOTS))
        for s, c in zip(slots, c2, strict=True):
            graph.ch_by_slot[s] = c
        graph.slot_offset = N_SLOTS - 1
        slot = N_SLOTS - 1
    else:
        graph.ch_by_slot[slot] = c2
    f_abs: int | list[int] = abs_f[0] if isinstance(f, int) else abs_f
    info = BuiltLayer(i, slot, slots, f_abs, f, n_scaled, m, args, c2, weights)
    module.i, module.f, module.slots, module.type = slot, f_abs, slots, m
    module.np = sum(p.numel() for p in module.parameters())
    module.is_head = entry.is_head
    graph.parameters += module.np
    previous = graph.built[-1].slot if graph.built else -1
    graph.save.update(j for j in abs_f if j != previous and j != -1)
    graph.layers.append(module)
    graph.built.append(info)
    return module, info
