"""Forward latency of models at one image size: eager and fused, NCHW and channels_last, side by side.

    python benchmarks/latency.py                       # rtdetr-l, 640, batch 1, 2 threads
    python benchmarks/latency.py --model rtdetr-x.yaml --imgsz 640 --runs 20
    python benchmarks/latency.py --model rtmdet-tiny.yaml rtmdet-s.yaml    # one table, a block per model
    python benchmarks/latency.py --quick               # every mode once at 128 px: checks that it runs

Prints a markdown table (median / min over the timed runs after warm-up) and each mode's ratio to the
model's eager NCHW time. Models are timed one after the other; the modes of one model in turn.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["rtdetr-l.yaml"], help="one or more model YAMLs")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="128 px, one warm-up and one timed round")
    args = parser.parse_args()
    if args.quick:
        args.imgsz, args.warmup, args.runs = 128, 1, 1

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.imgsz, args.imgsz)
    print(f"{', '.join(args.model)} forward, {args.imgsz}x{args.imgsz}, batch {args.batch}, {args.threads} threads, "
          f"median of {args.runs} interleaved rounds after {args.warmup} warm-up; torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print("| model | mode | median ms | min ms | vs eager |")
    print("|---|---|---|---|---|")
    for name in args.model:
        rows = time_interleaved(variants(build_model(name).eval()), x, args.warmup, args.runs)
        base = statistics.median(rows["eager"])
        for mode, t in rows.items():
            print(f"| {name.removesuffix('.yaml')} | {mode} | {statistics.median(t):.1f} | {min(t):.1f} | "
                  f"{statistics.median(t) / base:.2f} |", flush=True)


def variants(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The four ways predict can run a model: eager / fused (Conv+BN folded, RepConv merged), NCHW / NHWC."""
    fused = copy.deepcopy(model).fuse()
    return {
        "eager": model,
        # NHWC lets oneDNN run the (depthwise) convolutions without layout conversions
        "eager, channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last),
        "fused": fused,
        "fused, channels_last": copy.deepcopy(fused).to(memory_format=torch.channels_last),
    }


if __name__ == "__main__":
    main()
