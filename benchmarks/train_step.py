"""Training-step time: forward + loss + backward + optimizer step (the trainer's own ``train_step``), median
over several steps, on the CPU: rtdetr-l, yolov9t and rtmdet-tiny at 640 batch 2, the two demo models at 256
batch 8.

    .venv/bin/python benchmarks/train_step.py [--threads 2] [--steps 5] [--out table.md]
    .venv/bin/python benchmarks/train_step.py --models rtmdet-tiny.yaml   # some of the cases
    .venv/bin/python benchmarks/train_step.py --quick     # tiny sizes, one step: checks the script runs

Inputs are synthetic shapes images (rtdet.data.synthetic) so the loss sees real boxes; the settings are each
family recipe's (RT-DETR: AdamW, Hungarian matching with denoising, clipping; YOLOv9: SGD, task-aligned
assignment, clipping; RTMDet: AdamW, dynamic soft-label assignment, no clipping; all with EMA). Prints a
markdown table; ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtdet.data.synthetic import make_synthetic_dataset  # noqa: E402
from rtdet.engine.trainer import Trainer  # noqa: E402

CASES = [  # (model, imgsz, batch)
    ("rtdetr-l.yaml", 640, 2),
    ("yolov9t.yaml", 640, 2),
    ("rtmdet-tiny.yaml", 640, 2),
    ("rtdetr-demo.yaml", 256, 8),
    ("yolov9-demo.yaml", 256, 8),
]


def measure(model: str, imgsz: int, batch: int, steps: int, data: Path, project: str) -> dict:
    trainer = Trainer({"model": model, "data": str(data), "imgsz": imgsz, "batch": batch, "epochs": 1, "workers": 0,
                       "device": "cpu", "project": project, "val": False, "verbose": False, "plots": False,
                       "train_pipeline": "plain"})
    trainer.setup()
    batches = iter(trainer.train_loader)
    b = next(batches)
    trainer.train_step(b)  # warm-up: allocator, anchors, first-call overheads
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step(b)
        times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in trainer.model.parameters())
    med = statistics.median(times)
    return {"model": Path(model).stem, "imgsz": imgsz, "batch": batch, "params": params, "median_s": med,
            "min_s": min(times), "img_s": batch / med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="write the table (markdown) to this file")
    ap.add_argument("--models", nargs="+", default=None, help="only these cases (model YAML names)")
    ap.add_argument("--quick", action="store_true", help="64x64, batch 2, one step: checks the script")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [c for c in CASES if args.models is None or c[0] in args.models]
    if args.quick:
        cases = [(m, 64, 2) for m, _, _ in cases]
    if args.quick:
        args.steps = 1
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for model, imgsz, batch in cases:
            data = make_synthetic_dataset(Path(tmp) / f"data{imgsz}", n_train=max(batch, 8), n_val=2, imgsz=imgsz,
                                          n_classes=4, min_objects=3, max_objects=6)
            rows.append(measure(model, imgsz, batch, args.steps, data, str(Path(tmp) / "runs")))
            print(rows[-1], flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "| model | imgsz | batch | parameters | step (median) | step (min) | images/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(f"| {r['model']} | {r['imgsz']} | {r['batch']} | {r['params']:,} | {r['median_s']:.2f} s | "
          f"{r['min_s']:.2f} s | {r['img_s']:.1f} |" for r in rows),
        "",
        f"{args.threads} threads, median of {args.steps} steps after one warm-up step; forward + the family's loss "
        f"+ backward + the recipe's optimizer step (gradient clipping where the recipe clips) + EMA update. "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (load average {load:.1f} when measured), "
        f"Python {platform.python_version()}, torch {torch.__version__}.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
