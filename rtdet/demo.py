"""``rtdet demo``: synthetic data -> train a small detector on the CPU -> validate -> predict, in minutes.

    rtdet demo                          # a small RT-DETR (rtdetr-demo.yaml)
    rtdet demo model=yolov9-demo.yaml   # a small YOLOv9 (GELAN) instead
    rtdet demo epochs=30 device=0       # any setting can be changed

Everything goes under ``runs/demo/``: the dataset (``data/``), the training run (``train/``, weights,
results.csv, results.png) and annotated val pictures (``predict/``).

It sits beside the API at the top of the package (it drives a :class:`rtdet.api.Detector`), not in the
engine the API is built on.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rtdet.api import Detector
from rtdet.data.synthetic import make_synthetic_dataset
from rtdet.engine.settings import SettingsError, check_settings, load_yaml
from rtdet.families import get_family
from rtdet.utils.logging import LOGGER
from rtdet.utils.torch_utils import set_seed

__all__ = ["DEMO_DATA", "DEMO_FIXED", "DEMO_SETTINGS", "family_demo_settings", "run_demo"]

# The synthetic set: shapes of 4 classes, 1-5 per image, 12-40% of the side. Easy enough for a 3.7M
# parameter RT-DETR or a 1.6M parameter GELAN to learn in a few CPU minutes, hard enough that they have to
# (overlaps, rotation, noise).
DEMO_DATA = {"n_train": 320, "n_val": 60, "imgsz": 256, "seed": 0, "n_classes": 4, "min_objects": 1,
             "max_objects": 5, "size_range": (0.12, 0.4)}

# Settings of every demo run; what a model family needs on top of its recipe for a short CPU run (learning
# rate, schedule, EMA, pipeline, epochs) is in cfg/demo/<family>.yaml, chosen by the model's head.
DEMO_SETTINGS = {
    "model": "rtdetr-demo.yaml",
    "batch": 8,
    "imgsz": 256,
    "workers": 0,
    "device": "cpu",
    "project": "runs/demo",
    "plots": True,
}


def family_demo_settings(family: str) -> dict:
    """The family record's demo settings ({} for a family without them: its recipe alone)."""
    record = get_family(family)
    return load_yaml(record.demo) if record is not None and record.demo is not None else {}


# Settings the demo decides itself, and what to run instead.
DEMO_FIXED = {
    "data": "the demo trains on the synthetic set it makes; for your data: rtdet train model=rtdetr-demo.yaml data=...",
    "source": "the demo predicts on its own val images; for yours: rtdet predict model=<best.pt> source=...",
    "resume": "the demo always starts afresh; to continue its run: rtdet train resume=<its weights/last.pt>",
}


def run_demo(**overrides) -> dict:
    """Run the demo; returns {"metrics", "seconds", "train_dir", "predict_dir", "data"}."""
    overrides = check_settings(overrides, "demo")  # every key and value, before any work
    fixed = [k for k in DEMO_FIXED if k in overrides]
    if fixed:
        raise SettingsError(f"{fixed[0]}={overrides[fixed[0]]}: not a demo setting ({DEMO_FIXED[fixed[0]]})")
    args = {**DEMO_SETTINGS, **overrides}
    set_seed(int(args.get("seed", 0)))  # the model's initial weights too
    detector = Detector(args.pop("model"), nc=DEMO_DATA["n_classes"])
    args = {**DEMO_SETTINGS, **family_demo_settings(detector.model.head.family), **overrides}
    args.pop("model")
    project = Path(args["project"])
    t0 = time.time()
    LOGGER.info(f"rtdet demo: {torch.get_num_threads()} CPU threads; writing to {project}/")

    data_args = {**DEMO_DATA, "imgsz": int(args["imgsz"])}
    data_yaml = make_synthetic_dataset(project / "data", **data_args)
    t_data = time.time() - t0
    LOGGER.info(f"Synthetic dataset: {data_yaml} ({data_args['n_train']} train / {data_args['n_val']} val images, "
                f"{data_args['n_classes']} classes) in {t_data:.1f} s")

    metrics = detector.train(data=str(data_yaml), **args)
    train_dir = detector.trainer.save_dir
    t_train = time.time() - t0 - t_data

    val_images = sorted((project / "data" / "images" / "val").glob("*.jpg"))[:8]
    predictor_args = {k: args[k] for k in ("imgsz", "device", "project") if k in args}
    results = detector.predict([str(p) for p in val_images], save=True, conf=0.4, **predictor_args)
    predict_dir = detector.predictor.save_dir
    seconds = time.time() - t0

    LOGGER.info("\n" + "=" * 80)
    LOGGER.info(f"rtdet demo finished in {seconds:.0f} s (dataset {t_data:.0f} s, training + validation "
                f"{t_train:.0f} s, prediction {seconds - t_data - t_train:.0f} s)")
    LOGGER.info(f"  val mAP50 {_fmt(metrics.get('mAP50'))}   mAP50-95 {_fmt(metrics.get('mAP50-95'))}")
    LOGGER.info(f"  training run:       {train_dir}  (results.csv, results.png, weights/best.pt)")
    LOGGER.info(f"  annotated pictures: {predict_dir}  ({len(results)} val images, "
                f"{sum(len(r) for r in results)} detections)")
    LOGGER.info(f"  try: rtdet predict model={train_dir}/weights/best.pt source={project}/data/images/val")
    LOGGER.info("=" * 80)
    return {"metrics": metrics, "seconds": seconds, "train_dir": train_dir, "predict_dir": predict_dir,
            "data": data_yaml}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
