"""Dense post-processing at validation settings: NMS over each image's best candidates first (what
``rtdet.ops.nms.dense_nms`` does) against one NMS over every candidate, side by side, same answer.

    python benchmarks/nms.py                  # batch 16, 8400 anchors (640 px), 80 classes, conf 0.001
    python benchmarks/nms.py --anchors 2100 --runs 5 --threads 2
    python benchmarks/nms.py --quick          # small sizes: checks the script runs

The dense outputs imitate a trained detector's: a few objects per image, each covered by many anchors whose
boxes jitter around it and whose class scores are high for its class and low (but mostly above conf) for
the others, so validation's multi-label candidates reach the 30,000-per-image cap as they do on COCO.
Both paths run the pure-PyTorch NMS unless torchvision is importable. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtdet.ops.nms import HAS_TORCHVISION, dense_nms  # noqa: E402


def dense_outputs(batch: int, anchors: int, classes: int, objects: int, imgsz: int, seed: int = 0):
    """boxes [B, N, 4] xyxy pixels and scores [B, N, C] like a trained dense head's."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(batch, objects, 2, generator=g) * imgsz
    size = (0.05 + 0.4 * torch.rand(batch, objects, 2, generator=g)) * imgsz
    cls = torch.randint(0, classes, (batch, objects), generator=g)
    owner = torch.randint(0, objects, (batch, anchors), generator=g)  # the object each anchor sees

    def pick(t: torch.Tensor) -> torch.Tensor:  # per anchor, the value of its object
        return torch.gather(t, 1, owner[..., None].expand(-1, -1, t.shape[-1]))

    c = pick(centre) + torch.randn(batch, anchors, 2, generator=g) * pick(size) * 0.15
    wh = pick(size) * (0.6 + 0.8 * torch.rand(batch, anchors, 2, generator=g))
    boxes = torch.cat([c - wh / 2, c + wh / 2], -1)
    logits = torch.randn(batch, anchors, classes, generator=g) - 4.5  # sigmoid ~0.01: most pass conf 0.001
    own = torch.gather(cls, 1, owner)
    logits.scatter_add_(2, own[..., None], 3 + 2 * torch.rand(batch, anchors, 1, generator=g))
    return boxes, logits.sigmoid()


def timed(fn, runs: int) -> tuple[list[float], object]:
    out, times = None, []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--anchors", type=int, default=8400)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--objects", type=int, default=8)
    ap.add_argument("--conf", type=float, default=0.001)
    ap.add_argument("--iou", type=float, default=0.65)
    ap.add_argument("--max-det", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="batch 2, 500 anchors, one run")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.anchors, args.runs = 2, 500, 1
    torch.set_num_threads(args.threads)
    boxes, scores = dense_outputs(args.batch, args.anchors, args.classes, args.objects, 640)
    settings = dict(conf=args.conf, iou=args.iou, multi_label=True, max_candidates=30000)

    def early():
        return dense_nms(boxes, scores, max_det=args.max_det, **settings)

    def everything():  # max_det = the candidate cap: one NMS pass over every candidate, then keep the best
        return [tuple(t[:args.max_det] for t in d) for d in dense_nms(boxes, scores, max_det=30000, **settings)]

    rows = {}
    for _ in range(args.runs):  # interleaved
        for name, fn in (("best candidates first", early), ("NMS over every candidate", everything)):
            t, out = timed(fn, 1)
            rows.setdefault(name, ([], out))[0].extend(t)
    a, b = rows["best candidates first"][1], rows["NMS over every candidate"][1]
    same = all(torch.equal(x, y) for da, db in zip(a, b) for x, y in zip(da, db))
    n_cand = int((scores > args.conf).sum(dim=(1, 2)).clamp(max=30000).sum())
    base = statistics.median(rows["NMS over every candidate"][0])
    print("| path | median s | min s | vs every candidate |\n|---|---:|---:|---:|")
    for name, (t, _) in rows.items():
        print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f} | {statistics.median(t) / base:.2f} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nbatch {args.batch}, {args.anchors} anchors, {args.classes} classes, conf {args.conf}, multi-label: "
          f"{n_cand:,} candidates; IoU {args.iou}, max_det {args.max_det}; same detections: {same}; "
          f"{'torchvision' if HAS_TORCHVISION else 'pure-PyTorch'} NMS, {args.threads} threads, median of {args.runs} "
          f"interleaved runs; {platform.machine()}, {os.cpu_count()} cores, load {load:.1f}, torch {torch.__version__}")
    if not same:
        sys.exit("the two paths disagree")


if __name__ == "__main__":
    main()
