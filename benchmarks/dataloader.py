"""Data-loading throughput: images/s of the family training pipelines at 640 on coco128-train, with 0 and
2 worker processes, side by side in one run. Prints the table recorded in docs/benchmarks.md.

    .venv/bin/python benchmarks/dataloader.py [--data ../shared/data/coco128-train/data.yaml] [--passes 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtdet.data import DetectionDataset, build_dataloader  # noqa: E402
from rtdet.utils.checkpoint import atomic_write_text  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "coco128-train" / "data.yaml"


def measure(data: Path, pipeline: str, workers: int, imgsz: int, batch: int, passes: int, cache_dir: str,
            ram: bool = False) -> dict:
    """images/s over ``passes`` full epochs after one warm-up batch (worker start-up excluded)."""
    ds = DetectionDataset(data, "train", imgsz, pipeline=pipeline, epochs=1000, cache_dir=cache_dir, verbose=False,
                          cache_images=ram)
    loader = build_dataloader(ds, batch_size=batch, workers=workers, seed=0)
    loader.set_epoch(0)
    it = iter(loader)
    next(it)  # warm-up: starts the workers, fills the caches of CachedMosaic / CachedMixUp
    n, boxes, t0 = 0, 0, time.perf_counter()
    for b in it:
        n += len(b["im_file"])
        boxes += len(b["cls"])
    for epoch in range(1, passes):
        loader.set_epoch(epoch)
        for b in loader:
            n += len(b["im_file"])
            boxes += len(b["cls"])
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": dt, "img_s": n / dt, "boxes_per_img": boxes / max(n, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--passes", type=int, default=2, help="epochs over the set per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per cell; the best is kept (shared CPUs)")
    ap.add_argument("--pipelines", nargs="+", default=["ultralytics", "rtmdet", "rtdetr"])
    ap.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) to this file")
    args = ap.parse_args()
    if not args.data.is_file():
        sys.exit(f"dataset {args.data} not found; pass --data")
    torch.set_num_threads(1)
    rows = []
    cols = [(w, False) for w in args.workers] + [(0, True)]  # last: decoded images held in memory
    with tempfile.TemporaryDirectory() as cache_dir:
        for pipeline in args.pipelines:
            for workers, ram in cols:
                runs = [measure(args.data, pipeline, workers, args.imgsz, args.batch, args.passes, cache_dir, ram)
                        for _ in range(args.repeats)]
                r = max(runs, key=lambda x: x["img_s"])
                rows.append((pipeline, (workers, ram), r))
                print(f"{pipeline:12s} workers={workers}{' ram' if ram else ''}: {r['img_s']:7.1f} img/s  "
                      f"({r['images']} images in {r['seconds']:.1f} s, {r['boxes_per_img']:.1f} boxes/img)", flush=True)
    by = {(p, w): r for p, w, r in rows}
    lines = [
        "# Data-loading throughput",
        "",
        f"`benchmarks/dataloader.py`: training pipelines on {args.data.parent.name}, imgsz "
        f"{args.imgsz}, batch {args.batch}, {args.passes} passes over the set after one warm-up batch, best of "
        f"{args.repeats} such measurements per cell, "
        "collate included; JPEG decoded from disk in every cell but the last, which holds the decoded images in "
        "memory (`cache=true`) and so shows the cost of the transforms alone. Images per second (higher is better).",
        "",
        "| pipeline | transforms | " + " | ".join(f"{w} workers" for w in args.workers)
        + " | 0 workers, images in memory | boxes / image |",
        "|---|---|" + "---:|" * (len(args.workers) + 1) + "---:|",
    ]
    for pipeline in args.pipelines:
        ds = DetectionDataset(args.data, "train", args.imgsz, pipeline=pipeline, epochs=1000, cache_dir=False,
                              verbose=False)
        names = " → ".join(ds.schedule.stages[0][1].names)
        cells = " | ".join(f"{by[(pipeline, c)]['img_s']:.1f}" for c in cols)
        lines.append(f"| {pipeline} | {names} | {cells} | {by[(pipeline, cols[0])]['boxes_per_img']:.1f} |")
    load = os.getloadavg()[0]
    lines += [
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, load average "
        f"{load:.1f} at the end of the run, Python {platform.python_version()}, torch {torch.__version__}, "
        f"OpenCV {__import__('cv2').__version__}.",
    ]
    if load > (os.cpu_count() or 1) * 0.75:
        lines.append("The cores were busy with other jobs during the run, so the numbers are noisy (about +-25 %) and "
                     "worker processes could not add throughput (they compete with those jobs for the same cores); "
                     "rerun on an idle machine for the worker scaling.")
    lines.append("")
    print("\n".join(lines))
    if args.out is not None:
        atomic_write_text(args.out, "\n".join(lines))
        print(f"table written to {args.out}")


if __name__ == "__main__":
    main()
