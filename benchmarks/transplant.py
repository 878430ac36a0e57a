"""Transplant vs name matching: does a variant whose backbone rows moved start where its baseline stands?

    nice -n 10 .venv/bin/python benchmarks/transplant.py            # a few CPU-minutes (one thread)
    .venv/bin/python benchmarks/transplant.py --quick               # 1 + 1 epochs on 32 images: checks the script
    .venv/bin/python benchmarks/transplant.py --out transplant.md   # also writes the table

1. Train the baseline, ``rtdetr-demo.yaml``, on the demo's synthetic set (``rtdet demo``'s shapes, smaller
   images) for ``--base-epochs`` with the demo's short-run settings.
2. Fine-tune a variant, rtdetr-demo with a row inserted on P4 (row 7: every later row index moves by one,
   as when a user adds a module to a backbone), for ``--epochs`` epochs, three ways with the same settings
   and seed. ``--insert shsa`` (default) adds SHSA attention, whose residual branch starts at zero (the
   transplanted variant then computes the baseline's function exactly); ``--insert conv`` adds a randomly
   initialised 3x3 Conv, which the rest of the network has never seen (the harder case):
   - from scratch;
   - name matching: every tensor whose name and shape agree (``rtdet.io.transfer_weights``, what
     ``pretrained=`` did before the transplant);
   - transplant: ``pretrained=<baseline best.pt>`` (:mod:`rtdet.io.transplant`).
3. Report the validation mAP of each, side by side, with the share of parameters each start took from the
   baseline. The experiment can fail: if the transplant is not clearly ahead, the table says so.
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

from rtdet.data.synthetic import make_synthetic_dataset  # noqa: E402
from rtdet.demo import DEMO_DATA, family_demo_settings  # noqa: E402
from rtdet.engine.trainer import Trainer  # noqa: E402
from rtdet.io.load import load_model, transfer_weights  # noqa: E402
from rtdet.nn.builder import MODELS_DIR  # noqa: E402
from rtdet.nn.model import DetectionModel, count_parameters  # noqa: E402
from rtdet.utils.torch_utils import set_seed  # noqa: E402

P4_ROW = 6  # rtdetr-demo's last P4 row: the variant adds a row after it
INSERTS = {"shsa": [-1, 1, "SHSA", []], "conv": [-1, 1, "Conv", [128, 3, 1]]}


def variant_yaml(out: Path, insert: str = "shsa") -> Path:
    """rtdetr-demo.yaml with the ``insert`` row after row 6, every absolute ``from`` >= 7 moved by one."""
    import yaml

    d = yaml.safe_load((MODELS_DIR / "rtdetr" / "rtdetr-demo.yaml").read_text())

    def shift(f):
        if isinstance(f, list):
            return [shift(x) for x in f]
        return f + 1 if f > P4_ROW else f

    d["head"] = [[shift(f), n, m, a] for f, n, m, a in d["head"]]
    d["backbone"].insert(P4_ROW + 1, INSERTS[insert])
    path = out / f"rtdetr-demo-{insert}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def share(model: DetectionModel, source: dict[str, torch.Tensor]) -> float:
    """Fraction of the model's parameters equal to a baseline tensor of the same name (name matching)."""
    own = dict(model.named_parameters())
    same = sum(p.numel() for k, p in own.items() if k in source and torch.equal(p.detach(), source[k]))
    return same / count_parameters(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128, help="synthetic train images (val: a quarter)")
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--base-epochs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs of the variant")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: least contention on a shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--insert", choices=sorted(INSERTS), default="shsa", help="the row the variant adds on P4")
    ap.add_argument("--quick", action="store_true", help="32 images, 1 + 1 epochs at 128 px: checks the script")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.images, args.imgsz, args.base_epochs, args.epochs = 32, 128, 1, 1
    torch.set_num_threads(args.threads)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_synthetic_dataset(tmp / "data", **{**DEMO_DATA, "n_train": args.images,
                                                       "n_val": max(args.images // 4, 8), "imgsz": args.imgsz})
        settings = {**family_demo_settings("rtdetr"), "data": str(data), "imgsz": args.imgsz, "batch": args.batch,
                    "workers": 0, "device": "cpu", "verbose": False, "plots": False, "seed": args.seed,
                    "project": str(tmp / "runs")}
        base = Trainer({**settings, "model": "rtdetr-demo.yaml", "epochs": args.base_epochs, "name": "base"})
        base_metrics = base.train()
        best = base.best if base.best.is_file() else base.last
        print(f"baseline: mAP50 {base_metrics['mAP50']:.4f} after {args.base_epochs} epochs "
              f"({time.time() - t0:.0f} s)", flush=True)
        variant = variant_yaml(tmp, args.insert)
        source = load_model(best).model.state_dict()
        rows = []
        for start in ("scratch", "name matching", "transplant"):
            set_seed(args.seed)
            model = load_model(variant, nc=DEMO_DATA["n_classes"]).model
            run = {**settings, "epochs": args.epochs, "name": start.replace(" ", "-")}
            if start == "name matching":
                transfer_weights(model, source, source="baseline best.pt")
            if start == "transplant":
                run["pretrained"] = str(best)
            trainer = Trainer(run, model=model)
            trainer.setup()
            initial = share(trainer.model, source) if start != "transplant" else trainer.transplant_report.share
            metrics = trainer.train()
            rows.append((start, initial, metrics["mAP50"], metrics["mAP50-95"]))
            print(f"{start}: {100 * initial:.0f}% from the baseline, mAP50 {metrics['mAP50']:.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        summary = trainer.transplant_report.summary()
    print(table(args, base_metrics, rows, summary, time.time() - t0))
    if args.out is not None:
        args.out.write_text(table(args, base_metrics, rows, summary, time.time() - t0) + "\n")


def table(args, base_metrics: dict, rows: list, summary: str, seconds: float) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"| start of rtdetr-demo-{args.insert} | parameters from the baseline | mAP50 | mAP50-95 |",
             "|---|---:|---:|---:|"]
    lines += [f"| {name} | {100 * s:.0f}% | {m50:.4f} | {m:.4f} |" for name, s, m50, m in rows]
    best_other = max(r[2] for r in rows[:2])
    verdict = ("the transplant is ahead" if rows[2][2] > best_other else
               "the transplant is NOT ahead of the other starts")
    return "\n".join(lines + [
        "",
        f"Baseline rtdetr-demo after {args.base_epochs} epochs: mAP50 {base_metrics['mAP50']:.4f}, mAP50-95 "
        f"{base_metrics['mAP50-95']:.4f}. Each variant start then fine-tuned for {args.epochs} epoch(s), same "
        f"settings and seed ({args.images} synthetic train images, {max(args.images // 4, 8)} val, {args.imgsz} px, "
        f"batch {args.batch}, cfg/demo/rtdetr.yaml). Verdict on mAP50: {verdict}.",
        f"Transplant: {summary}.",
        f"{seconds / 60:.1f} min in all; {args.threads} threads; {platform.machine()}, {os.cpu_count()} CPU cores "
        f"(load average {load:.1f}), torch {torch.__version__}.",
    ])


if __name__ == "__main__":
    main()
