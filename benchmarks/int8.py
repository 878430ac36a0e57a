"""int8 in ONNX Runtime against fp32, with mAP and latency, in one interleaved run.

    python benchmarks/int8.py --model runs/train/exp/weights/best.pt --data coco128.yaml --imgsz 320
    python benchmarks/int8.py --model a.pt b.yaml --data data.yaml --calib-images 64 --runs 10 --out int8.md

For every model it exports the static fp32 ONNX file (batch 1) and the int8 copies of each choice below,
then measures, on ``--data``'s val split, mAP50-95 / mAP50 of each through the same validator, and the
latency of one letterboxed val image (median over ``--runs`` rounds; in every round each runtime runs once,
in turn, so that the load of a shared machine hits all of them alike):

* ``fp32 PyTorch``: the fused model (what ``rtdet predict`` runs);
* ``fp32 ORT``: its export in ONNX Runtime (the reference for the ratios);
* ``int8 per-tensor``: every Conv / MatMul / Gemm quantized with one weight scale per tensor;
* ``int8 all``: every Conv / MatMul / Gemm quantized, per channel, without pre-processing (what
  ``int8=true`` did before the measured exclusion);
* ``int8 + pre-processing``: the same after ONNX Runtime's shape inference and graph optimisation;
* ``int8 measured``: pre-processing plus the worst layers, by measured sensitivity, kept in fp32 (what
  ``rtdet export int8=true`` writes now, output error <= 0.05);
* ``int8 measured strict (error <= 0.01)``: the same search with a five times stricter output error.

A model YAML (no checkpoint) is measured with its random initial weights: latency is meaningful, mAP is
not (say so when reporting). Prints one markdown table per model (and writes them to ``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CHOICES = {
    "int8 per-tensor": {"per_channel": False, "preprocess": False, "exclude": False},
    "int8 all": {"preprocess": False, "exclude": False},
    "int8 + pre-processing": {"preprocess": True, "exclude": False},
    "int8 measured": {"preprocess": True, "exclude": True},
    "int8 measured strict (error <= 0.01)": {"preprocess": True, "exclude": True, "max_error": 0.01},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", nargs="+", required=True, help="checkpoints (.pt) or model YAMLs")
    p.add_argument("--data", required=True, help="dataset YAML (its val split is calibrated on and scored)")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--calib-images", type=int, default=64)
    p.add_argument("--runs", type=int, default=10, help="timed rounds (after one warm-up)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime / torch threads (0: their default)")
    p.add_argument("--no-map", action="store_true", help="latency and output error only (e.g. untrained weights, "
                   "whose mAP means nothing)")
    p.add_argument("--choices", default=",".join(CHOICES), help="comma-separated int8 choices to measure")
    p.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    unknown = [c for c in args.choices.split(",") if c.strip() and c.strip() not in CHOICES]
    if unknown:
        p.error(f"--choices {unknown[0]!r}: expected some of {', '.join(CHOICES)}")
    return args


def _runtimes(spec: str, data, args, tmp: Path) -> tuple[dict, str]:
    """{label: callable model} for one model, and a line describing the int8 choices' outcome."""
    from rtdet.deploy.graph import export_onnx
    from rtdet.deploy.int8 import Int8Options, quantize_int8
    from rtdet.deploy.metadata import INPUT_NAME
    from rtdet.deploy.runtime import load_onnx_model
    from rtdet.engine import loaders
    from rtdet.engine.exporter import calibration_batches
    from rtdet.io.load import load_model

    model = load_model(spec, nc=len(data.names), names=dict(enumerate(data.names))).model.eval()
    fp32 = export_onnx(model, tmp / "fp32.onnx", imgsz=args.imgsz, batch=1)
    val_args = _val_args(args)
    calib = calibration_batches(loaders.val_loader(data, val_args, 1), args.calib_images, 1)
    threads = args.threads or None
    runtimes = {"fp32 PyTorch": model.fuse(), "fp32 ORT": load_onnx_model(fp32, threads=threads)}
    notes = []
    for label in [c.strip() for c in args.choices.split(",") if c.strip()]:
        choice = CHOICES[label]
        dst = tmp / f"{label.replace(' ', '_').replace('+', '')}.onnx"
        t0 = time.perf_counter()
        result = quantize_int8(fp32, dst, calib, INPUT_NAME, Int8Options(**choice), threads)
        notes.append(f"{label}: {result} [{time.perf_counter() - t0:.0f} s]")
        runtimes[label] = load_onnx_model(dst, threads=threads)
    return runtimes, "\n".join(f"- {n}" for n in notes)


def _val_args(args) -> dict:
    from rtdet.engine.settings import resolve_settings

    return {**resolve_settings({"imgsz": args.imgsz, "verbose": False, "workers": 0}), "imgsz": args.imgsz}


def measure(runtimes: dict, data, args) -> dict[str, dict]:
    """{label: {map, map50, ms}}: val mAP of each runtime, then interleaved latency on one val image."""
    from rtdet.engine import loaders
    from rtdet.engine.validator import Validator

    val_args = _val_args(args)
    out = {}
    for label, m in runtimes.items():
        metrics = {"mAP50-95": float("nan"), "mAP50": float("nan")} if args.no_map else Validator(
            args=val_args).run(m, loaders.val_loader(data, val_args, 1))
        out[label] = {"map": float(metrics["mAP50-95"]), "map50": float(metrics["mAP50"]), "ms": []}
    x = next(iter(loaders.val_loader(data, val_args, 1)))["img"].float()
    with torch.inference_mode():
        for m in runtimes.values():
            m(x)  # warm-up
        for _ in range(args.runs):
            for label, m in runtimes.items():
                t0 = time.perf_counter()
                m(x)
                out[label]["ms"].append(1000 * (time.perf_counter() - t0))
    return out


def table(name: str, results: dict[str, dict], notes: str, args) -> str:
    ref = results["fp32 ORT"]
    lines = [f"### {name} ({args.imgsz} px, batch 1, {args.calib_images} calibration images)", "",
             "| runtime | mAP50-95 | change (points) | mAP50 | ms (median) | speed vs fp32 ORT |",
             "|---|---|---|---|---|---|"]
    for label, r in results.items():
        ms = statistics.median(r["ms"])
        lines.append(f"| {label} | {r['map']:.4f} | {100 * (r['map'] - ref['map']):+.1f} | {r['map50']:.4f} | "
                     f"{ms:.1f} | {statistics.median(ref['ms']) / ms:.2f}x |")
    return "\n".join([*lines, "", notes, ""])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rtdet.engine import loaders

    if args.threads:
        torch.set_num_threads(args.threads)
    data = loaders.load_data(args.data)
    tables = []
    for spec in args.model:
        with tempfile.TemporaryDirectory(prefix="rtdet-int8-bench-") as tmp:
            runtimes, notes = _runtimes(spec, data, args, Path(tmp))
            tables.append(table(Path(spec).name, measure(runtimes, data, args), notes, args))
            print(tables[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(tables))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    raise SystemExit(main())
