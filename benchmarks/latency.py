"""Forward latency of models at one image size: eager and fused, NCHW and channels_last, side by side;
then fused PyTorch against its ONNX export in ONNX Runtime for several models.

    python benchmarks/latency.py                       # rtdetr-l, yolov9t, yolov9-c, rtmdet-tiny, rtmdet-s; 640
    python benchmarks/latency.py --model rtmdet-tiny.yaml rtmdet-s.yaml    # some models, one table each
    python benchmarks/latency.py --model rtdetr-x.yaml --imgsz 640 --runs 20
    python benchmarks/latency.py --ort-models rtdetr-l.yaml,yolov9-c.yaml --ort-opt all
    python benchmarks/latency.py --model               # the ORT table alone
    python benchmarks/latency.py --quick               # a 64x64 check that every row runs (timings meaningless)

"fused" is ``model.fuse()``, the inference form: BN folded, RepConv / RepConvN branches merged and, for
YOLOv9 models with PGI (yolov9-c), the auxiliary branch removed -- so yolov9-c's fused rows are the
deployed model (25.3M parameters) and its eager rows the training-time graph (51.2M).

Prints a markdown table per model (median / min over the timed runs after warm-up, ratio to eager). The
ORT table times, per model, the fused channels_last PyTorch model (what ``rtdet predict`` runs) and its
static export in ONNX Runtime in the same interleaved rounds, and records the threads and the graph
optimisation level, and each export's GFLOP/s next to what one large 3x3 convolution alone reaches in
both runtimes (how close a model is to the machine's convolution throughput). Models that this checkout
does not have are skipped with a message.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from rtdet import build_model


def time_interleaved(models: dict[str, torch.nn.Module], x: torch.Tensor, warmup: int, runs: int) -> dict:
    """Milliseconds per forward for every model, timed in turn within each round so that drifts of the
    machine (other jobs, clock changes) hit all of them alike and the ratios stay meaningful."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(x)
        for _ in range(runs):
            for name, model in models.items():
                t0 = time.perf_counter()
                model(x)
                times[name].append((time.perf_counter() - t0) * 1000)
    return times


DEFAULT_MODELS = ["rtdetr-l.yaml", "yolov9t.yaml", "yolov9-c.yaml", "rtmdet-tiny.yaml", "rtmdet-s.yaml"]
ORT_MODELS = "rtdetr-l.yaml,rtdetr-l-dysample.yaml,yolov9-c.yaml,yolov9t.yaml,rtmdet-s.yaml"


def table(name: str, model: torch.nn.Module, x: torch.Tensor, warmup: int, runs: int) -> str:
    fused = copy.deepcopy(model).fuse()
    params = sum(p.numel() for p in model.parameters())
    params_fused = sum(p.numel() for p in fused.parameters())
    models = {
        "eager": model,
        # NHWC lets oneDNN run the (depthwise) convolutions without layout conversions
        "eager, channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last),
        "fused": fused,
        "fused, channels_last": copy.deepcopy(fused).to(memory_format=torch.channels_last),
    }
    rows = time_interleaved(models, x, warmup, runs)
    base = statistics.median(rows["eager"])
    lines = [f"{name}: {params:,} parameters eager, {params_fused:,} fused",
             "| mode | median ms | min ms | vs eager |", "|---|---|---|---|"]
    for mode, t in rows.items():
        lines.append(f"| {mode} | {statistics.median(t):.1f} | {min(t):.1f} | {statistics.median(t) / base:.2f} |")
    return "\n".join(lines)


class OrtForward(torch.nn.Module):
    """An ONNX Runtime session called like a model (numpy in, numpy out; no conversion timed beyond it)."""

    def __init__(self, path: Path, threads: int, opt_level: str):
        super().__init__()
        from rtdet.deploy.runtime import make_session

        self.session = make_session(path, "cpu", threads, opt_level)
        self.input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor):
        return self.session.run(None, {self.input: x.numpy()})


def ort_rows(names: list[str], x: torch.Tensor, threads: int, opt_level: str, warmup: int, runs: int) -> None:
    """Fused channels_last PyTorch vs its static ONNX export in ONNX Runtime, model by model."""
    from rtdet.deploy.graph import export_onnx
    from rtdet.utils.logging import set_verbosity

    set_verbosity(False)  # keep the export log out of the table

    print(f"\nfused PyTorch (channels_last) vs ONNX Runtime {_ort_version()} (static export, graph optimisation "
          f"{opt_level}, {threads} intra-op threads), {x.shape[2]}x{x.shape[3]}, batch {x.shape[0]}; model forward "
          f"and the head's decode in both (the exported graph holds decode)")
    print("| model | fused GFLOPs | fused PyTorch ms | ONNX Runtime ms | ORT / PyTorch | ORT GFLOP/s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            try:
                model = build_model(name).eval()
            except Exception as e:  # a family that is not in this checkout yet
                print(f"| {name} | skipped: {type(e).__name__}: {str(e).splitlines()[0][:90]} | | |")
                continue
            path = export_onnx(model, Path(tmp) / f"{Path(name).stem}.onnx", imgsz=tuple(x.shape[2:]),
                               batch=x.shape[0], count_flops=False)
            fused = copy.deepcopy(model).fuse().to(memory_format=torch.channels_last)
            shape = tuple(x.shape[2:])
            pytorch = _Decoded(fused, shape)
            times = time_interleaved({"pytorch": pytorch, "ort": OrtForward(path, threads, opt_level)}, x, warmup,
                                     runs)
            pt, ort = statistics.median(times["pytorch"]), statistics.median(times["ort"])
            gflops = fused.flops(shape) * x.shape[0]
            print(f"| {name} | {gflops:.1f} | {pt:.1f} | {ort:.1f} | {ort / pt:.2f} | {gflops / ort * 1e3:.0f} |")
    conv_throughput(threads, opt_level, warmup, runs)


def conv_throughput(threads: int, opt_level: str, warmup: int, runs: int) -> None:
    """What this machine's convolutions can do: one 3x3 256 -> 256 conv on an 80x80 map (the stride-8 neck
    convolutions that dominate rtdetr-l), in fused PyTorch NHWC and in ONNX Runtime. A whole model cannot
    run faster than its GFLOPs at this rate."""
    from rtdet.deploy.runtime import make_session

    conv = torch.nn.Conv2d(256, 256, 3, padding=1).eval()
    x = torch.randn(1, 256, 80, 80)
    gflop = 2 * 80 * 80 * 256 * 256 * 9 / 1e9
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conv.onnx"
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice, as in rtdet export
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(conv, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"])
        session = make_session(path, "cpu", threads, opt_level)
        nhwc = copy.deepcopy(conv).to(memory_format=torch.channels_last)

        class Session(torch.nn.Module):
            def forward(self, x):
                return session.run(None, {"x": x.numpy()})

        times = time_interleaved({"PyTorch, channels_last": nhwc, "ONNX Runtime": Session()}, x, warmup, runs)
    print(f"\none 3x3 conv, 256 -> 256 channels, 80x80 ({gflop:.2f} GFLOPs), {threads} threads: "
          + ", ".join(f"{k} {gflop / statistics.median(t) * 1e3:.0f} GFLOP/s" for k, t in times.items()))


class _Decoded(torch.nn.Module):
    """model + head.decode: the same work as the exported graph."""

    def __init__(self, model, shape):
        super().__init__()
        self.model, self.shape = model, shape

    def forward(self, x):
        return self.model.head.decode(self.model(x), self.shape)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="*", default=DEFAULT_MODELS,
                        help="model YAMLs, timed one after another (none: only the ORT table)")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--ort-models", default=ORT_MODELS, help="comma-separated models for the ORT table ('' = none)")
    parser.add_argument("--ort-opt", default="all", choices=("disable", "basic", "extended", "all"))
    parser.add_argument("--quick", action="store_true", help="64x64, one warm-up and two runs: checks the script")
    args = parser.parse_args()
    if args.quick:
        args.imgsz, args.warmup, args.runs = 64, 1, 2

    torch.set_num_threads(args.threads)
    print(f"forward, {args.imgsz}x{args.imgsz}, batch {args.batch}, {args.threads} threads, median of {args.runs} "
          f"interleaved rounds after {args.warmup} warm-up; torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    for name in args.model:
        torch.manual_seed(0)
        x = torch.randn(args.batch, 3, args.imgsz, args.imgsz)
        print()
        print(table(name, build_model(name).eval(), x, args.warmup, args.runs), flush=True)
    if args.ort_models:
        torch.manual_seed(0)
        x = torch.randn(args.batch, 3, args.imgsz, args.imgsz)
        ort_rows([m for m in args.ort_models.split(",") if m], x, args.threads, args.ort_opt, args.warmup, args.runs)


if __name__ == "__main__":
    main()
