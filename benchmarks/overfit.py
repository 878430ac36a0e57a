"""Overfit check on real images: models trained from scratch on the first 32 images of coco128-train,
mAP50 / mAP50-95 on those same images after a fixed number of epochs (slow: minutes to hours).

    .venv/bin/python benchmarks/overfit.py [--model rtdetr-demo.yaml] [--epochs 60] [--imgsz 320]
    .venv/bin/python benchmarks/overfit.py --model rtmdet-tiny.yaml yolov9t.yaml --epochs 300 --report 100 300
    .venv/bin/python benchmarks/overfit.py --quick        # 8 images, 2 epochs at 128 px: checks that it runs

A pipeline that cannot drive mAP up on 32 images it sees every epoch is broken somewhere (labels, matching,
loss, letterbox mapping); one that can is at least wired correctly end to end. Each model is one run from
scratch; ``--report`` lists the epochs of that run whose mAP goes into the table (default: the last). The
settings are the family's recipe plus the short-run settings below (a larger, unscaled learning rate, a
cosine schedule, a short warmup, a quick EMA, letterbox + HSV + flip), with the epochs, size and batch given
here. Prints a markdown table; ``--out`` also writes it. A model this checkout does not have is listed as
not run.
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
from rtdet.nn.model import build_model  # noqa: E402

COCO128 = REPO.parent / "shared" / "data" / "coco128-train"

SHORT_RUN = {"train_pipeline": "plain", "backbone_lr_ratio": 1.0, "scheduler": "cosine", "lrf": 0.05,
             "warmup_iters": 50, "clip_grad": 1.0, "ema_tau": 100, "ema_decay": 0.999, "patience": 0, "lr0": 1e-3}
# RTMDet: its recipe's lr is for batch 256 (lr_batch); here the lr is given for this batch, the EMA is the
# quick ramp (the recipe's momentum 0.0002 would lag far behind a 1200-step run), and no clipping, as its recipe
FAMILY_SHORT_RUN = {"rtmdet": {"lr_batch": 0, "lr0": 2e-3, "clip_grad": 0, "ema_schedule": "ramp"}}


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
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--report", type=int, nargs="+", default=None, help="epochs to report (default: the last)")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr0", type=float, default=None, help="default: the short-run value of the family")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="8 images, 2 epochs, 128 px")
    args = ap.parse_args()
    if not (COCO128 / "data.yaml").is_file():
        sys.exit(f"{COCO128} not found")
    if args.quick:
        args.images, args.epochs, args.imgsz, args.report = 8, 2, 128, None
    report = sorted(set(args.report or [args.epochs]))
    torch.set_num_threads(args.threads)
    rows, notes = [], []
    for model in args.model:
        got, note = run(model, args)
        stem = Path(model).stem
        rows += [f"| {stem} | {args.images} | {args.imgsz} | {e} | {' | '.join(got[e])} |" for e in report if e in got]
        notes.append(note)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = "\n".join([
        "| model | images | imgsz | epochs | mAP50 | mAP50-95 | wall time |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Trained from scratch for {args.epochs} epochs and evaluated on the same {args.images} coco128-train images "
        f"(80 classes), batch {args.batch}; {'; '.join(notes)}; cosine to 5%, letterbox + HSV + flip. "
        f"{args.threads} threads; {platform.machine()}, {os.cpu_count()} CPU cores (load average {load:.1f}), "
        f"torch {torch.__version__}.",
    ])
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")


def run(model: str, args) -> tuple[dict[int, tuple[str, str, str]], str]:
    """One run from scratch: {epoch: (mAP50, mAP50-95, wall time so far)} and a note on its settings."""
    name = Path(model).stem
    try:
        resolve_model_path(model)
    except FileNotFoundError:  # e.g. a model of a family this checkout lacks
        print(f"{name}: skipped, {model} is neither a file nor a built-in model", flush=True)
        return {e: ("—", "—", "not run") for e in range(1, args.epochs + 1)}, f"{name} not run"
    family = build_model(model).head.family
    settings = {**SHORT_RUN, **FAMILY_SHORT_RUN.get(family, {}), **({"lr0": args.lr0} if args.lr0 else {})}
    history: dict[int, tuple[str, str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = subset_yaml(COCO128, args.images, Path(tmp))
        t0 = time.time()
        trainer = Trainer({**settings, "model": model, "data": str(data), "imgsz": args.imgsz, "batch": args.batch,
                           "epochs": args.epochs, "workers": 0, "device": "cpu", "project": str(Path(tmp) / "runs"),
                           "verbose": False, "plots": False})

        def record(t: Trainer) -> None:
            m, seconds = t.metrics, time.time() - t0
            history[t.epoch + 1] = (f"{m.get('mAP50', 0):.3f}", f"{m.get('mAP50-95', 0):.3f}",
                                    f"{seconds / 60:.1f} min")
            print(f"{name} {t.epoch + 1}/{args.epochs}: mAP50 {m.get('mAP50', 0):.3f} ({seconds:.0f} s)", flush=True)

        trainer.add_callback("on_fit_epoch_end", record)
        trainer.train()
        a = trainer.args
    return history, f"{name}: {family} recipe, {a['optimizer']} lr {trainer.lr0:g}, weight decay {a['weight_decay']}"


if __name__ == "__main__":
    main()
