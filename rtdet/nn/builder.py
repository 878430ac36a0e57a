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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn
import yaml

from rtdet.nn.registry import (
    BACKBONE,
    REGISTER_HINT,
    RowContext,
    lookup,
    resolve_activation,
    unknown_module_hint,
)

__all__ = ["ModelConfigError", "BuiltLayer", "load_model_yaml", "parse_model", "resolve_model_path", "MODELS_DIR"]

MODELS_DIR = Path(__file__).resolve().parent.parent / "cfg" / "models"
N_SLOTS = 5


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
    if isinstance(cfg, dict):
        d = copy.deepcopy(cfg)
        d.setdefault("yaml_file", "<dict>")
        d.setdefault("name", "model")
        return d
    path, scale = resolve_model_path(cfg)
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ModelConfigError(f"{path}: not valid YAML ({e})") from None
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
    with contextlib.suppress(ValueError, SyntaxError):
        return ast.literal_eval(a)
    return a


def _scales(d: dict, where: str) -> tuple[float, float, float]:
    scales = d.get("scales")
    if scales:
        scale = d.get("scale")
        if not scale:
            scale = next(iter(scales))
            d["scale"] = scale
        if scale not in scales:
            raise ModelConfigError(f"{where}: scale '{scale}' is not among the YAML's scales {list(scales)}")
        values = scales[scale]
        if not (isinstance(values, list | tuple) and len(values) == 3):
            raise ModelConfigError(f"{where}: scales.{scale} must be [depth, width, max_channels], got {values}")
        depth, width, max_channels = values
        return float(depth), float(width), float(max_channels)
    return float(d.get("depth_multiple", 1.0)), float(d.get("width_multiple", 1.0)), float("inf")


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
        if not (isinstance(f, int) or (isinstance(f, list) and f and all(isinstance(x, int) for x in f))):
            raise ModelConfigError(f"{where}: row {i}: 'from' must be an int or a list of ints, got {f!r}")
        if not isinstance(n, int) or n < 1:
            raise ModelConfigError(f"{where}: row {i}: repeats must be a positive int, got {n!r}")
        if not isinstance(m, str):
            raise ModelConfigError(f"{where}: row {i}: module must be a name, got {m!r}")
        if not isinstance(args, list):
            raise ModelConfigError(f"{where}: row {i} ({m}): args must be a list, got {args!r}")
    return rows


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
        if n > 1:
            return nn.Sequential(*(cls(*args) for _ in range(n)))
        return cls(*args)
    except (ValueError, TypeError, AssertionError) as e:  # the module's own checks: add file and row
        raise ModelConfigError(f"{where}: {e}") from e


def parse_model(d: dict, ch: int = 3, verbose: bool = False,
                load_weights: bool = True) -> tuple[list[nn.Module], list[BuiltLayer], set[int]]:
    """Build every row of a model dict. Returns the modules, their bookkeeping and the saved slots.

    A row may name pretrained weights for its module (``weights=path`` among its args, see
    :func:`rtdet.io.rows.split_weights`); they are loaded right after the module is built unless ``load_weights`` is
    False (rebuilding a model whose weights come from a checkpoint)."""
    from rtdet.io.rows import load_row_weights, split_weights
    from rtdet.nn.modules.common import Conv

    where = d.get("yaml_file", "<dict>")
    rows = _check_rows(d, where)
    depth, width, max_channels = _scales(d, where)
    nc = d.get("nc", 80)
    namespace = {k: v for k, v in d.items() if isinstance(v, int | float | str) and k not in ("yaml_file", "name")}
    namespace["nc"] = nc

    entries, unknown = [], {}
    for i, (_, _, m, _) in enumerate(rows):
        try:
            entries.append(lookup(m, row=i))
        except KeyError as e:
            unknown.setdefault(m, []).append((i, e.args[0]))
    if unknown:  # report every unknown name at once, not one per attempt
        if len(unknown) == 1 and len(next(iter(unknown.values()))) == 1:
            raise ModelConfigError(f"{where}: {next(iter(unknown.values()))[0][1]}")
        raise ModelConfigError(f"{where}: unknown modules {', '.join(unknown)}:\n" + "\n".join(
            f"  {name} (row{'s' if len(hits) > 1 else ''} {', '.join(str(i) for i, _ in hits)}): "
            f"{unknown_module_hint(name)}"
            for name, hits in unknown.items()
        ) + f"\n{REGISTER_HINT}")

    # A multi-output row 0 uses the slot convention unless some row picks maps with Index.
    uses_index = any(e.cls.__name__ == "Index" for e in entries)
    mode = d.get("multi_output") or ("index" if uses_index else "slots")
    if mode not in ("index", "slots"):
        raise ModelConfigError(f"{where}: multi_output must be 'index' or 'slots', got {mode!r}")

    act_before = Conv.default_act
    if d.get("activation"):
        try:
            Conv.default_act = resolve_activation(d["activation"])
        except ValueError as e:
            raise ModelConfigError(f"{where}: {e}") from None

    ch_by_slot: dict[int, Any] = {-1: ch}
    layers: list[nn.Module] = []
    built: list[BuiltLayer] = []
    save: set[int] = set()
    slot_offset = 0
    try:
        for i, ((f, n, m, args), entry) in enumerate(zip(rows, entries, strict=True)):
            slot = i + slot_offset
            row_where = f"{where}: row {i} ({m})"
            # 'from' -> absolute slots
            written = f
            fs = [f] if isinstance(f, int) else list(f)
            abs_f = []
            for x in fs:
                j = (slot + x if x < 0 else x) if i > 0 else (-1 if x == -1 else x)
                if i == 0 and x != -1:
                    raise ModelConfigError(f"{row_where}: the first row must read the image (from -1), got {x}")
                if j >= slot or j < -1 or (i > 0 and j == -1):
                    raise ModelConfigError(
                        f"{row_where}: 'from' {x} points {'forward' if j >= slot else 'before the first row'} "
                        f"(resolves to index {j}); it must name an earlier row (0..{slot - 1}) or be negative"
                    )
                if j not in ch_by_slot:
                    raise ModelConfigError(
                        f"{row_where}: 'from' {x} resolves to index {j}, which holds no output "
                        f"(in the five-slot convention, slots before the first map are empty)"
                    )
                abs_f.append(j)
            args, weights = split_weights(list(args), entry, row_where)  # a row's own pretrained weights
            args = [_resolve_arg(a, namespace) for a in args]
            n_scaled = max(round(n * depth), 1) if n > 1 else n
            ctx = RowContext(
                index=i,
                module=m,
                c_in=[ch_by_slot[j] for j in abs_f],
                n=n_scaled,
                width=width,
                max_channels=max_channels,
                nc=nc,
            )
            try:
                args, c2, n_build = entry.channels(list(args), ctx)
            except (ValueError, IndexError, TypeError) as e:
                raise ModelConfigError(f"{row_where}: {e}") from None
            module = _instantiate(entry.cls, args, n_build, row_where)
            if weights is not None and load_weights:
                load_row_weights(module, weights, where, row_where)
            if c2 == BACKBONE:
                c2 = list(getattr(module, "out_channels", []))
                if not c2:
                    raise ModelConfigError(f"{row_where}: a 'backbone' module must set out_channels (a list of ints)")

            slots = None
            if isinstance(c2, list) and i == 0 and mode == "slots":
                if len(c2) > N_SLOTS:
                    raise ModelConfigError(f"{row_where}: returns {len(c2)} maps; the slot convention holds at most 5")
                slots = list(range(N_SLOTS - len(c2), N_SLOTS))
                for s, c in zip(slots, c2, strict=True):
                    ch_by_slot[s] = c
                slot_offset = N_SLOTS - 1
                slot = N_SLOTS - 1
            else:
                ch_by_slot[slot] = c2
            f_abs: int | list[int] = abs_f[0] if isinstance(f, int) else abs_f
            info = BuiltLayer(i, slot, slots, f_abs, written, n_scaled, m, args, c2)
            module.i, module.f, module.slots, module.type = slot, f_abs, slots, m
            module.np = sum(p.numel() for p in module.parameters())
            module.is_head = entry.is_head
            previous = built[-1].slot if built else -1
            save.update(j for j in abs_f if j != previous and j != -1)
            layers.append(module)
            built.append(info)
            if verbose:
                print(f"{slot:>4}{str(written):>20}{n_scaled:>4}{module.np:>12}  {m:<28}{args}")
    finally:
        Conv.default_act = act_before
    return layers, built, save
