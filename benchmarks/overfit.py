"""Overfit check on real images: models trained from scratch on the first 32 images of coco128-train,
mAP50 / mAP50-95 on those same images after a fixed number of epochs (slow: minutes to hours).

    .venv/bin/python benchmarks/overfit.py [--model rtdetr-demo.yaml] [--epochs 60] [--imgsz 320]
    .venv/bin/python benchmarks/overfit.py --model rtmdet-tiny.yaml yolov9t.yaml --epochs 100 300
    .venv/bin/python benchmarks/overfit.py --quick        # 8 images, 2 epochs at 128 px: checks that it runs

Every (model, epochs) pair is its own run from scratch (its schedule spans its epochs), with the same
settings for every model: AdamW at --lr0 (not scaled by batch), cosine to 5%, 50 warmup steps, gradient
clipping 1.0, a quick EMA, and the letterbox + HSV + flip pipeline; the loss and assignment are each family's.

A pipeline that cannot drive mAP up on 32 images it sees every epoch is broken somewhere (labels, matching,
loss, letterbox mapping); one that can is at least wired correctly end to end. Prints a markdown table;
``--out`` also writes it.
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
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtdet.engine.trainer import Trainer  # noqa: E402
from rtdet.nn.builder import resolve_model_path  # noqa: E402

COCO128 = REPO.parent / "shared" / "data" / "coco128-train"


def subset_yaml(root: Path, n: int, out_dir: Path) -> Path:
    """A dataset YAML whose train and val are the first ``n`` images of ``root`` (a list file)."""
    cfg = yaml.safe_load((root / "data.yaml").read_text())
    images = sorted((root / "images").glob("*.jpg"))[:n]
    listing = out_dir / "subset.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    data = {"path": str(out_dir), "train": "subset.txt", "val": "subset.txt", "names": cfg["names"]}
    path = out_dir / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["rtdetr-demo.yaml"], help="one or more model YAMLs")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--epochs", type=int, nargs="+", default=[60], help="one run per value")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr0", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="8 images, 2 epochs, 128 px")
    args = ap.parse_args()
    if not (COCO128 / "data.yaml").is_file():
        sys.exit(f"{COCO128} not found")
    if args.quick:
        args.images, args.epochs, args.imgsz = 8, [2], 128
    torch.set_num_threads(args.threads)
    rows = [run(model, epochs, args) for model in args.model for epochs in args.epochs]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = "\n".join([
        "| model | images | imgsz | epochs | mAP50 | mAP50-95 | wall time |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(f"| {r['model']} | {args.images} | {args.imgsz} | {r['epochs']} | {r['mAP50']} | {r['mAP50-95']} | "
          f"{r['time']} |" for r in rows),
        "",
        f"Trained from scratch and evaluated on the same {args.images} coco128-train images (80 classes), batch "
        f"{args.batch}, AdamW lr {args.lr0} cosine, letterbox + HSV + flip. {args.threads} threads; "
        f"{platform.machine()}, {os.cpu_count()} CPU cores (load average {load:.1f}), torch {torch.__version__}.",
    ])
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")


def run(model: str, epochs: int, args) -> dict:
    """One training run from scratch; the table row (a model that cannot be built says why)."""
    name = Path(model).stem
    try:
        resolve_model_path(model)
    except FileNotFoundError:  # e.g. a model of a family this checkout lacks
        print(f"{name}: skipped, {model} is neither a file nor a built-in model", flush=True)
        return {"model": name, "epochs": epochs, "mAP50": "—", "mAP50-95": "—", "time": "not run"}
    with tempfile.TemporaryDirectory() as tmp:
        data = subset_yaml(COCO128, args.images, Path(tmp))
        t0 = time.time()
        trainer = Trainer({"model": model, "data": str(data), "imgsz": args.imgsz, "batch": args.batch,
                           "epochs": epochs, "workers": 0, "device": "cpu", "project": str(Path(tmp) / "runs"),
                           "verbose": False, "plots": False, "train_pipeline": "plain", "lr0": args.lr0,
                           "lr_batch": 0, "backbone_lr_ratio": 1.0, "scheduler": "cosine", "lrf": 0.05,
                           "warmup_iters": 50, "clip_grad": 1.0, "ema_tau": 100, "ema_decay": 0.999, "patience": 0})
        trainer.add_callback("on_fit_epoch_end", lambda t: print(
            f"{name} {t.epoch + 1}/{epochs}: mAP50 {t.metrics.get('mAP50', 0):.3f} ({time.time() - t0:.0f} s)",
            flush=True))
        metrics = trainer.train()
        minutes = (time.time() - t0) / 60
    return {"model": name, "epochs": epochs, "mAP50": f"{metrics['mAP50']:.3f}",
            "mAP50-95": f"{metrics['mAP50-95']:.3f}", "time": f"{minutes:.1f} min"}


if __name__ == "__main__":
    main()
