"""Graph export: a DetectionModel -> an ONNX file that ONNX Runtime runs with the same detections.

    path = export_onnx(model, "model.onnx", imgsz=640)              # static 1x3x640x640, decoded outputs
    path = export_onnx(model, "model.onnx", dynamic=True, nms=True)  # any batch / size, NMS in the graph
    report = check_export(path, model, image)   # PyTorch vs ONNX Runtime (rtdet.deploy.parity), or ExportError

``rtdet export`` (:class:`rtdet.engine.exporter.Exporter`) loads the model and its settings, then calls these.

What is exported is the deploy form: the model after ``fuse()`` (Conv+BN folded, RepConv merged, and
whatever else each module's ``fuse_`` drops for inference), followed by its head's ``decode`` -- the
family's post-processing written as tensor code (DETR top-k; dense decoding for YOLO / RTMDet), plus,
with ``nms=True`` for heads that need NMS, an ONNX ``NonMaxSuppression``. Three output layouts follow
(``outputs`` in the metadata):

* ``final`` (DETR heads): ``boxes`` [B, k, 4] xyxy input pixels, ``scores`` [B, k], ``labels`` [B, k];
* ``dense`` (NMS heads, ``nms=False``): ``boxes`` [B, N, 4], ``scores`` [B, N, C] class probabilities;
* ``nms`` (NMS heads, ``nms=True``): ``boxes`` [K, 4], ``scores`` [K], ``labels`` [K], ``batch_index`` [K]
  -- the kept detections of all images, by image then decreasing score, at most ``max_det`` per image
  (score threshold ``conf``, IoU ``iou`` and class handling fixed at export and recorded).

The input is ``images`` [B, 3, H, W], RGB in [0, 1] (the letterboxed batch the predictor makes). The
graph is recorded with PyTorch's TorchScript-based exporter (``torch.onnx.export(dynamo=False)``; why is
in docs/deploy.md). A static export bakes every shape-dependent constant (anchors, position embeddings,
sampling grids) into the file; ``dynamic=True`` keeps them as graph computations of the input size.
The metadata (:mod:`rtdet.deploy.metadata`) carries what the ONNX Runtime model (:mod:`rtdet.deploy.runtime`)
needs to stand in for the PyTorch model: names, strides, input size, family, output layout, version, GFLOPs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from rtdet.deploy.errors import ExportError
from rtdet.deploy.metadata import INPUT_NAME, OUTPUT_NAMES, NMSConfig, build_metadata, set_metadata
from rtdet.nn.model import count_parameters
from rtdet.ops.nms import batched_nms
from rtdet.utils.checkpoint import atomic_write_bytes
from rtdet.utils.logging import LOGGER

__all__ = ["MAX_OPSET", "MIN_OPSET", "DeployModel", "deploy_form", "export_onnx", "export_shape", "graph_nms"]

MIN_OPSET, MAX_OPSET = 17, 20  # 17: LayerNormalization; 20: the newest the TorchScript exporter writes


# ---------------------------------------------------------------------------------- NMS in the graph
class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (opset 10+): boxes [B, N, 4], scores [B, C, N] -> selected [K, 3]
    (image, class, box), per image and class: score > score_threshold, then greedy NMS at IoU >
    iou_threshold, at most ``max_per_class``. Eagerly the same selection through rtdet.ops.nms, so the
    deploy model runs in PyTorch too."""

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class, iou_threshold, score_threshold):
        b, c, n = scores.shape
        img, cls, box = (scores > score_threshold).nonzero(as_tuple=True)
        score = scores[img, cls, box]
        keep = batched_nms(boxes[img, box].float(), score.float(), img * c + cls, float(iou_threshold))
        group = (img * c + cls)[keep]
        order = torch.sort(group, stable=True).indices  # group by (image, class), best first inside
        keep = keep[order]
        counts = torch.bincount(group, minlength=b * c)
        rank = torch.arange(keep.numel(), device=keep.device) - (counts.cumsum(0) - counts)[group[order]]
        keep = keep[rank < int(max_per_class)]
        return torch.stack([img[keep], cls[keep], box[keep]], 1)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_threshold, score_threshold):
        return g.op("NonMaxSuppression", boxes, scores, max_per_class, iou_threshold, score_threshold,
                    center_point_box_i=0)


def graph_nms(boxes: torch.Tensor, scores: torch.Tensor, conf: float, iou: float, max_det: int,
              multi_label: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense Decoded tensors -> the kept detections of every image, as exportable tensor code.

    boxes [B, N, 4], scores [B, N, C] -> boxes [K, 4], scores [K], labels [K], batch_index [K], by image
    then decreasing score, at most ``max_det`` per image. Without ``multi_label`` only each box's best
    class competes (what :func:`~rtdet.ops.nms.dense_nms` does)."""
    if not multi_label:
        scores = torch.where(scores == scores.amax(-1, keepdim=True), scores, torch.zeros_like(scores))
    per_class = scores.transpose(1, 2).contiguous()  # [B, C, N], ONNX's layout
    selected = _NonMaxSuppression.apply(boxes, per_class, torch.tensor([max_det], dtype=torch.int64),
                                        torch.tensor([iou], dtype=torch.float32),
                                        torch.tensor([conf], dtype=torch.float32))
    img, cls, box = selected[:, 0], selected[:, 1], selected[:, 2]
    score = per_class[img, cls, box]
    order = torch.argsort(img.to(score.dtype) * 4.0 - score)  # by image, then by decreasing score (<= 1)
    img, cls, box, score = img[order], cls[order], box[order], score[order]
    one_hot = (img[:, None] == torch.arange(boxes.shape[0], device=img.device)[None]).to(torch.int64)
    rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1  # position of each detection inside its image
    keep = rank < max_det
    img, cls, box, score = img[keep], cls[keep], box[keep], score[keep]
    return boxes[img, box], score, cls, img


# ---------------------------------------------------------------------------------- deploy model
class DeployModel(nn.Module):
    """What an export contains: images [B, 3, H, W] in [0, 1] -> the model -> its head's ``decode``
    (-> NMS when ``nms`` is given and the head needs it), as a tuple of tensors (see the module doc)."""

    def __init__(self, model: nn.Module, nms: NMSConfig | None = None):
        super().__init__()
        self.model = model
        self.nms = nms if model.head.needs_nms else None

    @property
    def layout(self) -> str:
        if not self.model.head.needs_nms:
            return "final"
        return "nms" if self.nms is not None else "dense"

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        decoded = self.model.head.decode(self.model(images), (images.shape[2], images.shape[3]))
        if decoded.labels is not None:
            return decoded.boxes, decoded.scores, decoded.labels
        if self.nms is None:
            return decoded.boxes, decoded.scores
        cfg = self.nms
        return graph_nms(decoded.boxes, decoded.scores, cfg.conf, cfg.iou, cfg.max_det, cfg.multi_label)


def deploy_form(model: nn.Module, dynamic: bool) -> nn.Module:
    """A fused eval-mode copy of the model; with ``dynamic`` every module that caches shape-dependent
    constants is told to compute them from the traced input size instead."""
    model = copy.deepcopy(model).float().eval()
    model.fuse()
    for m in model.modules():
        if hasattr(m, "dynamic"):
            m.dynamic = bool(dynamic)
    return model


# ---------------------------------------------------------------------------------- export
def export_shape(imgsz: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(imgsz, int | float) and not isinstance(imgsz, bool):
        return int(imgsz), int(imgsz)
    if isinstance(imgsz, list | tuple) and len(imgsz) == 2 and all(isinstance(v, int) for v in imgsz):
        return int(imgsz[0]), int(imgsz[1])
    raise ExportError(f"imgsz={imgsz!r}: expected a side (640) or [height, width] ([384, 640])")


def export_onnx(model: nn.Module, file: str | Path, *, imgsz: int | tuple[int, int] = 640, batch: int = 1,
                dynamic: bool = False, half: bool = False, opset: int = MIN_OPSET, nms: bool = False,
                conf: float = 0.25, iou: float = 0.7, max_det: int = 300, multi_label: bool = False,
                simplify: bool = False, device: torch.device | str = "cpu", extra_metadata: dict | None = None,
                count_flops: bool = True) -> Path:
    """Export the deploy form of ``model`` to ``file`` (written atomically); returns the path.

    ``dynamic``: batch, height and width are free (``batch`` / ``imgsz`` only shape the trace).
    ``half``: fp16 weights and input (CUDA only: ONNX Runtime's CPU kernels are fp32). ``nms``: NMS in the
    graph for heads that need it, with ``conf`` / ``iou`` / ``max_det`` / ``multi_label`` fixed.
    ``simplify``: save ONNX Runtime's basic-level optimisation of the graph (constant folding, Conv+BN
    and other fusions, all standard ONNX ops). ``count_flops``: record GFLOPs in the metadata (one
    counted forward pass). An unexportable module raises ExportError naming its row.
    """
    import onnx  # optional: rtdet[export]

    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ExportError(f"opset={opset}: rtdet exports opsets {MIN_OPSET}..{MAX_OPSET} "
                          f"({MIN_OPSET} has LayerNormalization; {MAX_OPSET} is the newest the exporter writes)")
    if int(batch) < 1:
        raise ExportError(f"batch={batch}: expected a batch size >= 1")
    device = torch.device(device)
    if half and device.type != "cuda":
        raise ExportError("half=true exports an fp16 graph for GPUs (ONNX Runtime's CPU kernels are fp32); "
                          "use device=0 with half=true, or export fp32 for the CPU")
    h, w = export_shape(imgsz)
    stride = max(getattr(model, "strides", None) or [1])
    if h % stride or w % stride:
        raise ExportError(f"imgsz={[h, w]} is not a multiple of the model's largest stride {stride}; "
                          f"use a size such as {[-(-h // stride) * stride, -(-w // stride) * stride]}")
    net = deploy_form(model, dynamic).to(device)
    if half:
        net = net.half()
    deploy = DeployModel(net, NMSConfig(float(conf), float(iou), int(max_det), bool(multi_label)) if nms else None)
    deploy.eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(int(batch), int(getattr(model, "yaml", {}).get("ch", 3)), h, w, generator=gen)
    x = x.to(device, torch.float16 if half else torch.float32)
    names = OUTPUT_NAMES[deploy.layout]
    axes = None
    if dynamic:
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        per_image = {"final": {0: "batch"}, "dense": {0: "batch"}, "nms": {0: "detections"}}[deploy.layout]
        axes.update({n: per_image for n in names})
    buf = io.BytesIO()
    t0 = time.perf_counter()
    try:
        # the exporter's deprecation and tracer notes, and the IR dump it prints when it fails, are noise:
        # a failure is explained below in one line naming the operation and the row
        with torch.no_grad(), warnings.catch_warnings(), _silenced_stdout():
            warnings.filterwarnings("ignore")
            torch.onnx.export(deploy, (x,), buf, dynamo=False, opset_version=int(opset), input_names=[INPUT_NAME],
                              output_names=names, dynamic_axes=axes, do_constant_folding=True)
    except Exception as e:
        raise ExportError(_explain_failure(e, deploy, x)) from None
    finally:
        deploy.eval()  # the exporter restores the wrapper's (train) mode on its children
    proto = onnx.load_from_string(buf.getvalue())
    if simplify:
        proto = _ort_basic_optimize(proto)
    extra = {"params": int(count_parameters(model)), **(extra_metadata or {})}  # as built, the usual count
    meta = build_metadata(net, deploy.layout, (h, w), int(batch), dynamic, half, int(opset), deploy.nms, extra,
                          count_flops)
    set_metadata(proto, meta)
    path = atomic_write_bytes(Path(file), proto.SerializeToString())
    LOGGER.info(f"Exported {getattr(model, 'name', 'model')} to {path} ({path.stat().st_size / 1e6:.1f} MB, opset "
                f"{opset}, {'dynamic' if dynamic else f'static {batch}x3x{h}x{w}'}, outputs {deploy.layout}) in "
                f"{time.perf_counter() - t0:.1f} s")
    return path


@contextlib.contextmanager
def _silenced_stdout():
    """Standard output (the file descriptor, so C++ writes too) sent to /dev/null: the TorchScript exporter
    always logs its whole IR graph there when it fails (torch 2.13 enables its ONNX log unconditionally)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _ort_basic_optimize(proto):
    """The graph after ONNX Runtime's basic optimisations (standard ONNX ops only), saved by ORT itself."""
    import onnx  # optional: rtdet[export]
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(proto.SerializeToString())
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(dst)
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        out = onnx.load(str(dst))
    del out.metadata_props[:]
    return out


_OP_PATTERNS = (
    re.compile(r"operator '?(aten::\w+)'?"),
    re.compile(r"Python operator (\w+)"),
    re.compile(r"(aten::\w+)"),
)


def _explain_failure(error: Exception, deploy: DeployModel, x: torch.Tensor) -> str:
    """The exporter's error with the model row (and module) that contains the offending operation."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    op = next((m.group(1) for p in _OP_PATTERNS if (m := p.search(str(error)))), None)
    where = _locate_op(deploy, x, op) if op else None
    at = f" in {where}" if where else ""
    opname = f" the operation {op}" if op else ""
    return (f"cannot export{opname}{at} to ONNX: {type(error).__name__}: {reason}. Replace it with operations "
            f"ONNX has (or give its torch.autograd.Function a `symbolic`), or export with another opset=")


_ALIAS_PREFIXES = re.compile(r"^aten::(special|linalg|fft|nn)_")


def _canonical_op(kind: str) -> str:
    """One name for an operation however the trace and the exporter spell it: ``aten::erfinv`` for
    ``aten::erfinv_`` (in place), ``aten::special_erfinv`` (the torch.special alias) and ``aten::erfinv``."""
    return _ALIAS_PREFIXES.sub("aten::", kind).removesuffix("_")


def _locate_op(deploy: DeployModel, x: torch.Tensor, op: str) -> str | None:
    """'row i (Module)' of the first layer whose traced graph holds ``op`` (aten::name or a Python op)."""
    layers = getattr(deploy.model, "model", None)
    info = getattr(deploy.model, "layers_info", None)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore")
            traced = torch.jit.trace(deploy, (x,), check_trace=False, strict=False)
    except Exception:
        return None
    want = _canonical_op(op) if op.startswith("aten::") else None
    for node in traced.inlined_graph.nodes():
        kind = node.kind()
        hit = _canonical_op(kind) == want if want else (kind == "prim::PythonOp" and op in str(node))
        if not hit:
            continue
        scope = node.scopeName()
        m = re.search(r"model\.model\.(\d+)", scope.replace("__module.", ""))
        if m and layers is not None:
            k = int(m.group(1))
            row = info[k].row if info is not None else k
            return f"row {row} ({type(layers[k]).__name__})"
        return scope or None
    return None
