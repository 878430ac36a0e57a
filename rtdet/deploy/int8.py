"""int8 post-training quantization of an exported ONNX model that keeps its accuracy (ONNX Runtime, QDQ).

    result = quantize_int8(src, dst, batches, "images")          # batches: float32 [B, 3, H, W] arrays
    result.excluded, result.output_error, result.trace             # what stayed fp32, and why

What is done, in order, and why:

1. **Pre-processing** (``quant_pre_process``): symbolic and ONNX shape inference plus ONNX Runtime's
   graph optimisation, so that the quantizer sees the fused graph that will actually run and knows every
   tensor's shape (per-channel axes, MatMul weights).
2. **Calibration** on ``calib_images`` images (MinMax ranges of every activation: two numbers per tensor
   and image are kept, so memory does not grow with the images' size), computed once and reused for every
   candidate model below where this ONNX Runtime has a calibration cache.
3. **Quantization**: QDQ format, int8 weights per output channel, uint8 activations, Conv / MatMul /
   Gemm (GridSample, TopK, LayerNorm, Softmax and the decode stay fp32).
4. **Measured sensitivity**: the fully quantized model and the fp32 model run the same images with every
   quantizable node's output (and input) exposed; a node's *local error* is the relative error of its
   output minus the largest relative error of its activation inputs -- what quantizing this node (its
   weights and its input) adds, not what it inherits. Nodes are ranked by it.
5. **Exclusion until the output is close**: the worst 1, 2, 4, ... nodes are kept in fp32
   (``nodes_to_exclude``), each with the quantizable nodes that write its inputs directly (in QDQ a
   tensor stays fp32 only when its writer and its reader are both excluded; after an activation such as
   SiLU, whose ops are not quantized, the node alone suffices), until the *output error* -- the largest
   relative error of the model's float outputs (decoded boxes and scores) on the probe images -- is
   below ``max_error``, or until ``max_excluded`` of the nodes are excluded (then the candidate with the
   smallest error is kept).

Relative error of a tensor over the images: ``sqrt(sum((q - f)^2) / sum(f^2))``. Downstream of a
data-dependent selection (TopK, NonZero, NonMaxSuppression: RT-DETR's query selection) the int8 model may
pick the same items in another order, so there both tensors are compared with their values sorted per
image (order-free; never larger than the element-wise error). Everything here works
on ONNX files and ONNX Runtime; nothing imports the engine (the ``rtdet export`` verb calls this).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtdet.deploy.metadata import INPUT_NAME, read_metadata, set_metadata
from rtdet.utils.checkpoint import atomic_write_bytes

__all__ = ["Int8Options", "Int8Result", "exclusion_groups", "local_errors", "node_inputs_outputs", "preprocess",
           "quantize_int8", "relative_errors", "selected_tensors", "float_outputs"]


@dataclass(frozen=True)
class Int8Options:
    """How to quantize. ``max_error`` and ``max_excluded`` bound the search of step 5; ``exclude=False``
    quantizes every Conv / MatMul / Gemm (the unguarded baseline); ``sensitivity_images`` of the
    calibration images are used to measure errors (each exposes every node output: memory grows with it)."""

    per_channel: bool = True
    preprocess: bool = True
    exclude: bool = True
    max_error: float = 0.05
    max_excluded: float = 0.5
    sensitivity_images: int = 4
    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")


@dataclass
class Int8Result:
    """What quantization produced: the file, the nodes kept in fp32 (worst first, each with its exclusion
    group), the output error of the chosen model, each node's measured local error and the search trace
    [(nodes ranked worst that were excluded with their groups, output error)]."""

    path: Path
    excluded: list[str]
    output_error: float
    quantized_nodes: int
    node_errors: dict[str, float] = field(default_factory=dict)
    trace: list[tuple[int, float]] = field(default_factory=list)

    def __str__(self) -> str:
        steps = ", ".join(f"worst {k} -> {e:.3f}" for k, e in self.trace)
        return (f"{self.quantized_nodes - len(self.excluded)}/{self.quantized_nodes} nodes int8, "
                f"{len(self.excluded)} kept fp32 by measured sensitivity; output error {self.output_error:.3f} "
                f"(search: {steps})")


# ---------------------------------------------------------------------------------- graph helpers
def node_inputs_outputs(model, op_types: Sequence[str]) -> dict[str, tuple[list[str], str]]:
    """{node name: (activation input names, output name)} for the quantizable nodes of ``model`` (an
    onnx.ModelProto); initializers (weights, biases) are not activation inputs."""
    weights = {t.name for t in model.graph.initializer}
    return {n.name: ([i for i in n.input if i and i not in weights], n.output[0])
            for n in model.graph.node if n.op_type in op_types}


def float_outputs(model) -> list[str]:
    """The model's floating-point graph outputs (decoded boxes and scores; labels and indices left out)."""
    floats = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
    return [o.name for o in model.graph.output if o.type.tensor_type.elem_type in floats]


def exclusion_groups(model, op_types: Sequence[str]) -> dict[str, list[str]]:
    """{node: [node, the quantizable nodes whose outputs it reads directly]}: what must stay fp32 for the
    node's weights and inputs to be fp32 (a QDQ tensor is quantized when its writer or reader is)."""
    writer = {n.output[0]: n for n in model.graph.node if n.op_type in op_types}
    return {name: [name, *(writer[i].name for i in ins if i in writer)]
            for name, (ins, _) in node_inputs_outputs(model, op_types).items()}


SELECTIONS = ("TopK", "NonZero", "NonMaxSuppression")  # ops whose outputs' order depends on the data


def selected_tensors(model) -> set[str]:
    """Tensors computed from the output of a data-dependent selection (their order may differ between
    two models that select the same items)."""
    tainted: set[str] = set()
    for n in model.graph.node:  # ONNX nodes are topologically sorted
        if n.op_type in SELECTIONS or any(i in tainted for i in n.input):
            tainted.update(n.output)
    return tainted


def _name_nodes(model) -> None:
    """Give every unnamed node a unique name (``nodes_to_exclude`` refers to nodes by name)."""
    seen = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)


def _with_outputs(model, names: Sequence[str]) -> bytes:
    """``model`` serialised with ``names`` added as graph outputs (types left to ONNX Runtime)."""
    import onnx

    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    return m.SerializeToString()


def _session(model_bytes: bytes, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def relative_errors(reference, candidate, names: Sequence[str], feeds: Sequence[dict],
                    threads: int | None = None) -> dict[str, float]:
    """{tensor: relative error} of ``candidate`` against ``reference`` (onnx.ModelProtos with the same
    tensor names) over ``feeds``: sqrt(sum (c - r)^2 / sum r^2), summed over every feed; tensors after a
    selection (:func:`selected_tensors`) are compared with their values sorted per image."""
    names = list(dict.fromkeys(names))
    orderless = selected_tensors(reference)
    sessions = [_session(_with_outputs(m, names), threads) for m in (reference, candidate)]
    noise = dict.fromkeys(names, 0.0)
    power = dict.fromkeys(names, 0.0)
    for feed in feeds:
        ref, cand = (dict(zip(names, s.run(names, feed))) for s in sessions)
        for n in names:
            r, c = np.asarray(ref[n], np.float64), np.asarray(cand[n], np.float64)
            if n in orderless and r.ndim and r.shape == c.shape:
                r, c = (np.sort(t.reshape(len(t), -1), axis=1) for t in (r, c))
            noise[n] += float(np.square(c - r).sum())
            power[n] += float(np.square(r).sum())
    return {n: float(np.sqrt(noise[n] / max(power[n], 1e-30))) for n in names}


def local_errors(reference, quantized, feeds: Sequence[dict], op_types: Sequence[str],
                 threads: int | None = None) -> dict[str, float]:
    """{node: local error} of every quantizable node of ``reference`` (fp32) in ``quantized`` (the same
    graph with every such node quantized), largest first. Local error = the relative error of the node's
    output minus the largest relative error among its activation inputs (never below 0)."""
    nodes = node_inputs_outputs(reference, op_types)
    graph_inputs = {i.name for i in reference.graph.input}
    names = {t for ins, out in nodes.values() for t in (*ins, out) if t not in graph_inputs}
    errors = relative_errors(reference, quantized, sorted(names), feeds, threads)
    local = {node: max(errors[out] - max((errors.get(i, 0.0) for i in ins), default=0.0), 0.0)
             for node, (ins, out) in nodes.items()}
    return dict(sorted(local.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------------------------- ONNX Runtime steps
@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizer logs and prints advice on every call; keep the export's output readable."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore")
            yield
    finally:
        logger.setLevel(level)


def preprocess(src: Path, dst: Path) -> Path:
    """ONNX Runtime's pre-processing: symbolic shape inference (ONNX shape inference alone when the
    symbolic pass cannot handle the graph), ONNX shape inference and graph optimisation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        try:
            quant_pre_process(str(src), str(dst))
        except Exception:  # noqa: BLE001 - the symbolic pass rejects some ops; the rest still helps
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


def _reader(feeds: Sequence[dict]):
    """A CalibrationDataReader over ``feeds`` (ONNX Runtime calls get_next until None)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    return Reader()


def _quantize(src: Path, dst: Path, feeds: Sequence[dict], cache: Path, exclude: Sequence[str],
              options: Int8Options) -> None:
    """One QDQ quantization of ``src`` (calibration ranges computed on ``feeds`` once, then read from
    ``cache`` where this ONNX Runtime can cache them)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    kw = {"calibration_cache_path": str(cache)} if "calibration_cache_path" in inspect.signature(
        quantize_static).parameters else {}
    with _quiet():
        quantize_static(str(src), str(dst), _reader(feeds), quant_format=QuantFormat.QDQ,
                        per_channel=options.per_channel,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        op_types_to_quantize=list(options.op_types), nodes_to_exclude=list(exclude), **kw)


# ---------------------------------------------------------------------------------- the whole recipe
def quantize_int8(src: str | Path, dst: str | Path, batches: Sequence[np.ndarray], input_name: str,
                  options: Int8Options | None = None, threads: int | None = None) -> Int8Result:
    """Quantize ``src`` into ``dst`` (written atomically, ``src``'s metadata kept): steps 1-5 of the module
    docstring, calibrated on ``batches`` (float32 arrays of the model's input shape)."""
    import onnx

    options = options or Int8Options()
    feeds = [{input_name: np.ascontiguousarray(b, np.float32)} for b in batches]
    if not feeds:
        raise ValueError("int8 quantization needs at least one calibration batch")
    per_image = max(len(batches[0]), 1)
    probe = feeds[:max(1, -(-options.sensitivity_images // per_image))]
    with tempfile.TemporaryDirectory(prefix="rtdet-int8-") as tmp:
        tmp = Path(tmp)
        fp32 = preprocess(Path(src), tmp / "pre.onnx") if options.preprocess else Path(src)
        model = onnx.load(str(fp32))
        _name_nodes(model)
        fp32 = tmp / "named.onnx"
        onnx.save(model, str(fp32))
        cache = tmp / "calibration.json"
        nodes = node_inputs_outputs(model, options.op_types)
        outputs = float_outputs(model)

        def build(exclude: Sequence[str], k: int) -> tuple[Path, float]:
            out = tmp / f"int8-{k}.onnx"
            _quantize(fp32, out, feeds, cache, exclude, options)
            err = relative_errors(model, onnx.load(str(out)), outputs, probe, threads)
            return out, max(err.values(), default=0.0)

        best, error = build([], 0)
        trace, ranked, excluded = [(0, error)], {}, []
        if options.exclude and error > options.max_error:
            ranked = local_errors(model, onnx.load(str(best)), probe, options.op_types, threads)
            groups = exclusion_groups(model, options.op_types)
            order, limit, k = list(ranked), int(options.max_excluded * len(nodes)), 1
            while 0 < k <= limit:
                exclude = list(dict.fromkeys(n for node in order[:k] for n in groups[node]))
                path, err = build(exclude, k)
                trace.append((k, err))
                if err < 0.9 * error:  # keep layers in fp32 only for a clear gain
                    best, error, excluded = path, err, exclude
                if err <= options.max_error or k == limit:
                    break
                k = min(2 * k, limit)  # 1, 2, 4, ... and the limit itself last
        proto = onnx.load(str(best))
    src_meta = onnx.load(str(src), load_external_data=False).metadata_props
    del proto.metadata_props[:]
    proto.metadata_props.extend(src_meta)
    atomic_write_bytes(Path(dst), proto.SerializeToString())
    return Int8Result(Path(dst), excluded, error, len(nodes), ranked, trace)


def quantize_export(src: str | Path, dst: str | Path, batches: Sequence[np.ndarray], threads: int | None = None
                    ) -> Int8Result:
    """:func:`quantize_int8` of an rtdet export: its metadata is kept, plus ``int8`` (what was done)."""
    import onnx  # optional: rtdet[export]

    result = quantize_int8(src, dst, batches, INPUT_NAME, threads=threads)
    proto = onnx.load(str(dst))
    meta = read_metadata(src)
    meta["int8"] = {"calibration_images": sum(len(b) for b in batches), "format": "QDQ", "weights": "int8",
                    "activations": "uint8", "kept_fp32": result.excluded,
                    "output_error": round(result.output_error, 6)}
    set_metadata(proto, meta)
    atomic_write_bytes(Path(dst), proto.SerializeToString())
    return result
