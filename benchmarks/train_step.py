"""Training-step time: forward + loss + backward + optimizer step (the trainer's own ``train_step``), median
over several steps, on the CPU: rtdetr-l, yolov9t and rtmdet-tiny at 640 batch 2, the two demo models at 256
batch 8.

    .venv/bin/python benchmarks/train_step.py [--threads 2] [--steps 5] [--out table.md]
    .venv/bin/python benchmarks/train_step.py --models rtmdet-tiny.yaml   # some of the cases
    .venv/bin/python benchmarks/train_step.py --models dfine-s.yaml --imgsz 320   # any model YAML
    .venv/bin/python benchmarks/train_step.py --quick     # tiny sizes, one step: checks the script runs
    .venv/bin/python benchmarks/train_step.py --layouts   # each case in NCHW and NHWC, interleaved, and the ratio

Inputs are synthetic shapes images (rtdet.data.synthetic) so the loss sees real boxes; the settings are each
family recipe's (RT-DETR: AdamW, Hungarian matching with denoising, clipping; YOLOv9: SGD, task-aligned
assignment, clipping; RTMDet: AdamW, dynamic soft-label assignment, no clipping; all with EMA). Prints a
markdown table; ``--out`` also writes it. Training runs in NHWC (``channels_last=true``, the default);
``--layouts`` builds each case twice, NCHW and NHWC, and alternates their steps so that both see the same
machine, then reports the NHWC / NCHW ratio.
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
    ("dfine-demo.yaml", 256, 8),
]


def make_trainer(model: str, imgsz: int, batch: int, data: Path, project: str, channels_last: bool = True) -> Trainer:
    trainer = Trainer({"model": model, "data": str(data), "imgsz": imgsz, "batch": batch, "epochs": 1, "workers": 0,
                       "device": "cpu", "project": project, "val": False, "verbose": False, "plots": False,
                       "train_pipeline": "plain", "channels_last": channels_last})
    trainer.setup()
    return trainer


def measure(trainers: list[Trainer], steps: int) -> list[list[float]]:
    """Seconds per step of each trainer, their steps alternated (one each per round) after one warm-up step
    each (allocator, anchors, first-call overheads)."""
    batches = [next(iter(t.train_loader)) for t in trainers]
    for t, b in zip(trainers, batches):
        t.train_step(b)
    times: list[list[float]] = [[] for _ in trainers]
    for _ in range(steps):
        for t, b, out in zip(trainers, batches, times):
            t0 = time.perf_counter()
            t.train_step(b)
            out.append(time.perf_counter() - t0)
    return times


def row(model: str, imgsz: int, batch: int, trainer: Trainer, times: list[float]) -> dict:
    params = sum(p.numel() for p in trainer.model.parameters())
    med = statistics.median(times)
    return {"model": Path(model).stem, "imgsz": imgsz, "batch": batch, "params": params, "median_s": med,
            "min_s": min(times), "img_s": batch / med}


def layout_table(rows: list[tuple[dict, dict]]) -> list[str]:
    lines = ["| model | imgsz | batch | step NCHW (median) | step NHWC (median) | NHWC / NCHW |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {a['model']} | {a['imgsz']} | {a['batch']} | {a['median_s']:.3f} s | {b['median_s']:.3f} s | "
              f"{b['median_s'] / a['median_s']:.2f} |" for a, b in rows]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="write the table (markdown) to this file")
    ap.add_argument("--models", nargs="+", default=None,
                    help="only these cases (model YAML names); a model that is no case runs at --imgsz, --batch")
    ap.add_argument("--imgsz", type=int, default=640, help="image size of a --models entry that is no case")
    ap.add_argument("--batch", type=int, default=2, help="batch of a --models entry that is no case")
    ap.add_argument("--quick", action="store_true", help="64x64, batch 2, one step: checks the script")
    ap.add_argument("--layouts", action="store_true", help="each case in NCHW and NHWC, steps interleaved")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [c for c in CASES if args.models is None or c[0] in args.models]
    known = {m for m, _, _ in CASES}
    cases += [(m, args.imgsz, args.batch) for m in args.models or [] if m not in known]  # any other model YAML
    if args.quick:
        cases = [(m, 64, 2) for m, _, _ in cases]
        args.steps = 1
    layouts = (False, True) if args.layouts else (True,)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for model, imgsz, batch in cases:
            data = make_synthetic_dataset(Path(tmp) / f"data{imgsz}", n_train=max(batch, 8), n_val=2, imgsz=imgsz,
                                          n_classes=4, min_objects=3, max_objects=6)
            trainers = [make_trainer(model, imgsz, batch, data, str(Path(tmp) / "runs"), cl) for cl in layouts]
            times = measure(trainers, args.steps)
            rows.append([row(model, imgsz, batch, t, ts) for t, ts in zip(trainers, times)])
            print(rows[-1], flush=True)
            del trainers
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = (f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (load average {load:.1f} when measured), "
               f"Python {platform.python_version()}, torch {torch.__version__}.")
    what = ("forward + the family's loss + backward + the recipe's optimizer step (gradient clipping where the "
            "recipe clips) + EMA update")
    if args.layouts:
        lines = [*layout_table([(a, b) for a, b in rows]), "",
                 f"{args.threads} threads, median of {args.steps} steps after one warm-up step, the two layouts' "
                 f"steps alternated; {what}. {machine}"]
    else:
        lines = [
            "| model | imgsz | batch | parameters | step (median) | step (min) | images/s |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *(f"| {r['model']} | {r['imgsz']} | {r['batch']} | {r['params']:,} | {r['median_s']:.2f} s | "
              f"{r['min_s']:.2f} s | {r['img_s']:.1f} |" for (r,) in rows),
            "",
            f"{args.threads} threads, NHWC, median of {args.steps} steps after one warm-up step; {what}. {machine}",
        ]
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
