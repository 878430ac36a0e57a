"""Forward latency of models at one image size: eager and fused, NCHW and channels_last, side by side.

    python benchmarks/latency.py                       # rtdetr-l, yolov9t, yolov9-c; 640, batch 1, 2 threads
    python benchmarks/latency.py --model rtdetr-x.yaml --imgsz 640 --runs 20
    python benchmarks/latency.py --quick               # a 64x64 check that every row runs (timings meaningless)

"fused" is ``model.fuse()``, the inference form: BN folded, RepConv / RepConvN branches merged and, for
YOLOv9 models with PGI (yolov9-c), the auxiliary branch removed -- so yolov9-c's fused rows are the
deployed model (25.3M parameters) and its eager rows the training-time graph (51.2M).

Prints a markdown table per model (median / min over the timed runs after warm-up, ratio to eager).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

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


DEFAULT_MODELS = ["rtdetr-l.yaml", "yolov9t.yaml", "yolov9-c.yaml"]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=DEFAULT_MODELS, help="model YAMLs, timed one after another")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
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


if __name__ == "__main__":
    main()
