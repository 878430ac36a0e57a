"""Exporter: a DetectionModel -> an ONNX file that ONNX Runtime runs with the same detections.

    path = export_onnx(model, "model.onnx", imgsz=640)              # static 1x3x640x640, decoded outputs
    path = export_onnx(model, "model.onnx", dynamic=True, nms=True)  # any batch / size, NMS in the graph
    report = check_export(path, model, image)                        # PyTorch vs ONNX Runtime, or ExportError
    Exporter({"model": "best.pt", "imgsz": 640})()                   # what `rtdet export` runs

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
The metadata (``metadata_props``, JSON values) carries what the ONNX Runtime backend needs to stand in
for the model: names, strides, input size, family, output layout, rtdet version, parameters, GFLOPs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from rtdet.deploy.parity import ParityReport, compare_decoded, compare_detections
from rtdet.nn.heads.base import Decoded, finalize
from rtdet.ops.nms import batched_nms
from rtdet.utils.checkpoint import atomic_write_bytes
from rtdet.utils.logging import LOGGER
from rtdet.version import __version__

__all__ = ["DeployModel", "ExportError", "Exporter", "Int8Report", "ParityReport", "check_export",
           "compare_detections", "export_onnx", "quantize_int8", "read_metadata", "MIN_OPSET", "MAX_OPSET"]

MIN_OPSET, MAX_OPSET = 17, 20  # 17: LayerNormalization; 20: the newest the TorchScript exporter writes
INPUT_NAME = "images"
OUTPUT_NAMES = {"final": ["boxes", "scores", "labels"], "dense": ["boxes", "scores"],
                "nms": ["boxes", "scores", "labels", "batch_index"]}


class ExportError(RuntimeError):
    """A model that cannot be exported, or an export that ONNX Runtime does not reproduce."""


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
@dataclass(frozen=True)
class NMSConfig:
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    multi_label: bool = False


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
def _shape(imgsz: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(imgsz, int | float) and not isinstance(imgsz, bool):
        return int(imgsz), int(imgsz)
    if isinstance(imgsz, list | tuple) and len(imgsz) == 2 and all(isinstance(v, int) for v in imgsz):
        return int(imgsz[0]), int(imgsz[1])
    raise ExportError(f"imgsz={imgsz!r}: expected a side (640) or [height, width] ([384, 640])")


def export_onnx(model: nn.Module, file: str | Path, imgsz: int | tuple[int, int] = 640, batch: int = 1,
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
    import onnx

    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ExportError(f"opset={opset}: rtdet exports opsets {MIN_OPSET}..{MAX_OPSET} "
                          f"({MIN_OPSET} has LayerNormalization; {MAX_OPSET} is the newest the exporter writes)")
    if int(batch) < 1:
        raise ExportError(f"batch={batch}: expected a batch size >= 1")
    device = torch.device(device)
    if half and device.type != "cuda":
        raise ExportError("half=true exports an fp16 graph for GPUs (ONNX Runtime's CPU kernels are fp32); "
                          "use device=0 with half=true, or export fp32 for the CPU")
    h, w = _shape(imgsz)
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
    from rtdet.nn.model import count_parameters

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
    import tempfile

    import onnx
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


# ---------------------------------------------------------------------------------- metadata
def build_metadata(model: nn.Module, layout: str, shape: tuple[int, int], batch: int, dynamic: bool, half: bool,
                   opset: int, nms: NMSConfig | None, extra: dict | None = None, count_flops: bool = True) -> dict:
    """The metadata of an export of ``model`` (its deploy form: parameters are counted after fusing)."""
    from rtdet.nn.model import count_parameters

    head = model.head
    meta = {
        "rtdet_version": __version__,
        "name": getattr(model, "name", "model"),
        "family": head.family,
        "needs_nms": bool(head.needs_nms),
        "outputs": layout,
        "names": {str(k): v for k, v in model.names.items()},
        "nc": int(model.nc),
        "stride": [int(s) for s in model.strides],
        "imgsz": [int(shape[0]), int(shape[1])],
        "batch": None if dynamic else int(batch),
        "dynamic": bool(dynamic),
        "half": bool(half),
        "opset": int(opset),
        "input": INPUT_NAME,
        "params_deploy": int(count_parameters(model)),
        "gflops": float(model.float().flops(tuple(shape))) if count_flops else None,
        "nms": None if nms is None else {"conf": nms.conf, "iou": nms.iou, "max_det": nms.max_det,
                                         "multi_label": nms.multi_label},
    }
    meta.update(extra or {})
    return meta


def set_metadata(proto, meta: dict) -> None:
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    proto.doc_string = f"rtdet {meta.get('rtdet_version')} export of {meta.get('name')} ({meta.get('family')})"


def read_metadata(path_or_proto) -> dict:
    """The metadata of an rtdet ONNX file (JSON-decoded); ExportError when it is not one."""
    if isinstance(path_or_proto, str | Path):
        import onnx

        path = Path(path_or_proto)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX file not found")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise ExportError(f"{path}: cannot be read as an ONNX model ({type(e).__name__}: {e})") from None
        where = str(path)
    else:
        proto, where = path_or_proto, "<model>"
    meta = {}
    for entry in proto.metadata_props:
        try:
            meta[entry.key] = json.loads(entry.value)
        except json.JSONDecodeError:
            meta[entry.key] = entry.value
    missing = [k for k in ("rtdet_version", "outputs", "names", "stride", "imgsz") if k not in meta]
    if missing:
        raise ExportError(f"{where}: not an rtdet export (metadata lacks {missing}); export the model with "
                          f"`rtdet export model=...` so its names, strides and output layout travel with it")
    return meta


# ---------------------------------------------------------------------------------- parity check
# The comparison itself (before NMS with a tolerance, after NMS as sets robust to ties) is rtdet.deploy.parity.


def check_image(image: np.ndarray | None, shape: tuple[int, int], batch: int) -> torch.Tensor:
    """The check input: ``image`` (HWC BGR uint8) resized to the export size as an RGB [0, 1] batch, or a
    synthetic picture when none is given."""
    import cv2

    if image is None:
        from rtdet.data.synthetic import render_image

        image = render_image(np.random.default_rng(0), max(shape), n_classes=8)[0]
    h, w = shape
    img = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0
    return x[None].expand(batch, -1, -1, -1).contiguous()


def check_export(path: str | Path, model: nn.Module, x: torch.Tensor, conf: float = 0.25, iou: float = 0.7,
                 max_det: int = 300, multi_label: bool = False, box_tol: float | None = None,
                 score_tol: float = 1e-3) -> ParityReport:
    """Run ``x`` through the PyTorch model (fused, eager) and the exported file (ONNX Runtime, same
    ``finalize``); ExportError when their detections differ. ``box_tol`` defaults to 1e-3 of the side."""
    from rtdet.engine.onnx_backend import load_onnx_model

    box_tol = box_tol if box_tol is not None else 1e-3 * max(x.shape[2:])
    net = deploy_form(model, False)
    meta = read_metadata(path)
    if meta.get("nms"):  # NMS was fixed at export: compare at those settings
        nms = meta["nms"]
        conf, iou, max_det, multi_label = nms["conf"], nms["iou"], nms["max_det"], nms["multi_label"]
    img_shape = (int(x.shape[2]), int(x.shape[3]))
    with torch.no_grad():
        t0 = time.perf_counter()
        decoded = net.head.decode(net(x), img_shape)
        ours = finalize(decoded, conf, iou, max_det, multi_label)
        t1 = time.perf_counter()
        runtime = load_onnx_model(path)
        outputs = runtime(x)
        t2 = time.perf_counter()
        theirs = runtime.head.postprocess(outputs, img_shape, conf, iou, max_det, multi_label)
    in_graph = runtime.head.layout == "nms"  # NMS ran in the graph: only its results can be compared
    kept = max_det if decoded.labels is None else min(max_det, decoded.boxes.shape[1])  # a DETR keeps its top-k
    report = compare_detections(ours, theirs, conf, box_tol, score_tol, iou, kept,
                                candidates=decoded if in_graph and decoded.labels is None else None)
    if not in_graph:
        report.decoded = compare_decoded(decoded, runtime.head.decode(outputs, img_shape), box_tol, score_tol)
    report.seconds_torch, report.seconds_onnx = t1 - t0, t2 - t1
    if not report.ok:
        raise ExportError(f"{path}: ONNX Runtime does not reproduce PyTorch's detections: {report}")
    return report


def decoded_difference(a: Decoded, b: Decoded) -> float:
    """Largest absolute difference between two Decoded outputs of one layout (raw parity, no matching)."""
    return max(float((x.double() - y.double()).abs().max()) if x.numel() else 0.0
               for x, y in zip(a, b) if x is not None and y is not None)


# ---------------------------------------------------------------------------------- `rtdet export`
class Exporter:
    """``rtdet export model=<yaml|pt> format=onnx [imgsz= batch= dynamic= half= opset= nms= simplify=]``.

    Loads the model (a YAML builds a fresh one, a checkpoint its trained weights), exports it to
    ``<project>/export/<name>/<model>.onnx``, checks it against ONNX Runtime on an image (``source=`` if
    given, else a val image of ``data=``, else a synthetic picture) and prints the differences."""

    task = "export"

    def __init__(self, overrides: dict | None = None):
        self.overrides = dict(overrides or {})
        self.file: Path | None = None
        self.report: ParityReport | None = None

    def __call__(self, model=None) -> Path:
        from rtdet.engine.rundir import RunFolder
        from rtdet.engine.settings import SettingsError
        from rtdet.engine.setup import prepare
        from rtdet.utils.logging import set_verbosity

        user = {k: v for k, v in self.overrides.items() if k != "model"}
        spec = model if model is not None else self.overrides.get("model")
        if spec is None:
            raise SettingsError("export needs model=<model YAML or checkpoint .pt>, e.g. model=rtdetr-l.yaml")

        def pytorch_only(m) -> None:
            if not isinstance(m, nn.Module) or not hasattr(m, "fuse") or getattr(m, "is_onnx", False):
                raise SettingsError(f"export needs a PyTorch model (YAML or .pt); {spec} is already an export")

        names = _data_names(user.get("data"))
        loaded, _, args, device = prepare(spec, user, self.task, nc=user.get("nc") or (len(names) if names else None),
                                          names=names, scale=user.get("scale"), check=pytorch_only)
        set_verbosity(bool(args["verbose"]))
        fmt = str(args.get("format") or "onnx").lower()
        if fmt != "onnx":
            raise SettingsError(f"format={fmt}: rtdet exports format=onnx")
        shape = _shape(args["imgsz"])  # already rounded up to the stride by prepare
        batch = int(user.get("batch") or 1)  # the training default (16) is not an export default
        if args.get("int8") and not args.get("data"):
            raise SettingsError("int8=true calibrates on real images: give data=<dataset YAML> (its val split)")
        if args.get("int8") and args["half"]:
            raise SettingsError("int8=true quantises the fp32 export; drop half=true")
        # Everything above is checked before the folder exists; a failure below removes it again.
        with RunFolder(args["project"], self.task, args.get("name"), bool(args["exist_ok"])) as folder:
            source = str(spec) if isinstance(spec, str | Path) else loaded.name
            self.file = folder.path / f"{Path(source).stem if isinstance(spec, str | Path) else source}.onnx"
            self._export(loaded, args, user, shape, batch, device, source)
        LOGGER.info(f"Export done: {self.file}\n  try: rtdet predict model={self.file} source=...   "
                    f"rtdet val model={self.file} data=...")
        return self.file

    def _export(self, loaded: nn.Module, args: dict, user: dict, shape: tuple[int, int], batch: int,
                device: torch.device, source: str) -> None:
        """Write ``self.file``, check it with ONNX Runtime, and quantise it when ``int8=true``."""
        conf, multi_label = float(args["conf"]), bool(args["multi_label"])  # export's defaults: the schema
        inherited_args = {k: args.get(k) for k in ("train_pipeline", "val_pipeline") if args.get(k)}
        export_onnx(loaded, self.file, shape, batch, bool(args["dynamic"]), bool(args["half"]), int(args["opset"]),
                    bool(args["nms"]), conf, float(args["iou"]), int(args["max_det"]), multi_label,
                    bool(args["simplify"]), device, {"args": inherited_args, "source": source})
        if bool(args.get("check", True)) and not args["half"]:
            image = _check_source(user.get("source"), args.get("data"))
            x = check_image(image, shape, batch)
            self.report = check_export(self.file, loaded, x, conf, float(args["iou"]), int(args["max_det"]),
                                       multi_label)
            LOGGER.info(f"ONNX Runtime check: {self.report}")
        if args.get("int8"):
            self.int8_file, self.int8_report = self._int8(args, batch)

    def _int8(self, args: dict, batch: int) -> tuple[Path, Int8Report]:
        """``int8=true``: the statically quantised copy, calibrated on ``data=``'s val images, and what it
        changes: mAP on the val split and latency, both against the fp32 export."""
        from rtdet.engine import loaders

        data = loaders.load_data(args["data"])
        val_args = {**args, "imgsz": int(args["imgsz"]), "verbose": False}
        calib = _calibration_batches(loaders.val_loader(data, val_args, batch), int(args["calib_images"]), batch)
        dst = self.file.with_name(f"{self.file.stem}-int8.onnx")
        threads = int(args.get("threads") or 0) or None
        quantized = quantize_int8(self.file, dst, calib, threads)
        report = int8_report(self.file, dst, data, val_args, batch, threads)
        LOGGER.info(f"int8: {dst}\n  {quantized}\n  {report}")
        return dst, report


# ---------------------------------------------------------------------------------- int8
@dataclass
class Int8Report:
    """What static int8 quantisation changed: val mAP and latency (ms per batch, median) vs fp32."""

    map_fp32: float | None  # None: mAP not available (the val images have no labelled box)
    map_int8: float | None
    ms_fp32: float
    ms_int8: float

    def __str__(self) -> str:
        maps = ("mAP50-95 n/a (no labelled boxes in the val split)" if self.map_fp32 is None or self.map_int8 is None
                else f"mAP50-95 {self.map_fp32:.4f} (fp32) -> {self.map_int8:.4f} (int8), "
                     f"{self.map_int8 - self.map_fp32:+.4f}")
        return (f"{maps}; latency {self.ms_fp32:.1f} -> {self.ms_int8:.1f} ms "
                f"({self.ms_fp32 / max(self.ms_int8, 1e-9):.2f}x faster)")


def _calibration_batches(loader, n_images: int, batch: int) -> list[np.ndarray]:
    """Up to ``n_images`` letterboxed val images as float32 batches of the export's batch size."""
    images = []
    for b in loader:
        images.extend(b["img"].float().numpy())
        if len(images) >= n_images:
            break
    images = images[:n_images]
    n = max(len(images) // batch, 1) * batch
    images = (images * batch)[:n] if len(images) < batch else images[:n]  # a tiny val split: repeat it
    return [np.stack(images[i:i + batch]) for i in range(0, n, batch)]


def quantize_int8(src: str | Path, dst: str | Path, batches: list[np.ndarray], threads: int | None = None):
    """Static int8 quantisation of ``src`` into ``dst`` with the layers that lose the most kept in fp32
    (rtdet/deploy/int8.py: pre-processing, per-channel QDQ, measured per-layer sensitivity), calibrated on
    ``batches``; the metadata is kept, plus ``int8`` (what was done). Returns the Int8Result."""
    import onnx

    from rtdet.deploy.int8 import quantize_int8 as quantize

    result = quantize(src, dst, batches, INPUT_NAME, threads=threads)
    proto = onnx.load(str(dst))
    meta = read_metadata(src)
    meta["int8"] = {"calibration_images": sum(len(b) for b in batches), "format": "QDQ", "weights": "int8",
                    "activations": "uint8", "kept_fp32": result.excluded,
                    "output_error": round(result.output_error, 6)}
    set_metadata(proto, meta)
    atomic_write_bytes(Path(dst), proto.SerializeToString())
    return result


def int8_report(fp32: Path, int8: Path, data, args: dict, batch: int, threads: int | None, runs: int = 10
                ) -> Int8Report:
    """Val mAP50-95 of both files through the ONNX Runtime backend, and their latency on one val batch
    (interleaved runs, median)."""
    import statistics

    from rtdet.engine import loaders
    from rtdet.engine.onnx_backend import load_onnx_model
    from rtdet.engine.validator import Validator

    models = [load_onnx_model(p, threads=threads) for p in (fp32, int8)]
    maps = [Validator(args=args).run(m, loaders.val_loader(data, args, batch))["mAP50-95"] for m in models]  # or None
    x = next(iter(loaders.val_loader(data, args, batch)))["img"].float()
    x = x[:batch] if len(x) >= batch else x.repeat(batch, 1, 1, 1)[:batch]
    times: list[list[float]] = [[], []]
    for m in models:
        m(x)  # warm-up
    for _ in range(runs):
        for k, m in enumerate(models):
            t0 = time.perf_counter()
            m(x)
            times[k].append(1000 * (time.perf_counter() - t0))
    return Int8Report(maps[0], maps[1], statistics.median(times[0]), statistics.median(times[1]))


def _data_names(data) -> list[str] | None:
    if not data:
        return None
    from rtdet.data import load_data_config

    return list(load_data_config(data).names)


def _check_source(source, data) -> np.ndarray | None:
    """The picture the export is checked on: ``source`` (an image file), else the first val image of
    ``data``, else None (a synthetic picture)."""
    import cv2

    path = None
    if source:
        path = Path(str(source))
    elif data:
        from rtdet.data import load_data_config
        from rtdet.data.dataset import open_split

        cfg = load_data_config(data)
        split = "val" if "val" in cfg.splits else next(iter(cfg.splits))
        path = Path(open_split(cfg, split, verbose=False).im_files[0])
    if path is None:
        return None
    img = cv2.imread(str(path))
    if img is None:
        raise FileNotFoundError(f"source '{path}': not a readable image for the export check")
    return img
