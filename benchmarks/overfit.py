"""Overfit check on real images: a model trained from scratch on the first 32 images of coco128-train,
mAP50 / mAP50-95 on those same images after a fixed number of epochs (slow: minutes to hours).

    .venv/bin/python benchmarks/overfit.py [--model rtdetr-demo.yaml] [--epochs 60] [--imgsz 320]
    .venv/bin/python benchmarks/overfit.py --model yolov9t.yaml --epochs 300 --report 100 300
    .venv/bin/python benchmarks/overfit.py --quick       # 8 images, 2 epochs at 128: checks the script runs
    .venv/bin/python benchmarks/overfit.py --model yolov9t.yaml --defaults --epochs 100 --dir runs/overfit-v9t
    .venv/bin/python benchmarks/overfit.py --model yolov9t.yaml --defaults --epochs 100 --dir runs/overfit-v9t --resume

A pipeline that cannot drive mAP up on 32 images it sees every epoch is broken somewhere (labels, matching,
loss, letterbox mapping); one that can is at least wired correctly end to end. The settings are the model
family's recipe plus its short-run settings (``rtdet/cfg/demo/<family>.yaml``: learning rate, cosine
schedule, short warmup, quick EMA, letterbox + HSV + flip, one optimizer step per batch), with the epochs,
size and batch given here (``--recipe``: the recipe alone, e.g. YOLOv9's Mosaic / MixUp pipeline and nominal
batch of 64, as ``recipe=official``); ``--defaults``: what ``rtdet train`` does with no settings of its own
(the recipe with ``recipe=auto``'s adaptations, printed with the values it chose). ``--report`` lists the epochs
whose mAP goes into the table (default: the last).
Prints a markdown table; ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import contextlib
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

from rtdet.demo import family_demo_settings  # noqa: E402
from rtdet.engine.trainer import Trainer  # noqa: E402
from rtdet.io.load import build_model  # noqa: E402

COCO128 = REPO.parent / "shared" / "data" / "coco128-train"
# The settings a run's table names (what recipe=auto may choose).
CHOSEN = ("recipe", "lr_batch", "backbone_lr_ratio", "scheduler", "lrf", "beta2", "nbs", "warmup_max_fraction",
          "ema_decay", "ema_tau", "ema_schedule", "clip_grad", "multi_scale")


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


def _history(rows: list[dict]) -> dict[int, tuple[float, float, float]]:
    """{epoch: (mAP50, mAP50-95, seconds of training and validation up to it)} from the run's results rows."""
    out, seconds = {}, 0.0
    for r in rows:
        seconds += float(r.get("time") or 0)
        out[int(float(r["epoch"]))] = (float(r.get("metrics/mAP50") or 0), float(r.get("metrics/mAP50-95") or 0),
                                       seconds)
    return out


def _value(text: str):
    """A --set value: an int or float where it reads as one (YAML reads 2e-3 as a string), else YAML."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rtdetr-demo.yaml")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr0", type=float, default=None, help="default: the family's short-run value")
    ap.add_argument("--report", type=int, nargs="+", default=None, help="epochs to report (default: the last)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="8 images, 2 epochs at 128 px: checks the script")
    ap.add_argument("--recipe", action="store_true",
                    help="the family recipe alone (for YOLOv9: Mosaic, MixUp, nominal batch 64), no short-run settings")
    ap.add_argument("--defaults", action="store_true",
                    help="the defaults of `rtdet train` (recipe=auto), no short-run settings")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--dir", type=Path, default=None,
                    help="keep the data list and the run here (default: a temporary folder), so --resume can continue")
    ap.add_argument("--resume", action="store_true", help="continue the run kept in --dir (its own settings)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="further settings, as on the command line of `rtdet train` (e.g. lr0=2e-3 lr_batch=0)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.epochs, args.imgsz = 8, 2, 128
    report = sorted(set(args.report or [args.epochs]))
    if not (COCO128 / "data.yaml").is_file():
        sys.exit(f"{COCO128} not found")
    torch.set_num_threads(args.threads)
    family = build_model(args.model).head.family
    short_run = {} if args.recipe or args.defaults else family_demo_settings(family)
    if args.recipe:
        short_run["recipe"] = "official"
    settings = {**short_run, "model": args.model, "imgsz": args.imgsz, "batch": args.batch,
                "epochs": args.epochs, "workers": 0, "device": "cpu", "verbose": False, "plots": False}
    if args.lr0 is not None:
        settings["lr0"] = args.lr0
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--set {item}: expected KEY=VALUE")
        settings[key] = _value(value)
    if args.resume and args.dir is None:
        sys.exit("--resume needs --dir (the folder of the run to continue)")
    with contextlib.ExitStack() as stack:
        tmp = args.dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        tmp.mkdir(parents=True, exist_ok=True)
        data = subset_yaml(COCO128, args.images, tmp)
        t0 = time.time()
        run = {"project": str(tmp / "runs"), "name": "overfit", "exist_ok": True}
        trainer = Trainer({"resume": str(tmp / "runs" / "train" / "overfit" / "weights" / "last.pt"),
                           "device": "cpu", "workers": 0} if args.resume else {**settings, "data": str(data), **run})

        def record(t: Trainer) -> None:
            print(f"epoch {t.epoch + 1}: mAP50 {t.metrics.get('mAP50', 0.0):.4f} ({time.time() - t0:.0f} s)",
                  flush=True)

        trainer.add_callback("on_fit_epoch_end", record)
        trainer.train()
        history = _history(trainer.rows)
        optimizer, lr0 = trainer.args["optimizer"], trainer.args["lr0"]
        pipeline, accumulate = trainer.args["train_pipeline"], trainer.accumulate
        chosen = ", ".join(f"{k} {trainer.args[k]}" for k in CHOSEN if k in trainer.args)
        warmup = trainer.schedule.warmup
    source = ("recipe=official" if args.recipe else "defaults, recipe=auto" if args.defaults
              else f"+ cfg/demo/{family}.yaml") + "".join(f", {item}" for item in args.set)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = [f"| {Path(args.model).stem} | {args.images} | {args.imgsz} | {e} | {history[e][0]:.4f} | "
            f"{history[e][1]:.4f} | {history[e][2] / 60:.1f} min |" for e in report if e in history]
    table = "\n".join([
        "| model | images | imgsz | epochs | mAP50 | mAP50-95 | wall time |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Trained from scratch ({family} recipe, {source}, {optimizer} "
        f"lr {lr0}, pipeline {pipeline}, {accumulate} batch(es) per step, {warmup} warmup steps; {chosen}) "
        f"and evaluated "
        f"on the same {args.images} coco128-train images (80 classes), batch {args.batch}, {args.epochs} epochs in "
        f"all. {args.threads} threads; {platform.machine()}, {os.cpu_count()} CPU cores (load average {load:.1f}), "
        f"torch {torch.__version__}.",
    ])
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
