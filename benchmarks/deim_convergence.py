"""Does DEIM converge faster here? The smallest RT-DETR trained on the overfit protocol (the first 32
coco128-train images, evaluated on the same images, 320 px, batch 8, from scratch) with and without DEIM's
matchability-aware loss and dense one-to-one data schedule, everything else equal.

    .venv/bin/python benchmarks/deim_convergence.py --variant baseline --dir runs/deim-base &
    .venv/bin/python benchmarks/deim_convergence.py --variant deim --dir runs/deim-deim &
    .venv/bin/python benchmarks/deim_convergence.py --table runs/deim-base runs/deim-deim --report 25 50 100

``baseline``: the family's short-run settings (``rtdet/cfg/demo/rtdetr.yaml``, as benchmarks/overfit.py);
``mal``: the same with DEIM's loss alone (``loss=mal``, its gamma 1.5); ``deim``: the same plus
``train_pipeline=deim`` (Mosaic or zoom-out / IoU crop with photometric distortion and batch MixUp from
epoch 4, the D-FINE augmentations from about half the run, none for the last tenth: cfg/pipelines/deim.yaml).
Each run writes ``history.json``
(mAP50 / mAP50-95 per epoch) into its folder as it goes; ``--resume`` continues a stopped run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from overfit import COCO128, subset_yaml  # noqa: E402

from rtdet.demo import family_demo_settings  # noqa: E402
from rtdet.engine.trainer import Trainer  # noqa: E402

VARIANTS = {"baseline": {}, "mal": {"loss": "mal"}, "deim": {"loss": "mal", "train_pipeline": "deim"}}


def train(variant: str, folder: Path, model: str, epochs: int, threads: int, resume: bool) -> None:
    """One run into ``folder``, its per-epoch mAP appended to ``folder/history.json``."""
    torch.set_num_threads(threads)
    folder.mkdir(parents=True, exist_ok=True)
    last = folder / "runs" / "train" / "run" / "weights" / "last.pt"
    if resume:
        trainer = Trainer({"resume": str(last), "device": "cpu", "workers": 0})
    else:
        settings = {**family_demo_settings("rtdetr"), **VARIANTS[variant], "model": model, "imgsz": 320,
                    "batch": 8, "epochs": epochs, "workers": 0, "device": "cpu", "verbose": False,
                    "plots": False, "seed": 0, "data": str(subset_yaml(COCO128, 32, folder)),
                    "project": str(folder / "runs"), "name": "run", "exist_ok": True}
        trainer = Trainer(settings)
    path = folder / "history.json"
    history = json.loads(path.read_text()) if resume and path.is_file() else {"variant": variant, "epochs": {}}
    t0 = time.time() - float(history.get("seconds", 0.0))

    def record(t: Trainer) -> None:
        history["epochs"][str(t.epoch + 1)] = [float(t.metrics.get("mAP50") or 0.0),
                                               float(t.metrics.get("mAP50-95") or 0.0)]
        history["seconds"] = time.time() - t0
        path.write_text(json.dumps(history))
        print(f"{variant} epoch {t.epoch + 1}: mAP50 {history['epochs'][str(t.epoch + 1)][0]:.4f}", flush=True)

    trainer.add_callback("on_fit_epoch_end", record)
    trainer.train()


def table(folders: list[Path], report: list[int]) -> str:
    """mAP50 (mAP50-95) of each run at the ``report`` epochs, one row per run."""
    lines = ["| run | " + " | ".join(f"epoch {e}" for e in report) + " | training time |",
             "|---|" + "---:|" * (len(report) + 1)]
    for folder in folders:
        h = json.loads((folder / "history.json").read_text())
        cells = [f"{h['epochs'][str(e)][0]:.3f} ({h['epochs'][str(e)][1]:.3f})" if str(e) in h["epochs"] else "—"
                 for e in report]
        lines.append(f"| {h['variant']} | " + " | ".join(cells) + f" | {h.get('seconds', 0) / 60:.0f} min |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=sorted(VARIANTS))
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--model", default="rtdetr-demo.yaml", help="the smallest built-in RT-DETR")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--table", type=Path, nargs="+", help="print the table of these run folders")
    ap.add_argument("--report", type=int, nargs="+", default=[25, 50, 100])
    args = ap.parse_args()
    if args.table:
        print(table(args.table, args.report))
        return
    if not args.variant or not args.dir:
        ap.error("give --variant and --dir (or --table)")
    if not (COCO128 / "data.yaml").is_file():
        sys.exit(f"{COCO128} not found")
    train(args.variant, args.dir, args.model, args.epochs, args.threads, args.resume)


if __name__ == "__main__":
    main()
