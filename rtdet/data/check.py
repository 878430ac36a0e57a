"""``rtdet data check``: a health report of a dataset YAML, a chart of its labels and a grid of augmented
training samples with their boxes, so problems are seen before a long run starts."""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rtdet.data.dataset import DetectionDataset, open_split, summarize
from rtdet.data.formats import LabelSet, load_data_config
from rtdet.utils.checkpoint import atomic_write_bytes

__all__ = ["draw_boxes", "plot_label_stats", "run_check", "sample_grid"]

log = logging.getLogger("rtdet.data")


def _palette(k: int) -> tuple[int, int, int]:
    """A distinct BGR colour per class id (golden-angle hues)."""
    hsv = np.uint8([[[int(k * 137.508) % 180, 200, 255]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def draw_boxes(img: np.ndarray, boxes: np.ndarray, cls: np.ndarray, names: list[str], scale: float = 1.0,
               thickness: int = 2) -> np.ndarray:
    """Copy of a BGR image (resized by ``scale``) with xyxy pixel boxes and class names drawn."""
    out = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale != 1 else img.copy()
    for b, c in zip(np.asarray(boxes) * scale, np.asarray(cls)):
        col = _palette(int(c))
        p1, p2 = (int(b[0]), int(b[1])), (int(math.ceil(b[2])) - 1, int(math.ceil(b[3])) - 1)
        cv2.rectangle(out, p1, p2, col, thickness, cv2.LINE_AA)
        label = names[int(c)] if 0 <= int(c) < len(names) else str(int(c))
        cv2.putText(out, label, (p1[0] + 2, max(p1[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, col, 1, cv2.LINE_AA)
    return out


def sample_grid(dataset: DetectionDataset, n: int = 16, tile: int = 384, epoch: int = 0, seed: int = 0) -> np.ndarray:
    """A grid (BGR uint8) of ``n`` transformed samples of ``dataset`` at ``epoch`` with their boxes."""
    g = np.random.default_rng(seed)
    idx = g.choice(len(dataset), size=min(n, len(dataset)), replace=len(dataset) < n)
    cols = math.ceil(math.sqrt(len(idx)))
    rows = math.ceil(len(idx) / cols)
    grid = np.full((rows * tile, cols * tile, 3), 255, np.uint8)
    for k, i in enumerate(idx):
        s = dataset[(epoch, int(i))]
        img = s["img"]
        f = tile / max(img.shape[:2])
        drawn = draw_boxes(img, s["bboxes"], s["cls"], dataset.names, scale=f, thickness=1)
        r, c = divmod(k, cols)
        grid[r * tile:r * tile + drawn.shape[0], c * tile:c * tile + drawn.shape[1]] = drawn
    return grid


def plot_label_stats(labels: LabelSet, names: list[str], title: str = "") -> bytes:
    """PNG bytes: instances per class, and the distribution of box width x height (normalised)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(8.0, 0.14 * len(names) + 5), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(2.0, len(names) / 12), 1]})
    counts = np.bincount(labels.cls, minlength=len(names))[: len(names)] if len(labels.cls) else np.zeros(len(names))
    ax1.bar(np.arange(len(names)), counts, color=[np.array(_palette(i)[::-1]) / 255 for i in range(len(names))])
    ax1.set_xticks(np.arange(len(names)))
    ax1.set_xticklabels(names, rotation=90, fontsize=7 if len(names) > 20 else 9)
    ax1.set_ylabel("instances")
    ax1.set_title(f"{title} instances per class ({len(labels.cls)} boxes, {len(labels)} images)")
    if len(labels.boxes):
        w, h = labels.boxes[:, 2], labels.boxes[:, 3]
        hb = ax2.hist2d(w, h, bins=40, range=[[0, 1], [0, 1]], cmap="Blues", cmin=1)
        fig.colorbar(hb[3], ax=ax2, label="boxes")
    ax2.set_xlabel("box width / image width")
    ax2.set_ylabel("box height / image height")
    ax2.set_title("box sizes")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _box_size_stats(labels: LabelSet) -> dict[str, Any]:
    if not len(labels.boxes):
        return {}
    b = labels.boxes
    owner = np.repeat(np.arange(len(labels)), np.diff(labels.offsets))
    hw = labels.shapes[owner]
    side_px = np.sqrt(b[:, 2] * hw[:, 1] * b[:, 3] * hw[:, 0])
    q = [0.05, 0.25, 0.5, 0.75, 0.95]
    return {
        "sqrt_area_px_quantiles": dict(zip([f"p{int(x * 100)}" for x in q], np.quantile(side_px, q).round(1).tolist())),
        "small_lt32": int((side_px < 32).sum()), "medium_32_96": int(((side_px >= 32) & (side_px < 96)).sum()),
        "large_ge96": int((side_px >= 96).sum()),
    }


def _split_issues(split: str, s: dict) -> list[str]:
    """What makes a split unusable as a whole (beyond its per-file problems)."""
    if s["images"] == 0:
        return [f"{split}: no usable image"]
    if s["instances"] == 0:
        return [f"{split}: none of its {s['images']} images has a labelled box (all are background images); "
                f"check the labels/ folder beside images/ (docs/data.md)"]
    return []


def run_check(data: str, out_dir: str, imgsz: int = 640, n_samples: int = 16, recipe_pipeline=None) -> dict:
    """Check a dataset YAML: every split is read and validated (each problem logged once), then

    * ``<out_dir>/report.json``: per split images, instances, instances per class, empty classes,
      background / skipped images, problem counts and the full problem list (file, line, message, action);
      ``issues`` (a split without images, or without any labelled box), ``n_problems`` (problems + issues)
      and ``ok`` (no problem at all);
    * ``<out_dir>/labels_<split>.png``: instances per class and box-size distribution;
    * ``<out_dir>/train_samples.png``: ``n_samples`` training samples after ``recipe_pipeline``
      (a pipeline spec: built-in name, YAML path, dict or list; default ``ultralytics``), boxes drawn.

    Returns the report dict; ``report["files"]`` maps each written file's role to its path.
    """
    cfg = load_data_config(data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"data": str(cfg.file) if cfg.file else "<dict>", "root": str(cfg.root),
                              "nc": cfg.nc, "names": cfg.names, "splits": {}, "files": {}}
    opened: dict[str, LabelSet] = {}
    for split, sources in cfg.splits.items():
        labels = open_split(cfg, split, allow_empty=True)
        opened[split] = labels
        s = summarize(labels, cfg.nc)
        s["sources"] = [str(src.path) for src in sources]
        s["per_class"] = dict(zip(cfg.names, s["per_class"]))
        s["empty_classes"] = [n for n, c in s["per_class"].items() if c == 0]
        s["box_size"] = _box_size_stats(labels)
        s["problem_list"] = [p.to_dict() for p in labels.problems]
        report["splits"][split] = s
        png = out / f"labels_{split}.png"
        atomic_write_bytes(png, plot_label_stats(labels, cfg.names, title=split))
        report["files"][f"labels_{split}"] = str(png)
    if len(opened.get("train", [])):
        ds = DetectionDataset(cfg, "train", imgsz, recipe_pipeline, augment=True, epochs=1, verbose=False)
        ok, buf = cv2.imencode(".png", sample_grid(ds, n_samples))
        if ok:
            path = out / "train_samples.png"
            atomic_write_bytes(path, buf.tobytes())
            report["files"]["train_samples"] = str(path)
        report["pipeline"] = {"name": ds.spec.name, "stages": [[st, c.names] for st, c in ds.schedule.stages]}
    # The verdict counts every problem of every file and every split that cannot train or evaluate
    # anything, so that "OK", the count and the exit status of `rtdet data check` always agree.
    report["issues"] = [issue for k, s in report["splits"].items() for issue in _split_issues(k, s)]
    report["n_problems"] = sum(len(s["problem_list"]) for s in report["splits"].values()) + len(report["issues"])
    report["ok"] = report["n_problems"] == 0
    report["summary"] = (f"{cfg.nc} classes; " + "; ".join(
        f"{k}: {s['images']} images, {s['instances']} boxes, {s['background']} background, {s['skipped']} skipped, "
        f"{len(s['problem_list']) + len(_split_issues(k, s))} problems" for k, s in report["splits"].items()))
    path = out / "report.json"
    report["files"]["report"] = str(path)
    atomic_write_bytes(path, json.dumps(report, indent=1).encode())
    log.info("data check: %s -> %s", report["summary"], out)
    return report
