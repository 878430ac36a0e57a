"""ONNX Runtime backend: an rtdet ``.onnx`` export that stands in for a DetectionModel.

    model = load_onnx_model("best.onnx", threads=2)   # (the engine's loader also checks the stored settings)
    outputs = model(images)                           # images [B, 3, H, W] in [0, 1] -> output tensors
    dets = model.head.postprocess(outputs, (H, W), conf=0.25, iou=0.7, max_det=300)

The predictor, the validator and the benchmark use it exactly like a PyTorch model: ``names``, ``nc``,
``strides``, ``head.family`` / ``needs_nms`` / ``decode`` / ``postprocess`` all come from the export's
metadata, and the session's outputs go through the same :func:`~rtdet.nn.heads.base.finalize` as the
PyTorch head's (so both give the same Results through the same letterbox and metrics). A static export
runs any batch size: the batch is cut into (and the last part padded to) the exported batch size.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from rtdet.deploy.errors import ExportError
from rtdet.deploy.metadata import check_graph, check_metadata, read_metadata
from rtdet.nn.heads.base import Decoded, Detections, finalize
from rtdet.utils.class_names import class_names
from rtdet.utils.torch_utils import cap_threads

__all__ = ["OPT_LEVELS", "OnnxDetectionModel", "OnnxHead", "describe_runtime_error", "is_onnx", "load_onnx_model",
           "make_session", "open_session"]

OPT_LEVELS = ("disable", "basic", "extended", "all")


def is_onnx(spec) -> bool:
    return isinstance(spec, str | Path) and str(spec).lower().endswith(".onnx")


def make_session(path: str | Path, device: str | torch.device = "cpu", threads: int | None = None,
                 opt_level: str = "all"):
    """An ONNX Runtime session: CUDA when ``device`` is a GPU and the CUDA provider is installed, else the
    CPU; ``threads`` intra-op threads (None / 0: ONNX Runtime's default, one per physical core);
    ``opt_level`` one of :data:`OPT_LEVELS`."""
    import onnxruntime as ort  # optional: rtdet[export]

    if opt_level not in OPT_LEVELS:
        raise ValueError(f"ort_opt_level={opt_level!r}: expected one of {', '.join(OPT_LEVELS)}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    if threads:
        opts.intra_op_num_threads = cap_threads(int(threads))  # as the threads= setting: at most one per CPU
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: shape-reuse notes of dynamic graphs are not the user's business
    device = torch.device(device)
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    return ort.InferenceSession(str(path), opts, providers=providers)


class OnnxHead:
    """The head interface of an export, read from its metadata (family, needs_nms, output layout)."""

    def __init__(self, meta: dict):
        self.family = str(meta.get("family", ""))
        self.needs_nms = bool(meta.get("needs_nms", meta["outputs"] != "final"))
        self.layout = str(meta["outputs"])
        self.nms = meta.get("nms")  # the settings fixed in an nms=True graph
        self.strides = [int(s) for s in meta["stride"]]

    def decode(self, outputs: tuple[torch.Tensor, ...], img_shape: tuple[int, int]) -> Decoded:
        if self.layout == "final":
            boxes, scores, labels = outputs
            return Decoded(boxes, scores, labels.long())
        if self.layout == "dense":
            return Decoded(outputs[0], outputs[1])
        raise ValueError("an nms=True export outputs final detections; use postprocess()")

    def postprocess(self, outputs: tuple[torch.Tensor, ...], img_shape: tuple[int, int], conf: float = 0.25,
                    iou: float = 0.7, max_det: int = 300, multi_label: bool = False) -> list[Detections]:
        """Session outputs -> per-image Detections, as the PyTorch head's postprocess gives them."""
        if self.layout != "nms":
            return finalize(self.decode(outputs, img_shape), conf, iou, max_det, multi_label)
        # NMS ran in the graph at its export settings; a stricter conf / max_det still applies here.
        boxes, scores, labels, index = outputs
        n_images = getattr(outputs, "batch", 0) or (int(index.max()) + 1 if index.numel() else 0)
        keep = scores >= conf
        boxes, scores, labels, index = boxes[keep], scores[keep], labels[keep].long(), index[keep].long()
        counts = torch.bincount(index, minlength=n_images).tolist()  # rows come by image, best first
        return [Detections(b[:max_det], s[:max_det], lab[:max_det])
                for b, s, lab in zip(boxes.split(counts), scores.split(counts), labels.split(counts))]


class _Outputs(tuple):
    """Session outputs (a tuple of tensors) that remember the batch size (an nms graph's flat outputs
    cannot tell how many images had no detection)."""

    batch: int = 0

    @classmethod
    def of(cls, tensors: list[torch.Tensor], batch: int) -> _Outputs:
        out = cls(tensors)
        out.batch = batch
        return out


class OnnxDetectionModel(nn.Module):
    """An rtdet ONNX export run by ONNX Runtime, with the DetectionModel attributes the engine reads."""

    is_onnx = True
    is_fused = True
    head_index = -1  # the graph ends in its head (there is no row table to index)

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None,
                 opt_level: str = "all"):
        super().__init__()
        self.path = Path(path)
        self.meta = read_metadata(self.path)
        check_metadata(self.meta, self.path)
        self.names = class_names(self.meta["names"])
        self.nc = int(self.meta.get("nc", len(self.names)))
        self.strides = [int(s) for s in self.meta["stride"]]
        self.head = OnnxHead(self.meta)
        self.imgsz = tuple(int(v) for v in self.meta["imgsz"])
        self.dynamic = bool(self.meta.get("dynamic"))
        self.batch = None if self.dynamic else int(self.meta.get("batch") or 1)
        self.input_dtype = torch.float16 if self.meta.get("half") else torch.float32
        self.threads, self.opt_level = threads, opt_level
        self.device = torch.device(device)
        self.session = open_session(self.path, lambda: make_session(self.path, self.device, threads, opt_level))
        check_graph(self.meta, self.session, self.path)
        self.input_name = self.session.get_inputs()[0].name
        self.yaml = {"name": self.meta.get("name"), "ch": 3}

    @property
    def name(self) -> str:
        return f"{self.meta.get('name', self.path.stem)}.onnx"

    def inherited_settings(self) -> dict:
        """Settings val / predict inherit, as from a checkpoint: the input size and the transforms."""
        args = dict(self.meta.get("args") or {})
        h, w = self.imgsz
        if h == w:
            args.setdefault("imgsz", h)
        return args

    # ------------------------------------------------------------------ nn.Module-like behaviour
    def to(self, *args, **kwargs):
        device = next((a for a in args if isinstance(a, str | torch.device)), kwargs.get("device"))
        if device is not None and torch.device(device) != self.device:
            self.device = torch.device(device)
            self.session = make_session(self.path, self.device, self.threads, self.opt_level)
        return self

    def half(self):
        return self  # the export's own precision decides

    def float(self):
        return self

    def fuse(self):
        return self

    def __deepcopy__(self, memo):
        return self  # the session is immutable and thread-safe: copies share it

    def flops(self, imgsz=None) -> float:
        return float(self.meta.get("gflops") or 0.0)

    def info(self, imgsz=None, verbose: bool = True, fused=None) -> str:
        text = (f"{self.name} summary: ONNX ({self.meta.get('family')}, opset {self.meta.get('opset')}, "
                f"{'dynamic' if self.dynamic else f'static {self.batch}x3x{self.imgsz[0]}x{self.imgsz[1]}'}), "
                f"{int(self.meta.get('params') or 0):,} parameters, {self.flops():.1f} GFLOPs")
        print(text)
        return text

    # ------------------------------------------------------------------ running
    def forward(self, x: torch.Tensor) -> _Outputs:
        if x.dim() != 4:
            raise ValueError(f"{self.path.name}: expected images [B, 3, H, W], got shape {tuple(x.shape)}")
        if not self.dynamic and tuple(x.shape[2:]) != self.imgsz:
            h, w = self.imgsz
            raise ExportError(f"{self.path}: exported for {h}x{w} inputs (static shapes), got {x.shape[2]}x"
                              f"{x.shape[3]}; use imgsz={h if h == w else [h, w]}, or re-export with dynamic=true")
        device = x.device
        arr = x.detach().to("cpu", self.input_dtype).contiguous().numpy()
        n = arr.shape[0]
        step = self.batch or n
        parts = []
        for s in range(0, n, step):
            chunk = arr[s:s + step]
            if chunk.shape[0] < step:  # the last part of a static batch: pad with blank images
                pad = np.zeros((step - chunk.shape[0], *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append((s, min(step, n - s), self.session.run(None, {self.input_name: chunk})))
        return _Outputs.of(self._join(parts, device), n)

    def _join(self, parts: list, device: torch.device) -> list[torch.Tensor]:
        """Per-chunk session outputs -> one output tuple for the whole batch (padding images dropped)."""
        if self.head.layout != "nms":
            return [torch.from_numpy(np.concatenate([out[k][:m] for _, m, out in parts])).to(device)
                    for k in range(len(parts[0][2]))]
        boxes, scores, labels, index = [], [], [], []
        for start, m, (b, s, lab, idx) in parts:
            keep = idx < m
            boxes.append(b[keep])
            scores.append(s[keep])
            labels.append(lab[keep])
            index.append(idx[keep] + start)
        return [torch.from_numpy(np.concatenate(t)).to(device) for t in (boxes, scores, labels, index)]


def load_onnx_model(path: str | Path, device: str | torch.device = "cpu", threads: int | None = None,
                    opt_level: str = "all") -> OnnxDetectionModel:
    """The runtime model of an rtdet ONNX export (FileNotFoundError / ExportError when it is not one)."""
    return OnnxDetectionModel(path, device, threads, opt_level)


# ------------------------------------------------------------------------------------------ ONNX Runtime's refusals
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*(\w+)\s*:\s*")
_CAUSES = (  # (what ONNX Runtime's message holds, what it means for the user)
    (re.compile(r"No Op registered for (\w+)|Could not find an implementation for (\w+)"),
     "it uses the operation {op}, which ONNX Runtime does not implement (a custom op, or a newer opset than this "
     "onnxruntime supports)"),
    (re.compile(r"External data path"), "its external data lies outside the model's folder ({detail})"),
    (re.compile(r"INVALID_PROTOBUF|Protobuf parsing failed"), "it is not a readable ONNX model (truncated or damaged)"),
)


def describe_runtime_error(error: Exception, path: Path | str) -> str:
    """ONNX Runtime's refusal of a file in one line: the file and the cause."""
    text = " ".join(str(error).split())
    code = (_ORT_PREFIX.match(text).group(1) if _ORT_PREFIX.match(text) else type(error).__name__)
    detail = _ORT_PREFIX.sub("", text)
    detail = re.sub(r"^Load model from \S+ failed:\s*", "", detail)[:300]
    for pattern, meaning in _CAUSES:
        m = pattern.search(text)
        if m:
            op = next((g for g in m.groups() if g), "?") if m.groups() else "?"
            return f"{path}: ONNX Runtime cannot load it: {meaning.format(op=op, detail=detail)}"
    what = "the graph is invalid" if code in ("INVALID_GRAPH", "INVALID_ARGUMENT", "InvalidGraph") else code
    return f"{path}: ONNX Runtime cannot load it: {what}: {detail}"


def open_session(path: Path | str, make: Callable[[], Any]) -> Any:
    """``make()`` (an ONNX Runtime session), with its refusals as ExportError naming the file and the cause."""
    try:
        return make()
    except (OSError, MemoryError, ValueError):  # ValueError: a bad setting (opt_level), said as it is
        raise
    except Exception as e:  # onnxruntime's pybind errors (Fail, InvalidGraph, InvalidArgument, ...)
        raise ExportError(describe_runtime_error(e, path)) from None
