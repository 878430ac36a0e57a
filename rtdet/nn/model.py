"""DetectionModel: a graph of YAML-built layers ending in a family head.

    model = build_model("rtdetr-l.yaml", nc=80)
    model.info()                         # per-row table and '<name> summary: L layers, P parameters, G GFLOPs'
    y = model(images)                    # eval: the head's inference output
    out = model(images, targets)         # train: raw head outputs (the head may use targets, e.g. denoising)
    model.fuse()                         # fold Conv+BN, re-parameterise RepConv (inference)
    model.save("m.pt"); rtdet.load_model("m.pt").model

Loading from files lives a layer above, in :mod:`rtdet.io.load` (one loader for YAMLs, rtdet and foreign
checkpoints; ``build_model`` is its shortcut). The model itself only turns into and out of the plain dict
an rtdet checkpoint stores (``to_checkpoint`` / ``from_checkpoint``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn

from rtdet.nn.builder import BuiltLayer, ModelConfigError, load_model_yaml, parse_model
from rtdet.nn.heads.base import DetectionHead
from rtdet.utils.checkpoint import CheckpointError, save_checkpoint
from rtdet.utils.class_names import class_names
from rtdet.version import __version__

__all__ = ["DetectionModel", "InferenceModel", "count_parameters"]

BN_EPS, BN_MOMENTUM = 1e-3, 0.03  # what Ultralytics and YOLOv9 set on every BatchNorm2d
PROBE_SIZE = 128  # side of the zero image whose forward tells the head's input strides (up to 128)


@runtime_checkable
class InferenceModel(Protocol):
    """What the inference verbs (val, predict, benchmark, track) use of a model: a :class:`DetectionModel`,
    or an ONNX Runtime model of an export (:class:`rtdet.deploy.runtime.OnnxDetectionModel`) that stands in
    for one. ``model(images)`` takes images [B, 3, H, W] in [0, 1] of ``input_dtype`` on ``device`` and
    returns what ``head.decode`` / ``head.postprocess`` read."""

    names: dict[int, str]
    nc: int
    strides: list[int]
    head: Any  # the family head's interface: family, needs_nms, decode, postprocess

    @property
    def name(self) -> str: ...

    @property
    def is_fused(self) -> bool: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def input_dtype(self) -> torch.dtype: ...

    def __call__(self, images: torch.Tensor) -> Any: ...

    def to(self, device: torch.device | str) -> Any: ...

    def fuse(self) -> Any: ...

    def flops(self, imgsz: int | tuple[int, int] = 640) -> float: ...

    def info(self, imgsz: int | tuple[int, int] | None = 640, verbose: bool = True) -> str: ...


class _HeadReached(Exception):
    """Raised by a pre-hook to stop a forward pass at the head (its inputs are all we need)."""


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _first_sentence(e: Exception) -> str:
    """The first line of an error, without the advice some backends append (oneDNN's 'Run workload ...')."""
    text = (str(e).strip().splitlines() or [""])[0]
    return text.split(". ")[0].rstrip(".")


class DetectionModel(nn.Module):
    """Runs the rows of a model YAML in order, keeping only the outputs later rows read."""

    def __init__(self, cfg: str | Path | dict, nc: int | None = None, ch: int = 3, scale: str | None = None,
                 names: list[str] | dict | None = None, verbose: bool = False):
        """Build the rows of a model YAML (path, built-in name or dict). The pretrained weights a row may name
        (``weights=path``) are recorded in ``layers_info``, not read: :func:`rtdet.io.load_model` loads them."""
        super().__init__()
        d = load_model_yaml(cfg)
        if nc is not None:
            d["nc"] = int(nc)
        if scale is not None:
            d["scale"] = scale
        d.setdefault("nc", 80)
        d.setdefault("ch", ch)
        layers, built, save = parse_model(d, ch=d["ch"], verbose=verbose)
        self.yaml = d  # resolved: nc and scale filled in; plain types only (goes into checkpoints)
        self.model = nn.ModuleList(layers)
        self.layers_info: list[BuiltLayer] = built
        self.saved_slots = sorted(save)
        self.nc = d["nc"]
        self.names = class_names(names, self.nc)
        eps, momentum = _batchnorm_settings(d)
        set_batchnorm_defaults(self, eps, momentum)
        self.head_index = _head_row(built, layers, d.get("yaml_file", "<dict>"))
        # The strides of the head's inputs, learnt once here (one small forward that stops at the head)
        # and handed to the head: bias priors, anchor grids and assigners read them from there.
        self.strides: list[int] = self._probe_strides() if self.head_index is not None else []
        if self.head_index is not None and hasattr(self.head, "setup"):
            self.head.setup(self.strides)

    # ------------------------------------------------------------------ running
    @property
    def head(self) -> nn.Module:
        return self.model[-1]

    @property
    def name(self) -> str:
        return str(self.yaml.get("name") or Path(str(self.yaml.get("yaml_file", "model"))).stem)

    def forward(self, x: torch.Tensor, targets: dict | None = None) -> Any:
        try:
            return self._run(x, targets)
        except RuntimeError as e:  # most likely maps that no longer line up: say why, if that is it
            problem = self._input_size_problem(x)
            if problem is None:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ValueError(f"{problem} ({type(e).__name__}: {first})") from e

    def _run(self, x: torch.Tensor, targets: dict | None) -> Any:
        saved: dict[int, Any] = {}
        slot = -1
        for m in self.model:
            f = m.f
            if isinstance(f, int):
                inp = x if f == slot else saved[f]
            else:
                inp = [x if j == slot else saved[j] for j in f]
            x = m(inp, targets) if isinstance(m, DetectionHead) else m(inp)
            if m.slots is not None:  # five-slot convention: spread the maps over their slots
                for s, out in zip(m.slots, x, strict=True):
                    if s in self.saved_slots:
                        saved[s] = out
                x, slot = x[-1], m.slots[-1]
            else:
                slot = m.i
                if slot in self.saved_slots:
                    saved[slot] = x
        return x

    def _input_size_problem(self, x: torch.Tensor) -> str | None:
        """Why an input whose sides are not multiples of the largest stride fails (None when they are):
        the neck upsamples a map and joins it with the next level, which must then be exactly twice its
        size (the references need the same; YOLOv9's dual heads also pair auxiliary and main maps)."""
        strides = getattr(self, "strides", None)
        h, w = x.shape[-2:]
        if not strides or not (h % max(strides) or w % max(strides)):
            return None
        stride = max(strides)
        fit = (-(-h // stride) * stride, -(-w // stride) * stride)
        return (f"{self.name}: an input of {h}x{w} pixels is not a multiple of the model's largest stride {stride} "
                f"(strides {strides}), so its feature maps do not line up; pad or resize it to e.g. "
                f"{fit[0]}x{fit[1]} (rtdet train / val / predict round imgsz up to a multiple of {stride} themselves)")

    def head_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps the head receives for input x (the head itself does not run)."""
        if self.head_index is None:
            raise ValueError(f"{self.name} has no head row")
        captured: list[torch.Tensor] = []

        def stop(module: nn.Module, args: tuple) -> None:
            captured.extend(args[0])
            raise _HeadReached

        handle = self.head.register_forward_pre_hook(stop)
        try:
            with torch.no_grad():
                self.forward(x)
        except _HeadReached:
            pass
        finally:
            handle.remove()
        return captured

    def _probe_strides(self, size: int = PROBE_SIZE) -> list[int]:
        """Stride of every head input, from one eval-mode forward of a zero image that stops at the head.

        A model that cannot run on the probe raises ModelConfigError naming the row that failed."""
        was_training = self.training
        self.eval()
        row: dict = {"i": 0, "shapes": []}

        def enter(k: int, args: tuple) -> None:  # the row about to run and the shapes it receives
            inputs = args[0] if args and isinstance(args[0], list | tuple) else args
            row.update(i=k, shapes=[tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor)])

        hooks = [m.register_forward_pre_hook(lambda mod, args, k=k: enter(k, args)) for k, m in enumerate(self.model)]
        x = torch.zeros(1, int(self.yaml.get("ch", 3)), size, size)
        where = self.yaml.get("yaml_file", "<dict>")
        try:
            feats = self.head_inputs(x)
        except ModelConfigError:
            raise
        except Exception as e:  # any failure of a module on real tensors: name its row and its values
            b = self.layers_info[row["i"]]
            shapes = ", ".join(str(list(s)) for s in row["shapes"]) or "?"
            raise ModelConfigError(
                f"{where}: row {b.row} ({b.name}): its arguments {b.args} fail on its input of shape {shapes} "
                f"(probe image {list(x.shape)}): {type(e).__name__}: {_first_sentence(e)}; check that row's values"
            ) from None
        finally:
            for h in hooks:
                h.remove()
            self.train(was_training)
        strides = []
        for f in feats:
            h = int(f.shape[-2])
            if f.dim() != 4 or h < 1 or size % h:
                raise ModelConfigError(f"{where}: the head's input of shape {tuple(f.shape)} does not divide the "
                                       f"{size}x{size} probe image evenly; its stride is undefined")
            strides.append(size // h)
        return strides

    # ------------------------------------------------------------------ inspection
    def flops(self, imgsz: int | tuple[int, int] = 640) -> float:
        """GFLOPs (2 x multiply-accumulates) of one forward pass in eval mode at imgsz."""
        from torch.utils.flop_counter import FlopCounterMode

        h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
        p = next(self.parameters())
        x = torch.zeros(1, self.yaml.get("ch", 3), h, w, device=p.device, dtype=p.dtype)
        was_training = self.training
        self.eval()
        try:
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                self.forward(x)
        finally:
            self.train(was_training)
        return counter.get_total_flops() / 1e9

    def info(self, imgsz: int | tuple[int, int] | None = 640, verbose: bool = True, fused: bool | None = None) -> str:
        """The per-row table and '<name> summary: L layers, P parameters, G GFLOPs'; printed and returned.
        A model with a training-only branch gets a second line with the counts after :meth:`fuse`."""
        lines = [f"{'':>4}{'from':>20}{'n':>4}{'params':>12}  {'module':<28}arguments"]
        for m, b in zip(self.model, self.layers_info, strict=True):
            idx = f"{b.slots[0]}-{b.slots[-1]}" if b.slots else str(b.slot)
            lines.append(f"{idx:>4}{str(b.f_written):>20}{b.n:>4}{count_parameters(m):>12,}  {b.name:<28}{b.args}")
        n_params = count_parameters(self)
        n_layers = len(list(self.modules()))
        tag = " (fused)" if fused or self.is_fused else ""
        summary = f"{self.name}{tag} summary: {n_layers} layers, {n_params:,} parameters"
        if imgsz:
            summary += f", {self.flops(imgsz):.1f} GFLOPs"
        lines.append(summary)
        n_table = len(lines) - 1
        if not self.is_fused and self.training_only_parameters():
            # a model with a training-only branch (YOLOv9's PGI): also what inference runs after fuse()
            deployed = copy.deepcopy(self).fuse()
            line = (f"{self.name} for inference (fuse: training-only branch removed, branches merged): "
                    f"{len(list(deployed.modules()))} layers, {count_parameters(deployed):,} parameters")
            if imgsz:
                line += f", {deployed.flops(imgsz):.1f} GFLOPs"
            lines.append(line)
        text = "\n".join(lines if verbose else lines[n_table:])
        print(text)
        return text

    # ------------------------------------------------------------------ deployment
    @property
    def is_fused(self) -> bool:
        return getattr(self, "_fused", False)

    @property
    def device(self) -> torch.device:
        """Where the parameters are (the images go there)."""
        return next(self.parameters()).device

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype of the images the model takes: its parameters' (fp16 after ``half()``)."""
        return next(self.parameters()).dtype

    def fuse(self) -> DetectionModel:
        """The inference form, in place (the model is left in eval mode): training-only rows dropped (a
        head's ``deploy_inputs``, e.g. YOLOv9's PGI auxiliary branch), Conv+BN folded and multi-branch
        blocks re-parameterised. The outputs of what remains are unchanged.

        A module with a ``fuse_()`` method fuses itself and its children; other modules are searched."""

        def visit(module: nn.Module) -> None:
            if hasattr(module, "fuse_"):
                module.fuse_()
                return
            for child in module.children():
                visit(child)

        self.eval()
        self._drop_training_only_rows()
        visit(self)
        self._fused = True
        return self

    def _drop_training_only_rows(self) -> None:
        """Swap in the head's inference form and remove every row that no longer feeds it."""
        if self.head_index is None:
            return
        old = self.head
        keep = old.deploy_inputs() if hasattr(old, "deploy_inputs") else None
        if keep is None:
            return
        head = old.deploy_head()
        sources = old.f if isinstance(old.f, list) else [old.f]
        head.i, head.slots, head.type = old.i, old.slots, old.type
        head.f = [sources[k] for k in keep]
        head.np = count_parameters(head)
        layers = [*self.model[:-1], head]
        row_of = {}  # slot -> position of the row that produces it
        for k, m in enumerate(layers):
            for s in m.slots or [m.i]:
                row_of[s] = k
        needed, stack = {len(layers) - 1}, [len(layers) - 1]
        while stack:  # walk the graph back from the head
            m = layers[stack.pop()]
            for j in m.f if isinstance(m.f, list) else [m.f]:
                if j != -1 and row_of[j] not in needed:
                    needed.add(row_of[j])
                    stack.append(row_of[j])
        kept = sorted(needed)
        info = self.layers_info
        self.layers_info = [info[k] for k in kept]
        self.layers_info[-1] = copy.copy(info[-1])
        self.layers_info[-1].f = head.f
        self.model = nn.ModuleList(layers[k] for k in kept)
        self.head_index = len(self.model) - 1
        self.saved_slots = _saved_slots(self.model)

    def training_only_parameters(self) -> int:
        """Parameters that only training uses (the rows and head parts :meth:`fuse` drops); 0 for most models."""
        if self.head_index is None or getattr(self.head, "deploy_inputs", lambda: None)() is None:
            return 0
        deployed = copy.deepcopy(self)
        deployed._drop_training_only_rows()
        return count_parameters(self) - count_parameters(deployed)

    # ------------------------------------------------------------------ checkpoints
    def to_checkpoint(self) -> dict:
        """Tensors and plain types only, loadable with torch.load(weights_only=True)."""
        return {
            "rtdet_version": __version__,
            "yaml": copy.deepcopy(self.yaml),
            "nc": self.nc,
            "names": class_names(self.names),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict, source: str = "checkpoint") -> DetectionModel:
        missing = [k for k in ("yaml", "state_dict") if k not in ckpt]
        if missing:
            raise CheckpointError(f"{source}: not an rtdet model checkpoint (missing keys {missing})")
        model = cls(ckpt["yaml"], nc=ckpt.get("nc"), names=ckpt.get("names"))
        _check_shapes(model.state_dict(), ckpt["state_dict"], source)
        result = model.load_state_dict(ckpt["state_dict"], strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"{source}: weights do not match the model it describes "
                f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
            )
        return model

    def save(self, path: str | Path) -> Path:
        return save_checkpoint({"model": self.to_checkpoint()}, path)



def _saved_slots(layers: nn.ModuleList) -> list[int]:
    """The slots whose outputs forward() must keep: every input of a row that is not the previous row."""
    saved, previous = set(), -1
    for m in layers:
        saved.update(j for j in (m.f if isinstance(m.f, list) else [m.f]) if j not in (previous, -1))
        previous = m.slots[-1] if m.slots else m.i
    return sorted(saved)


def set_batchnorm_defaults(model: nn.Module, eps: float = BN_EPS, momentum: float = BN_MOMENTUM) -> None:
    """Give every BatchNorm2d the references' eps/momentum, except inside modules that declare
    ``own_batchnorm_settings = True`` (pretrained backbones whose official weights expect their own eps)."""

    def visit(module: nn.Module) -> None:
        if getattr(module, "own_batchnorm_settings", False):
            return
        if isinstance(module, nn.BatchNorm2d):
            module.eps, module.momentum = eps, momentum
        for child in module.children():
            visit(child)

    visit(model)


def _batchnorm_settings(d: dict) -> tuple[float, float]:
    """(eps, momentum) for every BatchNorm2d: the YAML's ``batchnorm: {eps, momentum}`` (RTMDet keeps
    PyTorch's 1e-5 / 0.1, as mmdetection builds it) or the YOLO / RT-DETR references' 1e-3 / 0.03."""
    where = d.get("yaml_file", "<dict>")
    spec = d.get("batchnorm") or {}
    if not isinstance(spec, dict) or set(spec) - {"eps", "momentum"}:
        raise ModelConfigError(f"{where}: 'batchnorm' must be a mapping with keys eps and momentum, got {spec!r}")
    eps, momentum = spec.get("eps", BN_EPS), spec.get("momentum", BN_MOMENTUM)
    for key, value in (("eps", eps), ("momentum", momentum)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ModelConfigError(f"{where}: batchnorm.{key} must be a number in (0, 1), got {value!r}")
    return float(eps), float(momentum)


def _head_row(built: list[BuiltLayer], layers: list[nn.Module], where: str) -> int | None:
    """Index of the head row (the one place that records it): the last row when it is a head, None when
    the model has no head (a bare backbone). A head anywhere but last is an error."""
    heads = [k for k, m in enumerate(layers) if isinstance(m, DetectionHead)]
    if not heads:
        return None
    if heads != [len(layers) - 1]:
        rows = ", ".join(f"{built[k].row} ({built[k].name})" for k in heads)
        raise ModelConfigError(f"{where}: a model has one head, in its last row; head modules found in rows {rows}")
    return heads[0]



def _check_shapes(own: dict[str, torch.Tensor], stored: Any, source: str) -> None:
    """Every stored tensor of a name the model has must have its shape (else load_state_dict's multi-line
    RuntimeError): the first that does not is named with both shapes."""
    if not isinstance(stored, dict):
        raise CheckpointError(f"{source}: its state_dict is a {type(stored).__name__}, expected a dict of tensors")
    for key, value in stored.items():
        if key not in own:
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: {key} is a {type(value).__name__}, expected a tensor of shape "
                                  f"{tuple(own[key].shape)}")
        if value.shape != own[key].shape:
            n = sum(1 for k, v in stored.items()
                    if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape)
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)} but the model it describes needs "
                f"{tuple(own[key].shape)}" + (f" ({n - 1} more tensors differ)" if n > 1 else "")
                + "; the weights do not belong to its model YAML (an edited or damaged checkpoint)")

