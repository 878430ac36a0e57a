"""x2 upsamplers side by side: nearest, bilinear and the four DySample variants (lp / pl x static /
dynamic scope), at 256 channels on 40x40 and 80x80 maps, batch 1 and 8.

    python benchmarks/upsamplers.py                   # prints the table recorded in docs/benchmarks.md
    python benchmarks/upsamplers.py --runs 30 --threads 2 --out table.md   # also write it to a file

Per row: parameters, FLOPs (torch.utils.flop_counter; it has no formula for interpolation or
grid_sample, so only the offset layers count), and the median / min CPU latency of the forward pass
(inference mode) and of forward + backward (gradient w.r.t. the input and the parameters). One extra row
times DySample lp computed in the official order of operations (a step-by-step re-implementation) to
show what the rearranged forward of ``rtdet.nn.modules.dysample`` saves.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rtdet.nn.modules.dysample import DySample
from rtdet.utils.checkpoint import atomic_write_text

CHANNELS = 256


class OfficialOrderDySample(nn.Module):
    """DySample's maths in the official order of operations (offsets at low resolution plus init_pos,
    pixel-centre grid built on the host each call, pixel-shuffle of the grid), sharing ``m``'s weights."""

    def __init__(self, m: DySample):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, s, g = self.m, self.m.scale, self.m.groups
        if m.style == "pl":
            xs = F.pixel_shuffle(x, s)
            raw = m.offset(xs) * (m.scope(xs).sigmoid() * 0.5 if m.scope is not None else 0.25)
            offset = F.pixel_unshuffle(raw, s) + m.init_pos
        else:
            raw = m.offset(x) * (m.scope(x).sigmoid() * 0.5 if m.scope is not None else 0.25)
            offset = raw + m.init_pos
        b, _, h, w = offset.shape
        cx = torch.arange(w) + 0.5
        cy = torch.arange(h) + 0.5
        coords = torch.stack(torch.meshgrid([cx, cy], indexing="ij")).transpose(1, 2)
        coords = coords.view(1, 2, 1, h, w).to(x)
        normaliser = torch.tensor([w, h], dtype=x.dtype, device=x.device).view(1, 2, 1, 1, 1)
        grid = 2 * (coords + offset.view(b, 2, -1, h, w)) / normaliser - 1
        grid = F.pixel_shuffle(grid.reshape(b, -1, h, w), s).view(b, 2, g, s * h, s * w)
        grid = grid.permute(0, 2, 3, 4, 1).reshape(b * g, s * h, s * w, 2)
        out = F.grid_sample(x.reshape(b * g, -1, h, w), grid, mode="bilinear", padding_mode="border",
                            align_corners=False)  # fmt: skip
        return out.view(b, -1, s * h, s * w)


def upsamplers() -> dict[str, Callable[[], nn.Module]]:
    return {
        "nearest": lambda: nn.Upsample(scale_factor=2, mode="nearest"),
        "bilinear": lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        "DySample lp (static)": lambda: DySample(CHANNELS, 2, "lp", 4, dyscope=False),
        "DySample+ lp (dynamic)": lambda: DySample(CHANNELS, 2, "lp", 4, dyscope=True),
        "DySample-S pl (static)": lambda: DySample(CHANNELS, 2, "pl", 4, dyscope=False),
        "DySample-S+ pl (dynamic)": lambda: DySample(CHANNELS, 2, "pl", 4, dyscope=True),
        "DySample lp, official op order": lambda: OfficialOrderDySample(DySample(CHANNELS, 2, "lp", 4)),
    }


def interleaved(fns: dict[str, Callable[[], object]], warmup: int, runs: int) -> dict[str, list[float]]:
    """Time every function once per round, round after round, so a change in machine load affects all of
    them alike (the machine may be shared)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000)
    return times


def forward_flops(module: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(x)
    return counter.get_total_flops()


def train_step(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    xg = x.clone().requires_grad_(True)
    grad_out = torch.randn(x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3])

    def step() -> None:
        xg.grad = None
        module.zero_grad(set_to_none=True)
        module(xg).backward(grad_out)

    return step


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20, help="timed forward runs (forward+backward: half)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 80])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", default="-", help="also write the markdown to this file ('-': only print)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    rows = []
    n_bwd = max(args.runs // 2, 3)
    for batch in args.batches:
        for size in args.sizes:
            x = torch.randn(batch, CHANNELS, size, size)
            modules = {name: make() for name, make in upsamplers().items()}
            with torch.inference_mode():
                fwd = interleaved({k: (lambda m=m, x=x: m(x)) for k, m in modules.items()}, args.warmup, args.runs)
            fwd_bwd = interleaved({k: train_step(m, x) for k, m in modules.items()}, args.warmup, n_bwd)
            for name, module in modules.items():
                rows.append((
                    f"{batch}", f"{size}x{size}", name, f"{sum(p.numel() for p in module.parameters()):,}",
                    f"{forward_flops(module, x) / 1e6:.1f}",
                    f"{statistics.median(fwd[name]):.2f}", f"{min(fwd[name]):.2f}",
                    f"{statistics.median(fwd_bwd[name]):.2f}", f"{min(fwd_bwd[name]):.2f}",
                ))  # fmt: skip
                print(" | ".join(rows[-1]), flush=True)

    header = (
        "| batch | input | upsampler | params | MFLOPs | fwd median ms | fwd min ms | fwd+bwd median ms "
        "| fwd+bwd min ms |\n|---|---|---|---|---|---|---|---|---|"
    )
    table = "\n".join([header] + ["| " + " | ".join(r) + " |" for r in rows])
    setup = (
        f"x2 upsampling of a {CHANNELS}-channel map, CPU ({cpu_name()}), torch {torch.__version__}, "
        f"{args.threads} threads; median / min of {args.runs} forward runs (inference mode) and "
        f"{n_bwd} forward+backward runs after {args.warmup} warm-up runs, the upsamplers timed in turn "
        f"within each round. DySample uses 4 "
        f"groups. MFLOPs = 2 x multiply-accumulates counted by torch.utils.flop_counter (interpolation and "
        f"grid_sample are not counted). 1-minute load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after the run on {os.cpu_count()} cores: other work on the machine "
        f"inflates the timings."
    )
    text = f"# Upsampler benchmark\n\n{setup}\n\n{table}\n\nGenerated by `python benchmarks/upsamplers.py`.\n"
    print()
    print(text)
    if args.out != "-":
        atomic_write_text(args.out, text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
